//! `loadtest --host URL [goose options]`: streaming chat users against ssegate, the mock, or nginx in front of
//! either. Scenarios: `OpenAiStream` (`POST /v1/chat/completions`) and `BlogStream` (`POST /api/send-message`).
//!
//! Settings goose has no flag for come from the environment: `LOADTEST_KEY` (bearer key; the relay's client key, or
//! the vendor key when the target is the mock itself), `LOADTEST_CHUNKS` and `LOADTEST_INTERVAL_MS` (the mock's
//! scenario), `LOADTEST_SUMMARY` (where to write the JSON summary; stdout when unset).
//!
//! The summary holds what goose does not: the per-chunk one-way delay histogram (p50/p90/p99/p99.9/max), TTFB
//! quantiles, streams, chunks, bytes and failures (non-2xx, transport errors, missing terminal event, error events).

mod sse;
mod summary;

use std::io::Write;

use goose::prelude::*;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// One streaming request; `route` names the goose rows; `terminal` is the dialect's last line.
async fn stream(
    user: &mut GooseUser,
    path: &str,
    route: &str,
    body: &'static str,
    terminal: &[u8],
) -> TransactionResult {
    let builder = user
        .get_request_builder(&GooseMethod::Post, path)?
        .bearer_auth(env_or("LOADTEST_KEY", "mock-vendor-key"))
        .header("content-type", "application/json")
        .header("x-mock-chunks", env_or("LOADTEST_CHUNKS", "20"))
        .header("x-mock-interval-ms", env_or("LOADTEST_INTERVAL_MS", "50"))
        .body(body);
    let request = GooseRequest::builder()
        .set_request_builder(builder)
        .name(route)
        .build();
    let started = tokio::time::Instant::now();
    let goose = user.request(request).await?;
    let response = match goose.response {
        Ok(r) if r.status().is_success() => r,
        Ok(_) => {
            summary::add_failure(true);
            return Ok(());
        }
        Err(_) => {
            summary::add_failure(false);
            return Ok(());
        }
    };
    match sse::read_stream(response, started, terminal).await {
        Ok(stats) => sse::record(user, route, &stats).await,
        Err(_) => {
            summary::add_failure(false);
            Ok(())
        }
    }
}

async fn openai_stream(user: &mut GooseUser) -> TransactionResult {
    let body = r#"{"model":"mock-1","stream":true,"messages":[{"role":"user","content":"你好"}]}"#;
    stream(
        user,
        "/v1/chat/completions",
        "openai",
        body,
        b"data: [DONE]",
    )
    .await
}

async fn blog_stream(user: &mut GooseUser) -> TransactionResult {
    let body = r#"{"message":"你好","context":0}"#;
    stream(user, "/api/send-message", "blog", body, b"event: done").await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    GooseAttack::initialize()?
        .register_scenario(
            scenario!("OpenAiStream").register_transaction(transaction!(openai_stream)),
        )
        .register_scenario(scenario!("BlogStream").register_transaction(transaction!(blog_stream)))
        .set_default(GooseDefault::NoGzip, true)?
        .set_default(GooseDefault::Timeout, "3600")?
        .execute()
        .await?;
    let json = serde_json::to_string_pretty(&summary::summary())?;
    match std::env::var("LOADTEST_SUMMARY") {
        Ok(path) => std::fs::write(path, json)?,
        Err(_) => writeln!(std::io::stderr(), "{json}")?,
    }
    Ok(())
}
