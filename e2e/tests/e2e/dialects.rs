//! One route per vendor dialect (`openai`, `anthropic`, `azure-openai`, `gemini`) through nginx and the relay
//! binary to the mock speaking each vendor's API: a stream byte for byte, its usage charged as the vendor reported
//! it, a mid-stream reset ending in the dialect's error event, and a vendor 429 passed on in the vendor's shape.
//! Gemini's answers have no terminal line (a `finishReason` ends them) and a safety block is a complete 200.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use testkit::nginx;

use crate::support::*;

const ADMIN_KEY: &str = "admin-CANARY-e2e-dialects-0b7e";

/// The routes: one per dialect, no `auth` or `terminal_event` (the dialect's).
fn config(mock: std::net::SocketAddr) -> String {
    format!(
        r#"admin_key_sha256 = "{admin}"
[[clients]]
tenant = "e2e"
key_sha256 = "{client}"

[[routes]]
path = "/openai/v1/chat/completions"
dialect = "openai"
upstream = "http://{mock}/v1/chat/completions"
secret_env = "SSEGATE_E2E_VENDOR_KEY"
usage = "openai"
forward_headers = ["x-mock-*"]

[[routes]]
path = "/azure/chat/completions"
dialect = "azure-openai"
upstream = "http://{mock}/openai/deployments/{{model}}/chat/completions?api-version=2024-10-21"
secret_env = "SSEGATE_E2E_VENDOR_KEY"
usage = "openai"
forward_headers = ["x-mock-*"]

[[routes]]
path = "/anthropic/v1/messages"
dialect = "anthropic"
upstream = "http://{mock}/v1/messages"
secret_env = "SSEGATE_E2E_VENDOR_KEY"
forward_headers = ["x-mock-*"]

[[routes]]
path = "/gemini/stream"
dialect = "gemini"
upstream = "http://{mock}/v1beta/models/{{model}}:streamGenerateContent?alt=sse"
secret_env = "SSEGATE_E2E_VENDOR_KEY"
forward_headers = ["x-mock-*"]
"#,
        admin = sha256_hex(ADMIN_KEY),
        client = sha256_hex(CLIENT_KEY),
    )
}

/// A dialect's route, request body, and what its stream and its error event look like.
struct Case {
    name: &'static str,
    path: &'static str,
    body: &'static str,
    /// The mock's path for the request (the model moved into it for Azure and Gemini).
    vendor_path: &'static str,
    /// How a complete answer ends.
    ends_with: &'static str,
    /// The error event's `error` member names the failure this way (a member and its value).
    error_member: (&'static str, &'static str),
    /// The vendor's 429 body carries this.
    rate_limited: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        name: "openai",
        path: "/openai/v1/chat/completions",
        body: r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"你好"}]}"#,
        vendor_path: "/v1/chat/completions",
        ends_with: "data: [DONE]\n\n",
        error_member: ("type", "server_error"),
        rate_limited: "\"code\":\"mock_fault\"",
    },
    Case {
        name: "azure-openai",
        path: "/azure/chat/completions",
        body: r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"你好"}]}"#,
        vendor_path: "/openai/deployments/gpt-4o-mini/chat/completions",
        ends_with: "data: [DONE]\n\n",
        error_member: ("type", "server_error"),
        rate_limited: "\"code\":\"mock_fault\"",
    },
    Case {
        name: "anthropic",
        path: "/anthropic/v1/messages",
        body: r#"{"model":"claude-3-5-haiku-latest","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"你好"}]}"#,
        vendor_path: "/v1/messages",
        ends_with: "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        error_member: ("type", "api_error"),
        rate_limited: "\"type\":\"rate_limit_error\"",
    },
    Case {
        name: "gemini",
        path: "/gemini/stream",
        body: r#"{"model":"gemini-2.0-flash","contents":[{"role":"user","parts":[{"text":"你好"}]}]}"#,
        vendor_path: "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        ends_with: "\"finishReason\":\"STOP\",\"index\":0}],",
        error_member: ("status", "UNAVAILABLE"),
        rate_limited: "\"status\":\"RESOURCE_EXHAUSTED\"",
    },
];

async fn post(
    base: &str,
    case: &Case,
    scenario: &[(&str, &str)],
) -> Result<(u16, String, String, String)> {
    let mut rb = client()
        .post(format!("{base}{}", case.path))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(case.body);
    for (k, v) in scenario {
        rb = rb.header(*k, *v);
    }
    let res = rb.send().await?;
    let status = res.status().as_u16();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, retry) = (header("x-trace-id"), header("retry-after"));
    Ok((status, id, retry, res.text().await?))
}

