//! ssegate relay: sits between your front end and an LLM vendor. It authenticates your users with your own keys,
//! calls the vendor with the vendor's secret (which never leaves the server), and relays the vendor's
//! Server-Sent-Events stream to the browser frame by frame, as it arrives, byte for byte.
//!
//! The request path, one file per stage, in order ([`stack`] composes them and is imported by nothing else):
//!
//! ```text
//! server.rs   accept, HTTP/1.1 connection, head timeout, write timeout, drain (server/io.rs, server/workers.rs)
//! trace.rs    trace id: fresh, or the vendor's once it answers; the x-trace-id header
//! route.rs    method + path → /healthz, a configured route, or 404/405
//! auth.rs     client key → tenant, or 401
//! limit.rs    concurrent streams, in all and per tenant → a permit, or 503/429
//! body.rs     the request body, bounded → 413
//! upstream.rs forward to the vendor, failover before the first byte → the head, or 502/504 (upstream/error.rs)
//! tap.rs      the one wrapper on the vendor's body: frames unchanged, timers, keep-alives, error events, one end
//!             callback (tap/timers.rs, tap/failure.rs, tap/tests.rs)
//! record.rs   the end-of-stream record, written once however the stream ended
//! ```
//!
//! Beside the path: [`config`] (file + environment → validated [`Config`]), [`error`] (each stage's error → the
//! one response function), and leaves every stage may use: [`headers`] (header policy both ways), [`sse`] (event
//! boundaries), [`text`] (bounded UTF-8 audit text), [`outcome`] (how a stream ended, as the tap reports it). [`shutdown`] watches signals; [`demo`] wraps the
//! handler with the demo page (its in-process mock vendor only with the cargo feature `demo`).

pub mod auth;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod headers;
pub mod limit;
pub mod outcome;
pub mod record;
pub mod route;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod stack;
pub mod tap;
pub mod text;
pub mod trace;
pub mod upstream;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use server::ServeError;
use server::{Handler, Shutdown};
use upstream::TlsError;

/// A configuration that passed every startup check (its vendor TLS settings included), ready to serve.
pub struct Prepared {
    config: Arc<Config>,
    tls: rustls::ClientConfig,
}

impl Prepared {
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Checks what can be checked before binding: the vendor TLS settings (an `https` route without CA roots is
/// refused here). `main` exits 64 on an error.
pub fn prepare(config: Config) -> Result<Prepared, TlsError> {
    let tls = upstream::tls_config(&config.routes)?;
    Ok(Prepared {
        config: Arc::new(config),
        tls,
    })
}

/// Serves the relay on `listener` until `stop` is cancelled, then drains in-flight streams for the configured grace
/// period and ends the rest with a `shutdown` error event. Fails when a worker cannot start.
pub async fn run(
    prepared: Prepared,
    listener: TcpListener,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    serve(prepared, listener, stop, |relay| relay, || {}).await
}

/// As [`run`], with the request path wrapped by `wrap` (the demo page) and `ready` called once every worker is up.
pub async fn serve<H: Handler>(
    prepared: Prepared,
    listener: TcpListener,
    stop: CancellationToken,
    wrap: impl Fn(stack::Relay) -> H,
    ready: impl FnOnce(),
) -> Result<(), ServeError> {
    let Prepared { config, tls } = prepared;
    let shutdown = Shutdown {
        stop,
        drain: CancellationToken::new(),
    };
    let relay = stack::Relay::new(config.clone(), tls, shutdown.drain.clone());
    let make = || Arc::new(wrap(relay.for_worker()));
    let (workers, pinned) = (config.workers, config.pin_connections);
    server::serve_workers(
        listener,
        workers,
        pinned,
        make,
        config.limits,
        shutdown,
        ready,
    )
    .await
}

/// Installs the global log subscriber (stderr; `RUST_LOG` filters, default `info`).
pub fn init_tracing(format: config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        config::LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
