//! Resumable answers through a running relay and the mock vendor: a client cut mid-answer resumes and assembles the
//! vendor's exact bytes with one vendor call; with nobody back within the window the vendor call is cancelled; an
//! answer over `max_bytes` stays live but cannot be resumed; another tenant's key, a stranger's id and a bad
//! `Last-Event-ID` are refused without a vendor call; the answer is charged once.

use std::time::Duration;

use crate::support::*;

const RESUME: &str = "resume = { window_ms = 10000, max_bytes = 1048576 }";
const RIVAL_KEY: &str = "client-key-RIVAL-12";

/// A second tenant (`rival`), and the admin key.
fn top() -> String {
    format!(
        "{}\n[[clients]]\ntenant = \"rival\"\nkey_sha256 = \"{}\"\n",
        admin_key_line(),
        sha256_hex(RIVAL_KEY)
    )
}

fn resume_config(mock: &Mock, resume: &str) -> relay::Config {
    config_with(&mock.addr.to_string(), &top(), resume)
}

/// A streaming answer's head: its stream id and trace id.
fn ids(res: &reqwest::Response) -> (String, String) {
    let h = |name: &str| res.headers()[name].to_str().unwrap().to_owned();
    (h("x-ssegate-stream-id"), h("x-trace-id"))
}

/// Reads until `events` whole events have come: the bytes up to the end of the last, and its number.
async fn read_events(res: &mut reqwest::Response, sid: &str, events: usize) -> (String, u64) {
    testkit::sse::read_events(res, sid, events).await.unwrap()
}

use testkit::sse::without_ids;

/// An answer of `chunks` chunks `interval` ms apart on `relay`, read until `events` whole events came: the
/// response (still open), its stream id and trace id, what was read and the last event's number.
async fn answer_read_to(
    relay: &Relay,
    (chunks, interval): (&str, &str),
    events: usize,
) -> (reqwest::Response, String, String, String, u64) {
    let scenario = [("x-mock-chunks", chunks), ("x-mock-interval-ms", interval)];
    let mut res = chat(relay, &scenario).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (sid, trace) = ids(&res);
    let (head, seq) = read_events(&mut res, &sid, events).await;
    (res, sid, trace, head, seq)
}

/// `GET /v1/streams/{sid}` (`sid` may carry a query).
fn resume_request(relay: &Relay, sid: &str, key: &str) -> reqwest::RequestBuilder {
    client()
        .get(relay.url(&format!("/v1/streams/{sid}")))
        .bearer_auth(key)
}

