//! The official `anthropic` and `google-genai` Python SDKs through nginx and the relay to the mock speaking each
//! vendor's API (the `openai` SDK has its own test, `e2e::openai_sdk`): paced streams arrive paced, with the
//! vendor's usage; silences filled by the relay's keep-alives do not trip the SDKs (Gemini's are blank lines: its
//! SDK reads any other line as JSON); a mid-stream reset raises the SDK's own error naming the failure; a vendor 429
//! is the SDK's rate-limit error; a Gemini safety block is an answer, not an error. The SDKs live in a virtual
//! environment made once under `target/e2e-venv-vendors`; the script is `vendor_sdks.py` beside this file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use testkit::nginx;
use tokio::sync::OnceCell;

use crate::support::*;

/// The SDK versions the test installs (the newest on PyPI when it was written).
const ANTHROPIC: &str = "2.17.0";
const GENAI: &str = "3.6.1";
const REQUIRE: &str = "SSEGATE_REQUIRE_PYTHON";

static PYTHON: OnceCell<Option<PathBuf>> = OnceCell::const_new();

async fn sdk_python() -> Result<Option<PathBuf>> {
    PYTHON
        .get_or_try_init(|| async { tokio::task::spawn_blocking(prepare).await? })
        .await
        .cloned()
}

fn prepare() -> Result<Option<PathBuf>> {
    let check = format!(
        "import sys, anthropic; from google import genai; \
         sys.exit(anthropic.__version__ != '{ANTHROPIC}' or genai.__version__ != '{GENAI}')"
    );
    let packages = [
        format!("anthropic=={ANTHROPIC}"),
        format!("google-genai=={GENAI}"),
    ];
    let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-venv-vendors");
    testkit::python::venv(&venv, &packages, &check, REQUIRE)
}

/// An Anthropic route, and a Gemini route at the `google-genai` SDK's own path for one model; 100 ms keep-alives.
fn config(mock: std::net::SocketAddr) -> String {
    format!(
        r#"[[clients]]
tenant = "e2e"
key_sha256 = "{client}"

[[routes]]
path = "/anthropic/v1/messages"
dialect = "anthropic"
upstream = "http://{mock}/v1/messages"
secret_env = "SSEGATE_E2E_VENDOR_KEY"
forward_headers = ["x-mock-*"]
keepalive_interval_ms = 100

[[routes]]
path = "/gemini-sdk/v1beta/models/gemini-2.0-flash:streamGenerateContent"
dialect = "gemini"
upstream = "http://{mock}/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
secret_env = "SSEGATE_E2E_VENDOR_KEY"
forward_headers = ["x-mock-*"]
keepalive_interval_ms = 100
"#,
        client = sha256_hex(CLIENT_KEY),
    )
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// Paced chunks came paced (not in one burst), as readable text.
fn paced(name: &str, v: &Value, chunks: usize) -> Result<()> {
    let arrivals = numbers(&v["arrivals_ms"]);
    ensure!(arrivals.len() == chunks, "{name}: {v}");
    let spread = arrivals[chunks - 1] - arrivals[0];
    ensure!(
        spread > 200.0,
        "{name}: the chunks came in one burst ({spread:.0} ms): buffered"
    );
    let text = v["text"].as_str().unwrap_or_default();
    ensure!(
        !text.is_empty() && !text.contains('\u{FFFD}'),
        "{name}: {text:?}"
    );
    Ok(())
}

/// An SDK's error for a mid-stream reset: it names the failure, after some of the answer.
fn names_the_reset(raised: &Value) -> Result<()> {
    let message = raised["message"].as_str().unwrap_or_default();
    ensure!(message.contains("upstream_reset"), "{raised}");
    ensure!(
        raised["seen"].as_u64() >= Some(1),
        "nothing before the error: {raised}"
    );
    Ok(())
}

#[tokio::test]
async fn the_anthropic_and_gemini_sdks_stream_and_raise_through_nginx() -> Result<()> {
    let Some(python) = sdk_python().await? else {
        return Ok(());
    };
    let mock = start_mock().await?;
    let env = [("SSEGATE_E2E_VENDOR_KEY", VENDOR_KEY)];
    let relay = testkit::proc::start_relay(&config(mock.addr), &env, "info").await?;
    let front = match nginx::available() {
        Some(bin) => Some(nginx::start(&bin, relay.addr, nginx::Options::default()).await?),
        None => None,
    };
    let base = front.as_ref().map_or_else(|| relay.url(""), |n| n.base());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/vendor_sdks.py");
    let run = tokio::process::Command::new(python)
        .arg(script)
        .env("SSEGATE_BASE", &base)
        .env("SSEGATE_KEY", CLIENT_KEY)
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .env_remove("GOOGLE_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .context("the SDK script ran for more than 90 s")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "the SDK script failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))?;
    ensure!(
        v["anthropic_version"] == ANTHROPIC && v["genai_version"] == GENAI,
        "{v}"
    );

    // Anthropic: paced text, the vendor's usage, a clean end; the same across keep-alive comments.
    paced("claude", &v["claude"], 8)?;
    let claude = &v["claude"];
    ensure!(
        claude["usage"] == serde_json::json!({"input": 9, "output": 8}),
        "{claude}"
    );
    ensure!(claude["stop_reason"] == "end_turn", "{claude}");
    ensure!(
        v["claude_slow"]["arrivals_ms"].as_array().map(Vec::len) == Some(3),
        "{}",
        v["claude_slow"]
    );
    // A reset: the SDK raises on the relay's error event, Anthropic's `api_error` naming the failure.
    let reset = &v["claude_reset"];
    ensure!(
        reset["raised"] == "APIStatusError" && reset["type"] == "api_error",
        "{reset}"
    );
    names_the_reset(reset)?;
    let limited = &v["claude_429"];
    ensure!(
        limited["raised"] == "RateLimitError" && limited["status"] == 429,
        "{limited}"
    );

    // Gemini: paced text, the running usage's last value, finishReason STOP; blank-line keep-alives are harmless.
    paced("gemini", &v["gemini"], 8)?;
    let gemini = &v["gemini"];
    ensure!(
        gemini["usage"] == serde_json::json!({"prompt": 9, "candidates": 8}),
        "{gemini}"
    );
    ensure!(gemini["finish"] == "STOP", "{gemini}");
    let slow = &v["gemini_slow"];
    ensure!(
        slow["arrivals_ms"].as_array().map(Vec::len) == Some(3) && slow["finish"] == "STOP",
        "{slow}"
    );
    ensure!(
        v["gemini_blocked"]["block"] == "SAFETY",
        "a safety block is an answer: {}",
        v["gemini_blocked"]
    );
    // A reset: google-genai raises its APIError with Google's code and status, naming the failure.
    let reset = &v["gemini_reset"];
    ensure!(
        reset["raised"] == "ServerError"
            && reset["code"] == 503
            && reset["status"] == "UNAVAILABLE",
        "{reset}"
    );
    names_the_reset(reset)?;
    let limited = &v["gemini_429"];
    ensure!(
        limited["raised"] == "ClientError" && limited["code"] == 429,
        "{limited}"
    );

    // The slow streams really had keep-alives in them (the audit line counts them).
    let logs = relay
        .await_logs(|l| l.matches("stream ended").count() >= 8)
        .await?;
    let pinged = logs
        .lines()
        .filter(|l| l.contains("stream ended"))
        .filter(|l| {
            l.split_whitespace()
                .any(|w| w.starts_with("pings=") && w != "pings=0")
        })
        .count();
    ensure!(pinged >= 2, "no stream carried keep-alives:\n{logs}");
    drop(front);
    Ok(())
}
