//! The stream itself: bytes unchanged, incremental, headers, trace id, mid-stream failure, client disconnect.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::support::*;

#[tokio::test]
async fn stream_arrives_incrementally_and_byte_for_byte() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "")).await;
    let res = chat(
        &relay,
        &[("x-mock-chunks", "6"), ("x-mock-interval-ms", "150")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert!(h.get("content-encoding").is_none());
    let trace_id = h["x-trace-id"].to_str().unwrap().to_owned();
    assert!(
        trace_id.starts_with("mock-"),
        "the upstream's trace id is passed on: {trace_id}"
    );

    let started = Instant::now();
    let mut first_at = None;
    let mut body = Vec::new();
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        first_at.get_or_insert_with(|| started.elapsed());
        body.extend_from_slice(&chunk.unwrap());
    }
    let total = started.elapsed();
    // 6 chunks 150 ms apart plus the closing events: the first byte must not wait for the rest.
    assert!(
        total - first_at.unwrap() > Duration::from_millis(600),
        "buffered: first {first_at:?}, end {total:?}"
    );

    let record = mock.app.stats.find(&trace_id).unwrap();
    assert_eq!(record.bytes, body.len() as u64);
    assert_eq!(
        record.sha256,
        sha256_hex(&body),
        "client bytes differ from what the vendor sent"
    );
    assert!(
        record.frames > 6,
        "the mock split some events across frames"
    );
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(text.contains("你好"));
}

#[tokio::test]
async fn blog_post_route_uses_x_api_key() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "")).await;
    let res = client()
        .post(relay.url("/api/send-message"))
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-chunks", "3")
        .json(&serde_json::json!({"message": "你好", "context": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let trace_id = res.headers()["x-trace-id"].to_str().unwrap().to_owned();
    let body = res.text().await.unwrap();
    assert!(
        body.ends_with("event: done\ndata: {\"type\":\"done\"}\n\n"),
        "{body}"
    );
    let seen = mock.app.stats.find(&trace_id).unwrap().request_headers;
    assert_eq!(seen.get("x-api-key").map(String::as_str), Some(VENDOR_KEY));
    assert!(
        !seen.contains_key("authorization"),
        "the client's credential reached the vendor: {seen:?}"
    );
}

/// OpenAI's Responses API (`client.responses.create(stream=True)`) is relayed by a route configured for
/// `/v1/responses`: typed events, byte for byte, complete once `event: response.completed` has passed.
#[tokio::test]
async fn the_responses_api_streams_through_a_configured_route() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "")).await;
    let res = client()
        .post(relay.url("/v1/responses"))
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-chunks", "4")
        .json(&serde_json::json!({"model": "mock-1", "input": "你好", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let trace_id = res.headers()["x-trace-id"].to_str().unwrap().to_owned();
    let body = res.bytes().await.unwrap();
    let record = mock.app.stats.find(&trace_id).unwrap();
    assert_eq!(
        record.sha256,
        sha256_hex(&body),
        "client bytes differ from what the vendor sent"
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.starts_with("event: response.created\n"), "{text}");
    assert_eq!(
        text.matches("event: response.output_text.delta\n").count(),
        4
    );
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
    assert!(last.starts_with("event: response.completed\n"), "{last}");
}

#[tokio::test]
async fn non_streaming_completion_passes_through() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "")).await;
    let res = client()
        .post(relay.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&serde_json::json!({"model": "mock-1", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_within_a_second() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "")).await;
    let res = chat(
        &relay,
        &[("x-mock-chunks", "100"), ("x-mock-interval-ms", "100")],
    )
    .send()
    .await
    .unwrap();
    let mut stream = res.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(mock.app.stats.counters().streams_cancelled, 0);
    drop(stream);
    assert!(
        await_counter(&mock, "streams_cancelled", 1, Duration::from_secs(1)).await,
        "upstream still streaming 1 s after the client left: {:?}",
        mock.app.stats.counters()
    );
    assert_eq!(mock.app.stats.counters().streams_completed, 0);
}

#[tokio::test]
async fn client_disconnect_while_waiting_for_the_upstream_head_cancels_it() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "")).await;
    let pending = tokio::spawn(chat(&relay, &[("x-mock-first-byte-ms", "5000")]).send());
    assert!(await_counter(&mock, "requests", 1, Duration::from_secs(2)).await);
    pending.abort();
    assert!(
        await_counter(&mock, "requests_abandoned", 1, Duration::from_secs(1)).await,
        "the vendor kept working on a request whose client left: {:?}",
        mock.app.stats.counters()
    );
    assert_eq!(mock.app.stats.counters().streams_started, 0);
}

#[tokio::test]
async fn any_threading_serves_concurrent_streams_and_drains() {
    let mock = start_mock().await;
    for (workers, pinned) in [(1, true), (3, true), (3, false)] {
        let top = format!("workers = {workers}\npin_connections = {pinned}");
        let mut relay = start_relay(config_with(&mock.addr.to_string(), &top, "")).await;
        let streams = (0..4 * workers).map(|_| {
            let req = chat(
                &relay,
                &[("x-mock-chunks", "5"), ("x-mock-interval-ms", "20")],
            );
            async move { req.send().await.unwrap().text().await.unwrap() }
        });
        for body in futures_util::future::join_all(streams).await {
            assert!(
                body.ends_with("data: [DONE]\n\n"),
                "{workers} workers: {body}"
            );
        }
        tokio::time::timeout(Duration::from_secs(5), relay.shut_down())
            .await
            .expect("every worker drained and returned")
            .unwrap();
    }
}
