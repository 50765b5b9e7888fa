//! The mock binary as the relay's tests use it: scenario headers, faults, and the inspection endpoints.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly at the first broken step"
)]

use std::time::Duration;

use testkit::client::{await_counter, chat_with, stats, stream_record};
use testkit::proc::{Proc, spawn_listening};

const KEY: &str = "mock-test-key";

struct Mock {
    base: String,
    _proc: Proc,
}

async fn start() -> Mock {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mock-upstream"));
    cmd.args(["--listen", "127.0.0.1:0", "--api-key", KEY]);
    let proc = spawn_listening(cmd, "mock", 0).await.unwrap();
    Mock {
        base: proc.url(""),
        _proc: proc,
    }
}

fn chat(mock: &Mock, scenario: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let body = r#"{"stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    chat_with(&mock.base, KEY, body, scenario)
}

async fn counters(mock: &Mock) -> serde_json::Value {
    stats(&mock.base).await.unwrap()
}

#[tokio::test]
async fn complete_stream_is_recorded_byte_for_byte() {
    let mock = start().await;
    let res = chat(
        &mock,
        &[("x-mock-chunks", "4"), ("x-mock-interval-ms", "1")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        res.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let trace_id = res.headers()["x-trace-id"].to_str().unwrap().to_owned();
    let body = res.bytes().await.unwrap();
    let text = std::str::from_utf8(&body).unwrap();
    assert_eq!(text.matches("\"content\":\"ts=").count(), 4);
    assert!(
        text.contains("\"usage\":{\"completion_tokens\":4"),
        "include_usage puts usage in the last chunk"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
    let record = stream_record(&mock.base, &trace_id).await.unwrap();
    assert_eq!(record["sha256"], mock_upstream::sha256_hex(&body).as_str());
    assert_eq!(record["outcome"], "completed");
    assert_eq!(counters(&mock).await["streams_completed"], 1);
}

#[tokio::test]
async fn wrong_key_and_bad_scenarios_are_json_errors() {
    let mock = start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/v1/chat/completions", mock.base);
    let res = client
        .post(&url)
        .bearer_auth("nope")
        .body("{\"messages\":[]}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("x-trace-id").is_some());
    let res = chat(&mock, &[("x-mock-chunks", "many")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let v: serde_json::Value = res.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-mock-chunks")
    );
    let res = chat(&mock, &[("x-mock-status", "503")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
}

#[tokio::test]
async fn faults_end_streams_as_scripted() {
    let mock = start().await;
    let body = chat(
        &mock,
        &[
            ("x-mock-chunks", "3"),
            ("x-mock-no-done", "1"),
            ("x-mock-interval-ms", "1"),
        ],
    )
    .send()
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert_eq!(body.matches("ts=").count(), 3);
    assert!(!body.contains("[DONE]"));

    let reset = chat(
        &mock,
        &[("x-mock-reset-after", "1"), ("x-mock-interval-ms", "1")],
    )
    .send()
    .await
    .unwrap();
    assert!(
        reset.bytes().await.is_err(),
        "a reset stream must not look complete"
    );
    assert_eq!(counters(&mock).await["streams_faulted"], 1);

    let stalled = chat(&mock, &[("x-mock-stall-after", "1")])
        .send()
        .await
        .unwrap();
    let mut stalled = stalled.bytes_stream();
    use futures_util::StreamExt;
    assert!(stalled.next().await.is_some());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stalled.next())
            .await
            .is_err(),
        "stall sent more"
    );
    drop(stalled);
    assert!(
        await_counter(&mock.base, "streams_cancelled", 1, 2000)
            .await
            .unwrap(),
        "dropping a stalled stream counts as a client cancel"
    );
}

#[tokio::test]
async fn send_message_route_uses_x_api_key() {
    let mock = start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/api/send-message", mock.base);
    let res = client
        .post(&url)
        .header("x-api-key", KEY)
        .body(r#"{"message":"你好","context":0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.text()
            .await
            .unwrap()
            .ends_with("event: done\ndata: {\"type\":\"done\"}\n\n")
    );
    let res = client
        .post(&url)
        .bearer_auth(KEY)
        .body(r#"{"message":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client
        .post(&url)
        .header("x-api-key", KEY)
        .body(r#"{"context":0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}