#[tokio::test]
async fn a_client_cut_mid_answer_resumes_it_and_gets_the_vendors_exact_bytes_from_one_call() {
    let mock = start_mock().await;
    let (relay, admin) = start_relay_with_admin(resume_config(&mock, RESUME)).await;
    let mut res = chat(
        &relay,
        &[("x-mock-chunks", "30"), ("x-mock-interval-ms", "20")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let (sid, trace) = ids(&res);
    assert_eq!(sid.len(), 32, "{sid}");
    let (head, seq) = read_events(&mut res, &sid, 4).await;
    assert_eq!(seq, 4, "events are numbered from 1: {head}");
    assert!(head.starts_with(&format!("id: {sid}:1\ndata: ")), "{head}");
    drop(res);

    // The vendor goes on while nobody reads: the answer completes with no client at all.
    assert!(await_counter(&mock, "streams_completed", 1, Duration::from_secs(10)).await);
    let res = resume_request(&relay, &sid, CLIENT_KEY)
        .header("last-event-id", format!("{sid}:{seq}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let rest = res.text().await.unwrap();
    assert!(rest.starts_with(&format!("id: {sid}:5\n")), "{rest}");
    let whole = without_ids(&head, &sid) + &without_ids(&rest, &sid);
    let vendor = mock.app.stats.find(&trace).unwrap();
    assert_eq!(sha256_hex(&whole), vendor.sha256, "{whole}");
    let c = mock.app.stats.counters();
    assert_eq!((c.requests, c.streams_cancelled), (1, 0));

    // Charged once, what the vendor reported: one stream.
    let report = await_usage(admin, 1).await;
    assert_eq!(report["total"]["streams"], 1, "{report}");
}

#[tokio::test]
async fn a_resume_follows_a_live_answer_and_after_resumes_from_the_start() {
    let mock = start_mock().await;
    let relay = start_relay(resume_config(&mock, RESUME)).await;
    let (res, sid, trace, _, _) = answer_read_to(&relay, ("20", "50"), 2).await;
    drop(res);
    // `?after=0`: the whole answer again, then live to its end, while the vendor is still sending.
    let res = resume_request(&relay, &format!("{sid}?after=0"), CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        mock.app.stats.counters().streams_completed,
        0,
        "resumed while live"
    );
    let whole = res.text().await.unwrap();
    let vendor = mock.app.stats.find(&trace).unwrap();
    assert_eq!(sha256_hex(without_ids(&whole, &sid)), vendor.sha256);
    assert_eq!(mock.app.stats.counters().requests, 1);
}

#[tokio::test]
async fn nobody_back_within_the_window_cancels_the_vendor_call() {
    let mock = start_mock().await;
    let config = resume_config(&mock, "resume = { window_ms = 300, max_bytes = 1048576 }");
    let relay = start_relay(config).await;
    // 200 chunks 20 ms apart: 4 s, far past the window.
    let (res, sid, _, _, _) = answer_read_to(&relay, ("200", "20"), 1).await;
    drop(res);
    assert!(await_counter(&mock, "streams_cancelled", 1, Duration::from_secs(3)).await);
    assert_eq!(mock.app.stats.counters().streams_completed, 0);
    let res = resume_request(&relay, &sid, CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert!(
        matches!(res.status().as_u16(), 404 | 410),
        "{}",
        res.status()
    );
    assert_eq!(mock.app.stats.counters().requests, 1);
}

#[tokio::test]
async fn an_answer_over_max_bytes_stays_live_but_cannot_be_resumed_and_a_cut_cancels_it() {
    let mock = start_mock().await;
    let config = resume_config(&mock, "resume = { window_ms = 10000, max_bytes = 1024 }");
    let relay = start_relay(config).await;
    let scenario = [
        ("x-mock-chunks", "40"),
        ("x-mock-interval-ms", "20"),
        ("x-mock-chunk-bytes", "200"),
    ];
    // Read whole, it is the vendor's answer.
    let res = chat(&relay, &scenario).send().await.unwrap();
    let (sid, trace) = ids(&res);
    let whole = res.text().await.unwrap();
    let vendor = mock.app.stats.find(&trace).unwrap();
    assert!(vendor.bytes > 4096, "{}", vendor.bytes);
    assert_eq!(sha256_hex(without_ids(&whole, &sid)), vendor.sha256);

    // Cut past max_bytes: cancelled at once, and gone.
    let mut res = chat(&relay, &scenario).send().await.unwrap();
    let (sid, _) = ids(&res);
    read_events(&mut res, &sid, 12).await;
    let gone = resume_request(&relay, &sid, CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 410);
    let body: serde_json::Value = gone.json().await.unwrap();
    assert_eq!(body["error"]["type"], "stream_gone");
    drop(res);
    assert!(await_counter(&mock, "streams_cancelled", 1, Duration::from_secs(3)).await);
    assert_eq!(mock.app.stats.counters().streams_completed, 1);
}

#[tokio::test]
async fn only_the_same_tenant_may_resume_and_bad_ids_are_refused_without_a_vendor_call() {
    let mock = start_mock().await;
    let relay = start_relay(resume_config(&mock, RESUME)).await;
    let (_res, sid, _, _, _) = answer_read_to(&relay, ("20", "50"), 1).await;
    let status = |r: reqwest::Response| r.status().as_u16();
    let rival = resume_request(&relay, &sid, RIVAL_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(status(rival), 404, "another tenant's stream is not found");
    let anon = client()
        .get(relay.url(&format!("/v1/streams/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(status(anon), 401);
    let unknown = resume_request(&relay, &"0".repeat(32), CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(status(unknown), 404);
    for bad in [
        format!("{}:1", "0".repeat(32)),
        format!("{sid}:x"),
        "7".into(),
    ] {
        let r = resume_request(&relay, &sid, CLIENT_KEY)
            .header("last-event-id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(status(r), 400);
    }
    let ahead = resume_request(&relay, &format!("{sid}?after=9999"), CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(status(ahead), 400);
    assert_eq!(mock.app.stats.counters().requests, 1);
}

#[tokio::test]
async fn without_resume_the_answer_has_no_ids_and_no_stream_header() {
    let mock = start_mock().await;
    let relay = start_relay(resume_config(&mock, "")).await;
    let res = chat(&relay, &[("x-mock-chunks", "3")])
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("x-ssegate-stream-id").is_none());
    let body = res.text().await.unwrap();
    assert!(!body.contains("id: "), "{body}");
}

#[tokio::test]
async fn stop_cancels_the_vendor_call_at_once_for_its_tenant_only() {
    let mock = start_mock().await;
    let relay = start_relay(resume_config(&mock, RESUME)).await;
    let (res, sid, _, _, _) = answer_read_to(&relay, ("200", "20"), 1).await;
    let stop = |key: &'static str| {
        client()
            .delete(relay.url(&format!("/v1/streams/{sid}")))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(stop(RIVAL_KEY).await.unwrap().status(), 404);
    assert_eq!(stop(CLIENT_KEY).await.unwrap().status(), 204);
    // Well within the 10 s window: the Stop, not the window, cancelled it.
    assert!(await_counter(&mock, "streams_cancelled", 1, Duration::from_secs(3)).await);
    // A client still reading has its body aborted (never a clean end that could pass for a whole answer).
    assert!(res.text().await.is_err());
    let again = resume_request(&relay, &sid, CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 410);
    assert_eq!(stop(CLIENT_KEY).await.unwrap().status(), 410);
    assert_eq!(mock.app.stats.counters().streams_completed, 0);
}

/// A relay with resumable answers whose copies go to the store at `store` (`url = …` or `cluster_nodes = […]`).
fn shared_config(mock: &Mock, store: &str) -> relay::Config {
    let top = format!("{}\n[store]\n{store}\n", top());
    config_with(&mock.addr.to_string(), &top, RESUME)
}

#[tokio::test]
async fn with_a_store_any_replica_resumes_an_answer_another_one_holds() {
    let Some(bin) = testkit::redis::available() else {
        return;
    };
    let redis = testkit::redis::Redis::start(bin).unwrap();
    let mock = start_mock().await;
    let store = format!("url = {:?}", redis.url());
    let a = start_relay(shared_config(&mock, &store)).await;
    let b = start_relay(shared_config(&mock, &store)).await;
    let (res, sid, trace, head, seq) = answer_read_to(&a, ("30", "40"), 3).await;
    drop(res);
    // Another tenant does not find it on the other replica either.
    let rival = resume_request(&b, &sid, RIVAL_KEY).send().await.unwrap();
    assert_eq!(rival.status(), 404);
    // Resumed on B while A still reads the vendor: replayed from the store, then followed live to the end.
    let res = resume_request(&b, &sid, CLIENT_KEY)
        .header("last-event-id", format!("{sid}:{seq}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        mock.app.stats.counters().streams_completed,
        0,
        "resumed while live"
    );
    let rest = res.text().await.unwrap();
    assert!(
        rest.starts_with(&format!("id: {sid}:{}\n", seq + 1)),
        "{rest}"
    );
    let whole = without_ids(&head, &sid) + &without_ids(&rest, &sid);
    let vendor = mock.app.stats.find(&trace).unwrap();
    assert_eq!(sha256_hex(&whole), vendor.sha256, "{whole}");
    let c = mock.app.stats.counters();
    assert_eq!(
        (c.requests, c.streams_completed, c.streams_cancelled),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn with_a_store_a_follower_on_another_replica_keeps_the_answer_past_the_window_and_stop_works_anywhere()
 {
    let Some(bin) = testkit::redis::available() else {
        return;
    };
    let redis = testkit::redis::Redis::start(bin).unwrap();
    let mock = start_mock().await;
    let store = format!("url = {:?}", redis.url());
    let short = |m: &Mock| {
        let top = format!("{}\n[store]\n{store}\n", top());
        config_with(
            &m.addr.to_string(),
            &top,
            "resume = { window_ms = 300, max_bytes = 1048576 }",
        )
    };
    let a = start_relay(short(&mock)).await;
    let b = start_relay(short(&mock)).await;
    // 60 chunks 25 ms apart: 1.5 s, five windows. The client leaves A at once and follows on B: A must not cancel.
    let (res, sid, trace, _, _) = answer_read_to(&a, ("60", "25"), 1).await;
    drop(res);
    let whole = resume_request(&b, &format!("{sid}?after=0"), CLIENT_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let vendor = mock.app.stats.find(&trace).unwrap();
    assert_eq!(
        sha256_hex(without_ids(&whole, &sid)),
        vendor.sha256,
        "{whole}"
    );
    assert_eq!(mock.app.stats.counters().streams_cancelled, 0);

    // Stop, asked on B, cancels the vendor call A holds.
    let (res, sid, _, _, _) = answer_read_to(&a, ("400", "25"), 1).await;
    let stop = client()
        .delete(b.url(&format!("/v1/streams/{sid}")))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), 204);
    assert!(await_counter(&mock, "streams_cancelled", 1, Duration::from_secs(5)).await);
    assert!(res.text().await.is_err());
}

#[tokio::test]
async fn with_a_redis_cluster_each_answer_lives_on_one_shard_and_resumes_across_replicas() {
    let Some(bin) = testkit::redis::available() else {
        return;
    };
    let cluster = testkit::redis::Cluster::start(bin, 3).unwrap();
    let mock = start_mock().await;
    let store = format!("cluster_nodes = {:?}", cluster.nodes());
    let a = start_relay(shared_config(&mock, &store)).await;
    let b = start_relay(shared_config(&mock, &store)).await;
    for _ in 0..3 {
        let (res, sid, trace, head, seq) = answer_read_to(&a, ("10", "20"), 2).await;
        drop(res);
        let rest = resume_request(&b, &sid, CLIENT_KEY)
            .header("last-event-id", format!("{sid}:{seq}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let whole = without_ids(&head, &sid) + &without_ids(&rest, &sid);
        assert_eq!(
            sha256_hex(&whole),
            mock.app.stats.find(&trace).unwrap().sha256
        );
    }
}
