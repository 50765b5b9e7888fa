//! ssegate relay: sits between your front end and an LLM vendor. It authenticates your users with your own keys,
//! calls the vendor with the vendor's secret (which never leaves the server), and relays the vendor's
//! Server-Sent-Events stream to the browser frame by frame, as it arrives, byte for byte.
//!
//! Request path (one module per stage; [`stack`] runs them in order):
//!
//! ```text
//! accept (server) → trace id (stack) → route (stack) → authenticate (auth) → read body, bounded (stack)
//!   → forward (upstream) → tap the body (tap, audit) → stream back → record at end of stream (tap)
//! ```
//!
//! Modules: [`config`] (file + env → validated config) · [`server`] (listener, connections, drain) ·
//! [`stack`] (the request path) · [`auth`] (client keys) · [`upstream`] (vendor call, header hygiene) ·
//! [`tap`] (body wrapper, end-of-stream record) · [`audit`] (bounded UTF-8 audit text) · [`error`] (the one
//! error → response function) · [`shutdown`] (signals) · [`demo`] (`relay --demo`).

pub mod audit;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod rate_limit;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod stack;
pub mod tap;
pub mod upstream;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Serves the relay on `listener` (on `config.workers` threads) until `stop` is cancelled, then drains in-flight
/// streams for the configured grace period and ends the rest with a `shutdown` error event.
pub async fn run(config: Arc<Config>, listener: TcpListener, stop: CancellationToken) {
    let shutdown = server::Shutdown {
        stop,
        drain: CancellationToken::new(),
    };
    let relay = stack::Relay::new(config.clone(), shutdown.drain.clone());
    let make = || Arc::new(relay.for_worker());
    let (workers, pinned) = (config.workers, config.pin_connections);
    server::serve_workers(listener, workers, pinned, make, config.limits, shutdown).await;
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
