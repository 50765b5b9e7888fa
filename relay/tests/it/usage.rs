//! Usage accounting and token limits through a running relay and the mock vendor: `usage = "openai"` asks the
//! vendor for usage on a client's behalf and hides the usage chunk from a client that did not ask (every other byte
//! as the vendor sent it), `/admin/usage` reports what the mock reported, and token limits stop a tenant after the
//! tokens its streams used.

use mock_upstream::dialect::Dialect;
use mock_upstream::testkit::client::{CHAT_BODY, CHAT_BODY_WITH_USAGE, chat_with};

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

#[tokio::test]
async fn a_stream_cut_before_its_usage_is_recorded_without_usage() {
    let mock = start_mock().await;
    let (relay, admin) = start_relay_with_admin(usage_config(&mock, "")).await;
    let res = chat(
        &relay,
        &[("x-mock-chunks", "5"), ("x-mock-reset-after", "2")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let _ = res.text().await;
    let report = await_usage(admin, 1).await;
    let total = &report["total"];
    assert_eq!(
        (&total["streams_without_usage"], &total["prompt_tokens"]),
        (&1.into(), &0.into())
    );
    assert!(total["bytes"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_tenant_goes_while_any_token_is_left_then_waits_for_what_it_used() {
    let mock = start_mock().await;
    let (relay, admin) = start_relay_with_admin(usage_config(
        &mock,
        "[[tenants]]\nname = \"acme\"\ntokens_per_minute = 30\n",
    ))
    .await;
    // 30 left, then 16, then 2: each admitted, each charged 14 when it ends (the third leaves the tenant 12 in debt).
    for (i, left) in ["30", "16", "2"].into_iter().enumerate() {
        let (headers, _) = stream(&relay, CHAT_BODY).await;
        assert_eq!(headers["x-ratelimit-limit-tokens"], "30");
        assert_eq!(headers["x-ratelimit-remaining-tokens"], left, "stream {i}");
        await_usage(admin, i as u64 + 1).await;
    }
    let res = chat(&relay, &[]).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["x-ratelimit-remaining-tokens"], "0");
    // 12 tokens owed and one to go: 13 tokens of 2 s.
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((25..=26).contains(&retry), "{retry}");
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
        3,
        "no vendor call for the refusal"
    );
    assert_eq!(
        3 * PER_STREAM,
        mock.app.stats.counters().usage_prompt_tokens
            + mock.app.stats.counters().usage_completion_tokens
    );
}

#[tokio::test]
async fn a_daily_quota_refuses_with_its_name_until_the_utc_day_turns() {
    let mock = start_mock().await;
    let (relay, admin) = start_relay_with_admin(usage_config(
        &mock,
        "[tenant_defaults]\ntokens_per_day = 20\n",
    ))
    .await;
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
            .contains("20 tokens per day"),
        "{body}"
    );
    assert_eq!(mock.app.stats.counters().requests, 2);
}
