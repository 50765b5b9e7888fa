//! A client of the mock's two faces: a streaming chat request (to the mock itself, the relay or nginx: all speak
//! the vendor's API), and the mock's inspection endpoints (`/stats`, `/stats/wait`, `/streams/{trace_id}`).

use anyhow::Result;

/// The request body every streaming test sends unless it needs another.
pub const CHAT_BODY: &str =
    r#"{"model":"mock-1","stream":true,"messages":[{"role":"user","content":"你好"}]}"#;

/// As [`CHAT_BODY`], asking for the closing `usage` chunk (`stream_options.include_usage`).
pub const CHAT_BODY_WITH_USAGE: &str =
    r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;

/// A client that never uses a proxy from the environment (everything here is on loopback).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_default()
}

/// `POST {base}/v1/chat/completions` with `Authorization: Bearer key`, `body` and the `x-mock-*` scenario headers.
pub fn chat_with(
    base: &str,
    key: &str,
    body: &'static str,
    scenario: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let mut rb = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in scenario {
        rb = rb.header(*k, *v);
    }
    rb
}

/// A streaming chat request with [`CHAT_BODY`].
pub fn chat(base: &str, key: &str, scenario: &[(&str, &str)]) -> reqwest::RequestBuilder {
    chat_with(base, key, CHAT_BODY, scenario)
}

/// The mock's counters (`GET /stats`).
pub async fn stats(mock: &str) -> Result<serde_json::Value> {
    Ok(client()
        .get(format!("{mock}/stats"))
        .send()
        .await?
        .json()
        .await?)
}

/// The mock's record of a stream (`GET /streams/{trace_id}`).
pub async fn stream_record(mock: &str, trace_id: &str) -> Result<serde_json::Value> {
    let url = format!("{mock}/streams/{trace_id}");
    Ok(client()
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Awaits a mock counter through its long-poll endpoint (no polling, no sleep); true when it reached `at_least`
/// within `timeout_ms`.
pub async fn await_counter(
    mock: &str,
    counter: &str,
    at_least: u64,
    timeout_ms: u64,
) -> Result<bool> {
    let url =
        format!("{mock}/stats/wait?counter={counter}&at_least={at_least}&timeout_ms={timeout_ms}");
    Ok(client().get(url).send().await?.status() == 200)
}
