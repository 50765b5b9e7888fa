//! Upstream faults after the head: timeouts, truncation, resets, oversized events; keep-alive comments; and
//! failover before the first byte. Through real sockets and the real mock: these check what the client gets and
//! that the vendor is cancelled. When each timer fires, to the instant, is the tap's own tests' job
//! (`relay/src/tap/tests.rs`, in paused time).

use std::time::Duration;

use tokio::time::Instant;
use wiremock::{Mock as Wire, MockServer, ResponseTemplate};

use crate::support::*;

async fn body_of(res: reqwest::Response) -> String {
    // `text()` fails when the relay aborts the body instead of ending it cleanly.
    res.text().await.unwrap()
}

#[tokio::test]
async fn silence_before_the_first_frame_is_an_error_event_and_cancels_the_upstream() {
    let mock = start_mock().await;
    let relay = start_relay(config(
        &mock.addr.to_string(),
        "first_byte_timeout_ms = 400",
    ))
    .await;
    let started = Instant::now();
    let res = chat(&relay, &[("x-mock-first-chunk-ms", "10000")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "the head came in time, so the status is committed"
    );
    let body = body_of(res).await;
    let waited = started.elapsed();
    let err = error_event(&body).unwrap();
    assert_eq!(err["kind"], "upstream_first_byte_timeout", "{body}");
    // The relay's timer ended it, not the vendor's first chunk (due after 10 s).
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(await_counter(&mock, "streams_cancelled", 1, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn stalled_upstream_hits_the_idle_timeout() {
    let mock = start_mock().await;
    let extra = "idle_timeout_ms = 400\nkeepalive_interval_ms = 0";
    let relay = start_relay(config(&mock.addr.to_string(), extra)).await;
    let res = chat(
        &relay,
        &[("x-mock-stall-after", "2"), ("x-mock-split", "0")],
    )
    .send()
    .await
    .unwrap();
    let trace_id = res.headers()["x-trace-id"].to_str().unwrap().to_owned();
    let body = res.bytes().await.unwrap().to_vec();
    let body = String::from_utf8(body).unwrap();
    assert_eq!(body.matches("data: {\"choices\"").count(), 2);
    let err = error_event(&body).unwrap();
    assert_eq!(
        (err["kind"].as_str(), err["trace_id"].as_str()),
        (Some("upstream_idle_timeout"), Some(&*trace_id))
    );
    assert!(!body.contains("[DONE]"));
    assert!(await_counter(&mock, "streams_cancelled", 1, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn a_healthy_stream_outlives_every_timeout_but_the_total_cap() {
    let mock = start_mock().await;
    let extra = "first_byte_timeout_ms = 300\nidle_timeout_ms = 300\nkeepalive_interval_ms = 100";
    let relay = start_relay(config(&mock.addr.to_string(), extra)).await;
    // 2 s of answer, 100 ms apart: far longer than the first-byte and idle timeouts together.
    let res = chat(
        &relay,
        &[("x-mock-chunks", "20"), ("x-mock-interval-ms", "100")],
    )
    .send()
    .await
    .unwrap();
    let body = body_of(res).await;
    assert!(error_event(&body).is_none(), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn the_total_cap_ends_a_stream_with_an_error_event() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "total_timeout_ms = 500")).await;
    let res = chat(
        &relay,
        &[("x-mock-chunks", "50"), ("x-mock-interval-ms", "100")],
    )
    .send()
    .await
    .unwrap();
    let body = body_of(res).await;
    assert_eq!(error_event(&body).unwrap()["kind"], "stream_total_timeout");
    assert!(body.matches("data: {\"choices\"").count() < 10);
}

#[tokio::test]
async fn eof_without_the_terminal_event_is_a_truncation() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "")).await;
    let res = chat(&relay, &[("x-mock-chunks", "3"), ("x-mock-no-done", "1")])
        .send()
        .await
        .unwrap();
    let body = body_of(res).await;
    assert_eq!(body.matches("data: {\"choices\"").count(), 3);
    assert_eq!(error_event(&body).unwrap()["kind"], "upstream_truncated");
    assert!(!body.contains("[DONE]"));
}

#[tokio::test]
async fn upstream_reset_mid_stream_ends_with_one_error_event() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "")).await;
    let scenario = [
        ("x-mock-chunks", "5"),
        ("x-mock-reset-after", "2"),
        ("x-mock-split", "0"),
    ];
    let res = chat(&relay, &scenario).send().await.unwrap();
    let trace_id = res.headers()["x-trace-id"].to_str().unwrap().to_owned();
    let body = body_of(res).await;
    assert_eq!(body.matches("data: {\"choices\"").count(), 2, "{body}");
    let err = error_event(&body).unwrap();
    assert_eq!(
        (err["kind"].as_str(), err["trace_id"].as_str()),
        (Some("upstream_reset"), Some(&*trace_id))
    );
    assert!(
        !body.contains("[DONE]"),
        "the relay must never invent [DONE]"
    );
    assert!(body.ends_with("\n\n"));
}

