//! Usage accounting and token limits through a running relay and the mock vendor: `usage = "openai"` asks the
//! vendor for usage on a client's behalf and hides the usage chunk from a client that did not ask (every other byte
//! as the vendor sent it), `/admin/usage` reports what the mock reported (streamed or not) or, for an answer cut
//! before its usage, an estimate, and token limits reserve what a request may use and settle to what it used.

use mock_upstream::dialect::Dialect;
use testkit::client::{CHAT_BODY, CHAT_BODY_WITH_USAGE, chat_with};

use crate::support::*;

/// One stream of the mock with `chunks` chunks reports 9 prompt tokens and `chunks` completion tokens.
const CHUNKS: u64 = 5;
const PER_STREAM: u64 = 9 + CHUNKS;

fn usage_config(mock: &Mock, top: &str) -> relay::config::Config {
    config_with(
        &mock.addr.to_string(),
        &format!("{}{top}", admin_key_line()),
        "usage = \"openai\"",
    )
}

async fn stream(relay: &Relay, body: &'static str) -> (reqwest::header::HeaderMap, String) {
    let chunks = CHUNKS.to_string();
    let res = chat_with(
        &relay.url(""),
        CLIENT_KEY,
        body,
        &[("x-mock-chunks", &chunks)],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    (headers, res.text().await.unwrap())
}

#[tokio::test]
async fn the_relay_asks_for_usage_hides_it_from_clients_that_did_not_and_reports_what_the_vendor_said()
 {
    let mock = start_mock().await;
    let (relay, admin) = start_relay_with_admin(usage_config(&mock, "")).await;
    let tail = |include_usage, id: &str| {
        Dialect::OpenAi { include_usage }.closing_events(id, CHUNKS as u32)
    };

    // A client that did not ask: the vendor was asked (it reported usage), the client got no usage chunk, and
    // with that chunk put back its bytes are exactly the vendor's (the mock's digest of what it sent).
    let (headers, body) = stream(&relay, CHAT_BODY).await;
    let id = headers["x-trace-id"].to_str().unwrap();
    assert_eq!(mock.app.stats.counters().usage_prompt_tokens, 9);
    assert!(!body.contains("\"usage\""), "{body}");
    let (without, with) = (tail(false, id), tail(true, id));
    let head = body
        .strip_suffix(&without)
        .expect("the client's stream ends as the vendor's, minus usage");
    let vendor = mock.app.stats.find(id).unwrap();
    assert_eq!(sha256_hex(format!("{head}{with}")), vendor.sha256);
    assert_eq!(
        (body.len() + with.len() - without.len()) as u64,
        vendor.bytes
    );

    // A client that asked: every byte as the vendor sent it, usage included.
    let (headers, body) = stream(&relay, CHAT_BODY_WITH_USAGE).await;
    let id = headers["x-trace-id"].to_str().unwrap();
    assert!(body.contains("\"usage\":{"), "{body}");
    assert_eq!(sha256_hex(&body), mock.app.stats.find(id).unwrap().sha256);

    // The report: both streams, the tokens the mock reported, per tenant, route and model.
    let report = await_usage(admin, 2).await;
    let counters = mock.app.stats.counters();
    assert_eq!(
        report["total"]["prompt_tokens"],
        counters.usage_prompt_tokens
    );
    assert_eq!(
        report["total"]["completion_tokens"],
        counters.usage_completion_tokens
    );
    assert_eq!(counters.usage_completion_tokens, 2 * CHUNKS);
    let row = &report["rows"][0];
    assert_eq!(
        (
            &row["tenant"],
            &row["route"],
            &row["model"],
            &row["streams"]
        ),
        (
            &"acme".into(),
            &"/v1/chat/completions".into(),
            &"mock-1".into(),
            &2.into()
        )
    );
    assert_eq!(row["streams_without_usage"], 0);
    assert!(row["bytes"].as_u64().unwrap() > 0 && row["events"].as_u64().unwrap() >= 2 * CHUNKS);

    // The report needs the admin key.
    let url = format!("http://{admin}/admin/usage");
    let res = client().get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = client()
        .get(&url)
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client()
        .get(format!("{url}?tenant=nobody"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

/// A chat request that does not stream, its answer capped at 5 tokens.
const JSON_BODY: &str = r#"{"model":"mock-1","stream":false,"max_tokens":5,"messages":[{"role":"user","content":"你好"}]}"#;
/// The same as a stream.
const STREAM_BODY: &str = r#"{"model":"mock-1","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"你好"}]}"#;

fn send(relay: &Relay, body: &'static str) -> reqwest::RequestBuilder {
    let chunks = CHUNKS.to_string();
    chat_with(
        &relay.url(""),
        CLIENT_KEY,
        body,
        &[("x-mock-chunks", &chunks)],
    )
}

/// What the relay reserves for `body`: its estimated prompt and its `max_tokens` (5).
fn reservation(body: &str) -> u64 {
    relay::usage::estimate::request_tokens(body.as_bytes()) + 5
}

#[tokio::test]
async fn answers_that_do_not_stream_are_charged_and_reported_too() {
    let mock = start_mock().await;
    let (relay, admin) = start_relay_with_admin(usage_config(&mock, "")).await;
    let res = send(&relay, JSON_BODY).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let answer: serde_json::Value = res.json().await.unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], CHUNKS);
    // The Responses API without streaming: its usage says input_tokens and output_tokens.
    let res = client()
        .post(relay.url("/v1/responses"))
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-chunks", CHUNKS.to_string())
        .body(r#"{"model":"mock-1","input":"你好"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["object"],
        "response"
    );
    let report = await_usage(admin, 2).await;
    let total = &report["total"];
    let counters = mock.app.stats.counters();
    assert_eq!(counters.usage_prompt_tokens, 18);
    assert_eq!(
        total["prompt_tokens"], counters.usage_prompt_tokens,
        "{report}"
    );
    assert_eq!(total["completion_tokens"], counters.usage_completion_tokens);
    assert_eq!(
        (&total["streams_without_usage"], &total["estimated_tokens"]),
        (&0.into(), &0.into())
    );
}

#[tokio::test]
async fn a_tenant_at_its_token_limit_is_refused_whether_it_streams_or_not() {
    let mock = start_mock().await;
    let top = "[[tenants]]\nname = \"acme\"\ntokens_per_minute = 30\n";
    let (relay, admin) = start_relay_with_admin(usage_config(&mock, top)).await;
    let reserved = reservation(JSON_BODY);
    assert!(
        reserved <= 30 && 30 - 14 < reserved,
        "the test's arithmetic: {reserved}"
    );
    // Admitted with the whole limit free: the reservation is taken at once.
    let res = send(&relay, JSON_BODY).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let left = (30 - reserved).to_string();
    assert_eq!(res.headers()["x-ratelimit-remaining-tokens"], left.as_str());
    res.bytes().await.unwrap();
    await_usage(admin, 1).await;
    // Settled to the 14 tokens the answer used: 16 left, too few for the next reservation, streamed or not.
    for body in [JSON_BODY, STREAM_BODY] {
        let res = send(&relay, body).send().await.unwrap();
        assert_eq!(res.status(), 429, "{body}");
        let h = |name: &str| res.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(h("x-ratelimit-limit-tokens"), "30");
        assert_eq!(h("x-ratelimit-remaining-tokens"), "16");
        // The missing tokens come back at one per 2 s.
        let retry: u64 = h("retry-after").parse().unwrap();
        let missing = reserved - 16;
        assert!((2 * missing - 1..=2 * missing).contains(&retry), "{retry}");
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["error"]["type"], "rate_limited");
    }
    assert_eq!(
        mock.app.stats.counters().requests,
        1,
        "a refusal reached the vendor"
    );
}

#[tokio::test]
async fn requests_sent_together_cannot_overrun_a_token_limit() {
    let mock = start_mock().await;
    let top = "[[tenants]]\nname = \"acme\"\ntokens_per_minute = 100\nreserve_output_tokens = 20\n";
    let (relay, _admin) = start_relay_with_admin(usage_config(&mock, top)).await;
    // Each reserves its prompt and 20 for its answer (it names no max_tokens); they overlap, 300 ms each.
    let reserved = relay::usage::estimate::request_tokens(CHAT_BODY.as_bytes()) + 20;
    let fits = 100 / reserved;
    assert!((2..8).contains(&fits), "the test's arithmetic: {reserved}");
    let slow = [("x-mock-chunks", "3"), ("x-mock-interval-ms", "100")];
    let sends = (0..8).map(|_| chat(&relay, &slow).send());
    let mut admitted = 0;
    for res in futures_util::future::join_all(sends).await {
        let res = res.unwrap();
        match res.status().as_u16() {
            200 => admitted += 1,
            429 => {}
            other => panic!("status {other}"),
        }
        res.bytes().await.unwrap();
    }
    // Admitted while any token was left, all eight would have gone, using 8 × 12 = 96 of 100 with the prompt
    // estimate off; with their answers any longer, far more.
    assert_eq!(admitted, fits);
    assert_eq!(mock.app.stats.counters().requests, fits);
}

#[tokio::test]
async fn an_answer_cut_before_its_usage_is_charged_an_estimate_of_what_was_relayed() {
    let mock = start_mock().await;
    let top = "[[tenants]]\nname = \"acme\"\ntokens_per_day = 1000000\n";
    let (relay, admin) = start_relay_with_admin(usage_config(&mock, top)).await;
    // The vendor resets after two of five chunks: no usage chunk.
    let res = chat(
        &relay,
        &[("x-mock-chunks", "5"), ("x-mock-reset-after", "2")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let got = res.bytes().await.unwrap();
    let mut answer = relay::usage::estimate::AnswerTokens::default();
    answer.feed(&got);
    let report = await_usage(admin, 1).await;
    let total = &report["total"];
    let prompt = relay::usage::estimate::request_tokens(CHAT_BODY.as_bytes());
    assert!(answer.tokens() > 0);
    assert_eq!(total["streams_without_usage"], 1, "{report}");
    assert_eq!(total["prompt_tokens"], prompt);
    assert_eq!(total["completion_tokens"], answer.tokens());
    assert_eq!(total["estimated_tokens"], prompt + answer.tokens());
    // A client that leaves after two chunks is charged the same way: leaving early is not free.
    let mut res = chat(
        &relay,
        &[("x-mock-chunks", "1000"), ("x-mock-interval-ms", "20")],
    )
    .send()
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.windows(2).filter(|w| w == b"\n\n").count() < 3 {
        got.extend_from_slice(&res.chunk().await.unwrap().unwrap());
    }
    drop(res);
    let report = await_usage(admin, 2).await;
    let total = &report["total"];
    assert_eq!(total["streams_without_usage"], 2, "{report}");
    let completion = total["completion_tokens"].as_u64().unwrap() - answer.tokens();
    assert!(completion >= 2, "{report}");
}

#[tokio::test]
async fn a_tenant_reserves_what_it_may_use_and_settles_to_what_it_used() {
    let mock = start_mock().await;
    let top = "[[tenants]]\nname = \"acme\"\ntokens_per_minute = 30\nreserve_output_tokens = 5\n";
    let (relay, admin) = start_relay_with_admin(usage_config(&mock, top)).await;
    let reserved = relay::usage::estimate::request_tokens(CHAT_BODY.as_bytes()) + 5;
    // 30 free: the reservation is taken…
    let (headers, _) = stream(&relay, CHAT_BODY).await;
    assert_eq!(headers["x-ratelimit-limit-tokens"], "30");
    let left = (30 - reserved).to_string();
    assert_eq!(headers["x-ratelimit-remaining-tokens"], left.as_str());
    await_usage(admin, 1).await;
    // …and settled to the 14 the answer used: 16 left, short of a reservation.
    let res = chat(&relay, &[]).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["x-ratelimit-remaining-tokens"], "16");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limited");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("30 tokens per minute")
    );
    assert_eq!(
        mock.app.stats.counters().requests,
        1,
        "no vendor call for the refusal"
    );
    assert_eq!(
        PER_STREAM,
        mock.app.stats.counters().usage_prompt_tokens
            + mock.app.stats.counters().usage_completion_tokens
    );
}

#[tokio::test]
async fn a_daily_quota_refuses_with_its_name_until_the_utc_day_turns() {
    let mock = start_mock().await;
    let (relay, admin) = start_relay_with_admin(usage_config(
        &mock,
        "[tenant_defaults]\ntokens_per_day = 40\nreserve_output_tokens = 5\n",
    ))
    .await;
    // Each reserves 26 and uses 14: 0 + 26 and 14 + 26 fit in 40, 28 + 26 does not.
    assert_eq!(
        relay::usage::estimate::request_tokens(CHAT_BODY.as_bytes()) + 5,
        26
    );
    for i in 0..2 {
        stream(&relay, CHAT_BODY).await;
        await_usage(admin, i + 1).await;
    }
    let res = chat(&relay, &[]).send().await.unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "quota_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("40 tokens per day"),
        "{body}"
    );
    assert_eq!(mock.app.stats.counters().requests, 2);
}