/// The usage report's row of one route.
async fn usage_row(admin: std::net::SocketAddr, route: &str, streams: u64) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let res = client()
            .get(format!("http://{admin}/admin/usage"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await?;
        let report: Value = res.json().await?;
        let rows = report["rows"].as_array().cloned().unwrap_or_default();
        let row = rows.into_iter().find(|r| r["route"] == route);
        if let Some(row) = row.filter(|r| r["streams"].as_u64() >= Some(streams)) {
            return Ok(row);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no usage for {route}: {report}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_dialect_streams_charges_resets_and_passes_a_429_through_nginx() -> Result<()> {
    let mock = start_mock().await?;
    let env = [("SSEGATE_E2E_VENDOR_KEY", VENDOR_KEY)];
    let relay = testkit::proc::start_relay(&config(mock.addr), &env, "info").await?;
    let admin = relay.admin().context("no admin listener")?;
    let front = match nginx::available() {
        Some(bin) => Some(nginx::start(&bin, relay.addr, nginx::Options::default()).await?),
        None => None,
    };
    let base = front.as_ref().map_or_else(|| relay.url(""), |n| n.base());
    for case in &CASES {
        let name = case.name;
        // A stream: the vendor's bytes exactly, ending as the dialect ends, the model where the vendor wants it.
        let (status, id, _, body) = post(&base, case, &[("x-mock-chunks", "5")]).await?;
        ensure!(
            status == 200 && !body.contains("event: error"),
            "{name}: {status} {body}"
        );
        let record = mock_record(&mock, &id).await?;
        ensure!(
            record["path"] == case.vendor_path,
            "{name}: the vendor was called at {}",
            record["path"]
        );
        ensure!(
            body.trim_end().ends_with(case.ends_with.trim_end()) || body.contains(case.ends_with),
            "{name}: {body}"
        );
        if name == "gemini" {
            let sent = record["request_body"].as_str().unwrap_or_default();
            ensure!(
                !sent.contains("\"model\""),
                "gemini got a model member: {sent}"
            );
        }
        if name != "openai" && name != "azure-openai" {
            // No usage rewrite on these: the vendor's bytes exactly.
            ensure!(
                sha256_hex(&body) == record["sha256"],
                "{name}: the bytes differ from the vendor's"
            );
        }
        // Usage: the vendor's (9 prompt, one completion token per chunk), reported, not estimated.
        let row = usage_row(admin, case.path, 1).await?;
        ensure!(
            row["prompt_tokens"] == 9
                && row["completion_tokens"] == 5
                && row["estimated_tokens"] == 0,
            "{name}: {row}"
        );

        // A reset after 2 chunks: the dialect's error event, and the answer charged what it used.
        let (status, _, _, body) = post(
            &base,
            case,
            &[("x-mock-chunks", "5"), ("x-mock-reset-after", "2")],
        )
        .await?;
        ensure!(status == 200, "{name}: {status}");
        // Gemini's is a `data:` chunk starting with its error object (what google-genai raises on), no event name.
        let marker = if name == "gemini" {
            "\ndata: {\"error\":"
        } else {
            "event: error\ndata: "
        };
        let data = body
            .split_once(marker)
            .map(|(_, rest)| rest.lines().next().unwrap_or_default())
            .with_context(|| format!("{name}: no error event in {body}"))?;
        let data = if name == "gemini" {
            format!("{{\"error\":{data}")
        } else {
            data.to_owned()
        };
        ensure!(
            (name == "gemini") != body.contains("event: error"),
            "{name}: {body}"
        );
        let event: Value = serde_json::from_str(&data)?;
        let (member, value) = case.error_member;
        ensure!(event["error"][member] == value, "{name}: {event}");
        ensure!(event["kind"] == "upstream_reset", "{name}: {event}");
        let row = usage_row(admin, case.path, 2).await?;
        ensure!(
            row["completion_tokens"].as_u64() >= Some(5 + 2),
            "{name}: the cut answer was not charged: {row}"
        );

        // A vendor 429: its status, its Retry-After and its body, in the vendor's own shape.
        let (status, _, retry, body) = post(&base, case, &[("x-mock-status", "429")]).await?;
        ensure!(
            status == 429 && retry == "1" && body.contains(case.rate_limited),
            "{name}: {status} {retry} {body}"
        );
    }

    // Gemini: a safety block is a complete 200 (no error event), before any text and after some.
    let gemini = &CASES[3];
    for after in ["0", "2"] {
        let (status, _, _, body) = post(&base, gemini, &[("x-mock-block-after", after)]).await?;
        ensure!(
            status == 200 && !body.contains("event: error"),
            "block after {after}: {body}"
        );
        ensure!(
            body.contains("Reason\":\"SAFETY\""),
            "block after {after}: {body}"
        );
    }
    // A Gemini stream cut cleanly before its finishReason is a truncation, not a complete answer.
    let (_, _, _, body) = post(
        &base,
        gemini,
        &[("x-mock-chunks", "3"), ("x-mock-no-done", "1")],
    )
    .await?;
    ensure!(body.contains("upstream_truncated"), "{body}");
    // Azure and Gemini need a model to put in the path, one that cannot change it.
    let no_model = Case {
        body: r#"{"contents":[]}"#,
        ..CASES[3]
    };
    let (status, _, _, body) = post(&base, &no_model, &[]).await?;
    ensure!(
        status == 400 && body.contains("bad_model"),
        "{status} {body}"
    );
    let escape = Case {
        body: r#"{"model":"../../v1/x","messages":[]}"#,
        ..CASES[1]
    };
    let (status, _, _, body) = post(&base, &escape, &[]).await?;
    ensure!(
        status == 400 && body.contains("bad_model"),
        "{status} {body}"
    );

    let logs = relay.logs();
    ensure!(
        !logs.contains(VENDOR_KEY),
        "a log line holds the vendor key"
    );
    drop(front);
    Ok(())
}
