//! `relay --demo`: the whole product on one machine with nothing to configure.
//!
//! Starts the mock vendor in-process on a free loopback port, builds the relay's configuration from an embedded
//! TOML (both routes, one demo client key) through the same validation as a real file, and serves a small page at
//! `/` that streams an answer into the browser. The vendor key reaches the config the production way, through an
//! environment source (here an in-memory one), never through the TOML.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};

/// The client key the demo accepts.
pub const DEMO_KEY: &str = "demo-key";
/// The vendor key the demo's mock requires (the client never sees it).
const DEMO_VENDOR_KEY: &str = "sk-demo-vendor-secret";
const VENDOR_KEY_VAR: &str = "SSEGATE_DEMO_VENDOR_KEY";

const PAGE: &str = include_str!("demo/page.html");

/// The embedded configuration for a mock listening on `mock`.
fn demo_toml(mock: std::net::SocketAddr) -> String {
    let digest = crate::auth::key_digest_hex(DEMO_KEY);
    format!(
        r#"
listen = "127.0.0.1:8080"

[audit]
enabled = true
max_text_bytes = 2048

[[clients]]
tenant = "demo"
key_sha256 = "{digest}"

[[routes]]
path = "/v1/chat/completions"
upstream = "http://{mock}/v1/chat/completions"
auth = "bearer"
secret_env = "{VENDOR_KEY_VAR}"
terminal_event = "data: [DONE]"
forward_headers = ["x-mock-*"]

[[routes]]
path = "/api/send-message"
upstream = "http://{mock}/api/send-message"
auth = "x-api-key"
secret_env = "{VENDOR_KEY_VAR}"
terminal_event = "event: done"
forward_headers = ["x-mock-*"]
"#
    )
}

/// Starts the in-process mock vendor (owned by `tracker`, stopped by `shutdown`) and returns the demo config.
pub async fn start(
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Config, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mock = listener.local_addr()?;
    tracker.spawn(async move {
        let stopped = async move { shutdown.cancelled().await };
        if let Err(e) = mock_upstream::serve(listener, DEMO_VENDOR_KEY.to_owned(), stopped).await {
            tracing::error!(error = %e, "demo mock upstream failed");
        }
    });
    let env = vec![(VENDOR_KEY_VAR.to_owned(), DEMO_VENDOR_KEY.to_owned())];
    let mut config = Config::from_toml(&demo_toml(mock), &env)?;
    config.demo_page = true;
    Ok(config)
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the demo mock upstream: {0}")]
    Io(#[from] std::io::Error),
    #[error("embedded demo configuration is invalid: {0}")]
    Config(#[from] ConfigError),
}

/// What to paste into a terminal to watch a stream.
pub fn instructions(addr: std::net::SocketAddr) -> String {
    format!(
        "ssegate demo is up.\n\
         Open http://{addr}/ in a browser, or stream an answer in a terminal:\n\n\
         curl -N http://{addr}/v1/chat/completions \\\n  \
         -H 'authorization: Bearer {DEMO_KEY}' -H 'content-type: application/json' \\\n  \
         -H 'x-mock-chunks: 20' -H 'x-mock-interval-ms: 150' \\\n  \
         -d '{{\"model\":\"mock-1\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"你好\"}}]}}'\n\n\
         The blog post's vendor route: curl -N http://{addr}/api/send-message -H 'authorization: Bearer {DEMO_KEY}' \\\n  \
         -H 'content-type: application/json' -d '{{\"message\":\"你好\",\"context\":0}}'\n\
         Stop with Ctrl-C.\n"
    )
}

/// The demo page, with the demo client key filled in.
pub fn page() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(
        PAGE.replace("__DEMO_KEY__", DEMO_KEY),
    )));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}