#[tokio::test]
async fn an_oversized_event_is_a_protocol_error() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "max_event_bytes = 2048")).await;
    let scenario = [
        ("x-mock-chunks", "3"),
        ("x-mock-chunk-bytes", "6000"),
        ("x-mock-split", "0"),
    ];
    let body = body_of(chat(&relay, &scenario).send().await.unwrap()).await;
    assert_eq!(error_event(&body).unwrap()["kind"], "upstream_protocol");
    assert!(
        body.len() < 2048,
        "the oversized event must not be forwarded: {} bytes",
        body.len()
    );
}

#[tokio::test]
async fn keep_alive_comments_fill_silence_but_never_split_an_event() {
    let mock = start_mock().await;
    let extra = "keepalive_interval_ms = 100\nidle_timeout_ms = 5000";
    let relay = start_relay(config(&mock.addr.to_string(), extra)).await;
    // 600 ms of silence between events, and 600 ms of silence in the middle of every odd event.
    let scenario = [
        ("x-mock-chunks", "4"),
        ("x-mock-interval-ms", "600"),
        ("x-mock-split-pause-ms", "600"),
    ];
    let body = body_of(chat(&relay, &scenario).send().await.unwrap()).await;
    let all = events(&body);
    let pings = all.iter().filter(|e| **e == ": keep-alive").count();
    let data: Vec<&&str> = all.iter().filter(|e| **e != ": keep-alive").collect();
    assert!(
        pings >= 8,
        "expected keep-alives in the silences, got {pings}: {body}"
    );
    assert_eq!(
        data.len(),
        4 + 2,
        "4 chunks, the finish chunk and [DONE], each intact: {body}"
    );
    for event in data {
        let json = event.strip_prefix("data: ").unwrap();
        assert!(
            json == "[DONE]" || serde_json::from_str::<serde_json::Value>(json).is_ok(),
            "split event: {event:?}"
        );
    }
}

#[tokio::test]
async fn failover_tries_the_next_endpoint_before_the_first_byte() {
    let mock = start_mock().await;
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let failing = MockServer::start().await;
    Wire::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(503).set_body_string("{\"error\":\"overloaded\"}"))
        .mount(&failing)
        .await;
    let failover = |first: String| {
        let mut c = config(&first, "");
        let extra = config(&failing.address().to_string(), "").routes[0].targets[0].clone();
        let good = config(&mock.addr.to_string(), "").routes[0].targets[0].clone();
        c.routes[0].targets.extend([extra, good]);
        c.routes[0].max_attempts = 3;
        c
    };
    // connect refused → 503 → the mock.
    let relay = start_relay(failover(down.to_string())).await;
    let res = chat(&relay, &[("x-mock-chunks", "2")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(body_of(res).await.ends_with("data: [DONE]\n\n"));
    assert_eq!(failing.received_requests().await.unwrap().len(), 1);

    // With attempts capped at 2, the second endpoint's 503 is passed through.
    let mut capped = failover(down.to_string());
    capped.routes[0].max_attempts = 2;
    let relay = start_relay(capped).await;
    let res = chat(&relay, &[]).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(body_of(res).await, "{\"error\":\"overloaded\"}");
}

#[tokio::test]
async fn no_retry_after_the_first_byte() {
    let mock = start_mock().await;
    let mut c = config(&mock.addr.to_string(), "");
    let again = c.routes[0].targets[0].clone();
    c.routes[0].targets.push(again);
    c.routes[0].max_attempts = 2;
    let relay = start_relay(c).await;
    let res = chat(&relay, &[("x-mock-reset-after", "1")])
        .send()
        .await
        .unwrap();
    let body = body_of(res).await;
    assert_eq!(error_event(&body).unwrap()["kind"], "upstream_reset");
    assert_eq!(
        mock.app.stats.counters().requests,
        1,
        "a stream that started must never be retried"
    );
}
