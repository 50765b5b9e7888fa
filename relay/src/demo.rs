//! `relay --demo`: the whole product on one machine with nothing to configure.
//!
//! [`start`] runs the mock vendor in-process on a free loopback port and builds the relay's configuration from an
//! embedded TOML (both routes, one demo client key) through the same validation as a real file; [`DemoPage`] wraps
//! the request path and serves a small page at `/` that streams an answer into the browser. The request path knows
//! nothing of either. The vendor key reaches the config the production way, through an environment source (here an
//! in-memory one), never through the TOML.
//!
//! The mock vendor is test infrastructure with fault injection: it is linked only with the cargo feature `demo`
//! (README, quick start). Without it, [`start`] says so and the binary carries no mock and no axum.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::server::{ConnState, Handler};

/// The client key the demo accepts.
pub const DEMO_KEY: &str = "demo-key";

const PAGE: &str = include_str!("demo/page.html");

/// Where the demo's mock vendor listens, once started.
static MOCK: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the demo mock upstream")]
    Io(#[from] std::io::Error),
    #[error("embedded demo configuration is invalid")]
    Config(#[from] ConfigError),
    #[error("this relay was built without the demo: build it with `--features demo`")]
    NotBuilt,
}

/// Starts the in-process mock vendor (owned by `tracker`, stopped by `shutdown`) and returns the demo config.
#[cfg(feature = "demo")]
pub async fn start(
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Config, DemoError> {
    /// The vendor key the demo's mock requires (the client never sees it).
    const VENDOR_KEY: &str = "sk-demo-vendor-secret";
    const VENDOR_KEY_VAR: &str = "SSEGATE_DEMO_VENDOR_KEY";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mock = listener.local_addr()?;
    let _ = MOCK.set(mock);
    tracker.spawn(async move {
        let stopped = async move { shutdown.cancelled().await };
        if let Err(e) = mock_upstream::serve(listener, VENDOR_KEY.to_owned(), stopped).await {
            tracing::error!(error = %e, "demo mock upstream failed");
        }
    });
    let toml = mock_upstream::relay_config(&mock_upstream::RelayToml {
        https: false,
        top: "listen = \"127.0.0.1:8080\"\n[audit]\nmax_text_bytes = 2048",
        tenant: "demo",
        client_key: DEMO_KEY,
        secret_env: VENDOR_KEY_VAR,
        // Resumable answers: the page's "Drop connection" shows a cut answer resumed, with one vendor call.
        route: "resume = { window_ms = 60000, max_bytes = 1048576 }",
        mock,
    });
    let env = vec![(VENDOR_KEY_VAR.to_owned(), VENDOR_KEY.to_owned())];
    Ok(Config::from_toml(&toml, &env)?)
}

/// Without the `demo` feature there is no mock vendor to start.
#[cfg(not(feature = "demo"))]
pub async fn start(_: &TaskTracker, _: CancellationToken) -> Result<Config, DemoError> {
    Err(DemoError::NotBuilt)
}

/// What to paste into a terminal to watch a stream.
pub fn instructions(addr: std::net::SocketAddr) -> String {
    let mock = MOCK.get().map_or_else(String::new, |m| {
        format!(
            "The mock vendor is at http://{m} (GET /stats: what it sent and what was cancelled).\n"
        )
    });
    format!(
        "ssegate demo is up.\n{mock}\
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

/// The request path with the demo page at `GET /` in front of it.
pub struct DemoPage<H> {
    inner: Arc<H>,
}

impl<H> DemoPage<H> {
    pub fn new(inner: H) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl<H: Handler> Handler for DemoPage<H> {
    type Body = Either<Full<Bytes>, H::Body>;

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnState>,
    ) -> Response<Self::Body> {
        if req.uri().path() == "/" && req.method() == Method::GET {
            return page().map(Either::Left);
        }
        self.inner
            .clone()
            .handle(req, conn)
            .await
            .map(Either::Right)
    }

    fn panicked(&self) -> Response<Self::Body> {
        self.inner.panicked().map(Either::Right)
    }
}

/// The demo page, with the demo client key filled in.
fn page() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(
        PAGE.replace("__DEMO_KEY__", DEMO_KEY),
    )));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}
