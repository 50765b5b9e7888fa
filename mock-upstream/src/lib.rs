//! mock-upstream: a scripted LLM vendor for developing and testing ssegate without paying anyone.
//!
//! It speaks two vendor APIs ([`dialect`]): OpenAI's `POST /v1/chat/completions` (key in `Authorization: Bearer`)
//! and the blog post's `POST /api/send-message` (key in `x-api-key`). Each request picks its scenario with `x-mock-*`
//! headers ([`scenario`]); [`stream`] plays it, stamping every content chunk with its wall-clock emission time
//! (`ts=<unix nanos>;`) and splitting some characters across frames. [`stats`] shows what happened.
//!
//! Modules: [`scenario`] (headers → script) · [`dialect`] (wire formats, the `ts=` stamp written and read) ·
//! [`stream`] (script → frames) · [`stats`] (counters and per-stream records) · [`routes`] (HTTP handlers) ·
//! [`tls`] (HTTPS: a private CA made at start, and the broken certificates tests need).
//! [`relay_config`] writes a relay configuration for a mock, the one template the demo, the tests and the load
//! test share. The test kit that drives real processes (the mock, the relay, nginx, Prometheus, redis-server) is its
//! own crate, `testkit`, a dev-dependency of the crates that test.

pub mod dialect;
pub mod routes;
pub mod scenario;
pub mod stats;
pub mod stream;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;

/// Vendor key the mock accepts when none is configured.
pub const DEFAULT_API_KEY: &str = "mock-vendor-key";

/// Usage text shared by `--help` and the README: the scenario headers.
pub const SCENARIO_HELP: &str = "\
Scenario request headers (all optional):
  x-mock-chunks: N          content chunks to send (default 10)
  x-mock-interval-ms: MS    gap between chunks (default 50)
  x-mock-first-byte-ms: MS  delay before the response head (default 0)
  x-mock-first-chunk-ms: MS delay between the response head and the first chunk (default 0)
  x-mock-chunk-bytes: N     text bytes per chunk after the ts= prefix (default 24)
  x-mock-split: 0|1         split odd chunks inside a multi-byte character across two frames (default 1)
  x-mock-split-pause-ms: MS pause between the two halves of a split chunk (default 0: just a flush)
  x-mock-status: CODE       answer CODE (300-599) with a JSON error body (429 adds retry-after: 1)
  x-mock-reset-after: K     abort the connection after K chunks
  x-mock-stall-after: K     send nothing after K chunks, keep the connection open
  x-mock-no-done: 1         end the body cleanly without the terminal event
  x-mock-block-after: K     the vendor's safety system ends the answer after K chunks (Gemini: finishReason
                            SAFETY, or promptFeedback.blockReason for K=0; OpenAI: content_filter), as a 200
Vendor APIs (the key in each vendor's own header):
  POST /v1/chat/completions, /v1/responses     OpenAI (authorization: Bearer)
  POST /openai/deployments/{d}/chat/completions?api-version=V   Azure OpenAI (api-key)
  POST /v1/messages                            Anthropic (x-api-key)
  POST /v1beta/models/{model}:streamGenerateContent?alt=sse, :generateContent   Gemini (x-goog-api-key)
  POST /api/send-message                       the blog post's vendor (x-api-key)
Inspection:
  GET /stats                                  counters (requests, requests_abandoned, streams_started/completed/cancelled/faulted)
  GET /stats/wait?counter=C&at_least=N&timeout_ms=MS   answers once counter C >= N (200) or on timeout (408)
  GET /streams/{trace_id}                     request headers seen, bytes, frames and SHA-256 of the body sent";

/// The mock's routes over a fresh state.
pub fn app(api_key: String) -> (Router, Arc<routes::App>) {
    let state = Arc::new(routes::App::new(api_key));
    let router = Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/api/send-message", post(routes::send_message))
        .route("/v1/responses", post(routes::responses))
        .route("/v1/messages", post(routes::messages))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(routes::azure_chat_completions),
        )
        .route("/v1beta/models/{model_action}", post(routes::gemini))
        .route("/stats", get(routes::stats))
        .route("/stats/wait", get(routes::wait_stats))
        .route("/streams/{trace_id}", get(routes::stream_record))
        .with_state(state.clone());
    (router, state)
}

/// Serves the mock on `listener` until `shutdown` resolves. Open streams are not awaited: this is a test double.
pub async fn serve(
    listener: TcpListener,
    api_key: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, _) = app(api_key);
    tokio::select! {
        r = axum::serve(listener, router) => r,
        () = shutdown => Ok(()),
    }
}

/// As [`serve`], over TLS with `config` ([`tls::server_config`]).
pub async fn serve_tls(
    listener: TcpListener,
    api_key: String,
    config: rustls::ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, _) = app(api_key);
    tls::serve(listener, router, config, shutdown).await
}

/// Lower-case hex SHA-256 of `bytes`: how the mock reports what it sent, and how a relay config names a client key.
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A relay configuration for a mock vendor: see [`relay_config`].
#[derive(Clone, Copy, Debug)]
pub struct RelayToml<'a> {
    /// Where the mock listens.
    pub mock: SocketAddr,
    /// The mock speaks HTTPS (`--tls`): the routes' upstreams are `https://` (trusting its CA is a route line).
    pub https: bool,
    /// Top-level lines: keys first, then tables such as `[audit]`.
    pub top: &'a str,
    /// The one client's tenant and key (the config holds the key's SHA-256).
    pub tenant: &'a str,
    pub client_key: &'a str,
    /// The environment variable the relay reads the vendor key from.
    pub secret_env: &'a str,
    /// Lines added to both routes (timeouts, failover, ...).
    pub route: &'a str,
}

/// The relay's TOML for a mock at `t.mock`: one client, and one route per dialect with the dialect's auth style
/// and terminal line, forwarding the `x-mock-*` scenario headers.
pub fn relay_config(t: &RelayToml<'_>) -> String {
    let route = |path: &str, auth: &str, terminal: &str| {
        format!(
            "[[routes]]\npath = \"{path}\"\nupstream = \"{scheme}://{mock}{path}\"\nauth = \"{auth}\"\n\
             secret_env = \"{env}\"\nterminal_event = \"{terminal}\"\nforward_headers = [\"x-mock-*\"]\n{extra}\n\n",
            scheme = if t.https { "https" } else { "http" },
            mock = t.mock,
            env = t.secret_env,
            extra = t.route,
        )
    };
    format!(
        "{top}\n\n[[clients]]\ntenant = \"{tenant}\"\nkey_sha256 = \"{digest}\"\n\n{chat}{blog}{responses}",
        top = t.top,
        tenant = t.tenant,
        digest = sha256_hex(t.client_key),
        chat = route("/v1/chat/completions", "bearer", "data: [DONE]"),
        blog = route("/api/send-message", "x-api-key", "event: done"),
        responses = route("/v1/responses", "bearer", "event: response.completed"),
    )
}
