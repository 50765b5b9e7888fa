//! The listener: accept loop, one task per connection (HTTP/1.1 only), header-read timeout, graceful drain.
//!
//! HTTP/1.1 only on purpose: the relay sits behind nginx (which speaks h2 to browsers), and h1 keeps the h2
//! attack surface (rapid reset, stream floods) out of the process. Every connection task belongs to a
//! `TaskTracker`, so shutdown can wait for in-flight streams.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::stack::Relay;

/// Time a client gets to send a complete request head (slowloris defence; hyper needs a timer for it).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight streams may run after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `listener` until `shutdown` is cancelled, then drains connections for at most [`SHUTDOWN_GRACE`].
pub async fn run(config: Arc<Config>, listener: TcpListener, shutdown: CancellationToken) {
    let relay = Arc::new(Relay::new(config));
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let relay = relay.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let relay = relay.clone();
                async move { Ok::<_, std::convert::Infallible>(relay.handle(req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracker.close();
    tracing::info!(
        in_flight = tracker.len(),
        "shutting down: draining connections"
    );
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = tracker.len(),
            "grace period over: closing remaining connections"
        );
    }
}
