//! The e2e suite's own helpers: the keys, the relay's config for a mock, and clients of the mock's inspection API.
//! Processes, nginx and the SSE reader come from the workspace's test kit ([`testkit`]).

use std::net::SocketAddr;

use anyhow::Result;
pub use mock_upstream::sha256_hex;
use testkit::client;
pub use testkit::client::{chat, client};
pub use testkit::proc::{Proc, binary, spawn_listening};
pub use testkit::sse::{receive, stalled_reader};

pub const VENDOR_KEY: &str = "sk-vendor-CANARY-e2e-91c3";
pub const CLIENT_KEY: &str = "client-CANARY-e2e-key-4d2a";
const VENDOR_KEY_VAR: &str = "SSEGATE_E2E_VENDOR_KEY";

pub async fn start_mock() -> Result<Proc> {
    testkit::proc::start_mock(VENDOR_KEY).await
}

/// The relay binary for a mock at `mock` (speaking HTTPS when `https`: its CA is for `route` to trust), with extra
/// `top` and `route` config lines, `RUST_LOG` set to `log` and more environment variables.
pub async fn start_relay_to(
    mock: SocketAddr,
    https: bool,
    top: &str,
    route: &str,
    log: &str,
    env: &[(&str, &str)],
) -> Result<Proc> {
    let top = format!("{top}\n[audit]\nenabled = true\nmax_text_bytes = 65536");
    let config = mock_upstream::relay_config(&mock_upstream::RelayToml {
        https,
        mock,
        top: &top,
        tenant: "e2e",
        client_key: CLIENT_KEY,
        secret_env: VENDOR_KEY_VAR,
        route,
    });
    let env = [&[(VENDOR_KEY_VAR, VENDOR_KEY)], env].concat();
    testkit::proc::start_relay(&config, &env, log).await
}

/// `relay --demo` on free loopback ports, with the first `lines` lines it prints after `listening on ADDR`.
pub async fn start_demo(lines: usize) -> Result<Proc> {
    let mut cmd = tokio::process::Command::new(binary("relay", "SSEGATE_RELAY_BIN")?);
    cmd.args([
        "--demo",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    spawn_listening(cmd, "demo", lines).await
}

/// Sends `rb` and reads the response to its end; its status.
pub async fn drain(rb: reqwest::RequestBuilder) -> Result<u16> {
    let res = rb.send().await?;
    let status = res.status().as_u16();
    res.bytes().await?;
    Ok(status)
}

/// A streaming chat request that asks for the closing `usage` chunk.
pub fn chat_with_usage(base: &str, scenario: &[(&str, &str)]) -> reqwest::RequestBuilder {
    use testkit::client::{CHAT_BODY_WITH_USAGE, chat_with};
    chat_with(base, CLIENT_KEY, CHAT_BODY_WITH_USAGE, scenario)
}

/// The mock's record of a stream (`GET /streams/{trace_id}`).
pub async fn mock_record(mock: &Proc, trace_id: &str) -> Result<serde_json::Value> {
    client::stream_record(&mock.url(""), trace_id).await
}

/// The mock's counters (`GET /stats`).
pub async fn mock_stats(mock: &Proc) -> Result<serde_json::Value> {
    client::stats(&mock.url("")).await
}

/// Awaits a mock counter via its long-poll endpoint; true when reached within `timeout_ms`.
pub async fn await_counter(
    mock: &Proc,
    counter: &str,
    at_least: u64,
    timeout_ms: u64,
) -> Result<bool> {
    client::await_counter(&mock.url(""), counter, at_least, timeout_ms).await
}

/// A loopback listener that accepts connections and never says anything (a vendor or proxy that hangs): its
/// address, and the task holding the connections open (abort it to close them).
pub async fn silent_listener() -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = silent.local_addr()?;
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    Ok((addr, held))
}

/// One chat request through `relay` that it refuses: the status, the JSON error `type`, and the relay's
/// `request failed` log line (which names the cause).
pub async fn failed_request(relay: &Proc) -> Result<(u16, String, String)> {
    use anyhow::Context;
    let res = chat(&relay.url(""), CLIENT_KEY, &[]).send().await?;
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.context("a JSON error body")?;
    let kind = body["error"]["type"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let logs = relay.await_logs(|l| l.contains("request failed")).await?;
    let line = logs
        .lines()
        .find(|l| l.contains("request failed"))
        .with_context(|| format!("no log line for the failure: {logs}"))?;
    Ok((status, kind, line.to_owned()))
}
