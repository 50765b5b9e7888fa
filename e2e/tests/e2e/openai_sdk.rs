//! The official `openai` Python SDK through the relay, directly and through nginx: sync and async streams (with
//! `include_usage`), a wrong key as `AuthenticationError`, `stream.close()` cancelling the vendor, and the Responses
//! API. The SDK lives in a virtual environment made once under `target/e2e-venv` (`pip install openai==…`); the
//! script is `openai_sdk.py` beside this file. With `SSEGATE_REQUIRE_PYTHON=1` (`.ci/run`) a missing Python or
//! package fails the test; otherwise the test says why it skips.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::OnceCell;

use crate::stack::{Front, Options, stack};
use crate::support::*;

/// The SDK version the test installs (the newest on PyPI when it was written).
const OPENAI: &str = "3.57.0";
/// A plain SSE client, to see the error event as any reader of the stream does (and the `httpx` it reads with).
const HTTPX_SSE: &str = "0.4.3";
const HTTPX: &str = "0.29.0";
const REQUIRE: &str = "SSEGATE_REQUIRE_PYTHON";

static PYTHON: OnceCell<Option<PathBuf>> = OnceCell::const_new();

/// The virtual environment's interpreter, with the SDK installed; `None` to skip.
async fn sdk_python() -> Result<Option<PathBuf>> {
    PYTHON
        .get_or_try_init(|| async { tokio::task::spawn_blocking(prepare).await? })
        .await
        .cloned()
}

fn prepare() -> Result<Option<PathBuf>> {
    let check = format!(
        "import sys, openai, httpx, httpx_sse; from importlib.metadata import version; \
         sys.exit(openai.__version__ != '{OPENAI}' or version('httpx-sse') != '{HTTPX_SSE}')"
    );
    let packages = [
        format!("openai=={OPENAI}"),
        format!("httpx-sse=={HTTPX_SSE}"),
        format!("httpx=={HTTPX}"),
    ];
    let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-venv");
    testkit::python::venv(&venv, &packages, &check, REQUIRE)
}

fn numbers(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default()
}

async fn the_openai_sdk_streams_through(front: Front) -> Result<()> {
    let Some(python) = sdk_python().await? else {
        return Ok(());
    };
    let Some(s) = stack(front, Options::default()).await? else {
        return Ok(());
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/openai_sdk.py");
    let run = tokio::process::Command::new(python)
        .arg(script)
        .env("SSEGATE_BASE", format!("{}/v1", s.base()))
        .env("SSEGATE_KEY", CLIENT_KEY)
        .env("SSEGATE_MOCK", s.mock.url(""))
        // Loopback only: no proxy from the environment.
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .context("the SDK script ran for more than 60 s")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the SDK script failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))?;
    assert_eq!(v["version"], OPENAI);

    // Sync, with include_usage: eight chunks spread over time (60 ms apart at the vendor), then the usage.
    let arrivals = numbers(&v["sync"]["arrivals_ms"]);
    assert_eq!(arrivals.len(), 8, "{v}");
    let spread = arrivals[7] - arrivals[0];
    assert!(
        spread > 200.0,
        "the chunks came in one burst ({spread:.0} ms apart): buffered"
    );
    let text = v["sync"]["text"].as_str().unwrap_or_default();
    assert!(!text.is_empty() && !text.contains('\u{FFFD}'), "{text:?}");
    assert_eq!(v["sync"]["usage"]["completion_tokens"], 8);
    assert_eq!(v["sync"]["usage"]["prompt_tokens"], 9);

    assert_eq!(v["async"]["chunks"], 8);
    assert_eq!(v["async"]["text"], text);

    assert_eq!(v["wrong_key"]["error"], "AuthenticationError", "{v}");
    assert_eq!(v["wrong_key"]["status"], 401);

    assert_eq!(v["close"]["read"], 3);
    assert_eq!(
        v["close"]["cancelled"], true,
        "stream.close() did not cancel the vendor"
    );

    let types: Vec<&str> = v["responses"]["types"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(types.first(), Some(&"response.created"), "{types:?}");
    assert_eq!(types.last(), Some(&"response.completed"), "{types:?}");
    let deltas = types
        .iter()
        .filter(|t| **t == "response.output_text.delta")
        .count();
    assert_eq!(deltas, 8);
    assert_eq!(v["responses"]["text"], text);

    // The vendor resets mid-answer: the SDK raises APIError naming the failure, for chat and Responses streams
    // alike (before the error object it yielded an empty chunk, or ended as if the answer were complete).
    for case in ["chat_reset", "responses_reset"] {
        let r = &v[case];
        assert_eq!(r["raised"], "APIError", "{case}: {r}");
        assert_eq!(r["code"], "upstream_reset", "{case}: {r}");
        assert_eq!(r["type"], "server_error", "{case}: {r}");
        let message = r["message"].as_str().unwrap_or_default();
        assert!(message.contains("upstream_reset"), "{case}: {message}");
        assert!(
            r["seen"].as_u64() >= Some(1),
            "{case}: nothing before the error: {r}"
        );
    }
    // A plain SSE reader sees exactly one error event, with the relay's fields, and no [DONE].
    let raw = &v["raw_sse_reset"];
    assert_eq!(raw["done"], false, "{raw}");
    let errors = raw["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 1, "{raw}");
    assert_eq!(errors[0]["kind"], "upstream_reset");
    assert_eq!(errors[0]["error"]["code"], "upstream_reset");
    assert!(
        errors[0]["trace_id"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    Ok(())
}

#[tokio::test]
async fn the_openai_sdk_streams_through_the_relay() -> Result<()> {
    the_openai_sdk_streams_through(Front::Relay).await
}

#[tokio::test]
async fn the_openai_sdk_streams_through_nginx() -> Result<()> {
    the_openai_sdk_streams_through(Front::Nginx).await
}
