//! The listener: worker threads ([`serve_workers`]), accept loop, one task per connection (HTTP/1.1 only), listener
//! limits, panic isolation and the graceful drain.
//!
//! HTTP/1.1 only on purpose: the relay sits behind nginx (which speaks h2 to browsers), and h1 keeps the h2 attack
//! surface (rapid reset, stream floods) out of the process. Per connection: hyper's header-read timeout (slowloris;
//! hyper needs a timer for it), `max_header_bytes` as hyper's buffer cap (431 beyond it, and the bound on what a
//! client that stops reading can make the relay hold), and a write-only timeout ([`io::WriteTimeout`]).
//!
//! Shutdown: stop accepting (the listener is dropped, new connections are refused), ask every connection to finish
//! (idle keep-alive connections close at once, in-flight streams go on), wait up to the grace period, then cancel
//! the drain token, which makes every remaining stream send a `shutdown` error event and end; then wait briefly for
//! those last bytes to be written. Every connection task belongs to a `TaskTracker`.

mod drain;
pub mod io;
mod sent;
mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use io::{ConnState, Delivery};
pub use workers::{ServeError, serve_workers};

use crate::config::ServerLimits;
use crate::error::BoxError;
use crate::shutdown::Watch;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// After the drain token fires: time for the final error events to be written before connections are abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What serves requests: the relay ([`crate::stack::Relay`]), the demo page around it, or a test's handler.
pub trait Handler: Send + Sync + 'static {
    type Body: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static;

    /// Answers one request; `conn` is the connection's shared state.
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnState>,
    ) -> impl Future<Output = Response<Self::Body>> + Send;

    /// The response for a request whose handling panicked.
    fn panicked(&self) -> Response<Self::Body>;
}

/// Tokens that drive shutdown: `stop` ends accepting; `drain` (fired `grace` later) ends the remaining streams.
#[derive(Clone, Default)]
pub struct Shutdown {
    pub stop: CancellationToken,
    pub drain: CancellationToken,
}

/// Serves `listener` with `handler` until `shutdown.stop`, then drains (see the module docs).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    shutdown: Shutdown,
) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.stop.cancelled() => break,
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
        limit_unsent(&stream);
        tracker.spawn(connection(
            stream,
            peer,
            handler.clone(),
            limits,
            shutdown.stop.clone(),
        ));
    }
    drop(listener);
    tracker.close();
    tracing::info!(in_flight = tracker.len(), grace = ?limits.shutdown_grace, "shutting down: draining");
    if tokio::time::timeout(limits.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = tracker.len(),
            "grace period over: ending the remaining streams"
        );
        shutdown.drain.cancel();
        if tokio::time::timeout(CLOSE_TIMEOUT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = tracker.len(),
                "connections still open after the final events; leaving them"
            );
        }
    }
}

/// Unsent bytes the kernel may queue on a client socket before it stops accepting writes (`TCP_NOTSENT_LOWAT`).
///
/// Without it, Linux lets a connection's send buffer grow to megabytes (`tcp_wmem`, autotuned) and calls the socket
/// writable again only once a third of that is free. Two things went wrong with that: an answer's tail sat in the
/// kernel, counted as written, for a client that never took it; and a client that kept reading slowly could make no
/// write succeed for longer than the write timeout. With the mark, and writes of at most the mark each starting a
/// new kernel buffer ([`io::WriteTimeout`]), at most twice the mark is ever unsent, so a write succeeds as soon as
/// the client's window opens: writes follow the client's progress, and what the kernel holds for a client is
/// bounded (twice the mark plus the client's receive window). 16 KiB, the value Cloudflare uses for the same
/// reason; 128 KiB let a 64 KiB/s reader go 3 s without a successful write on a loaded CI machine. Data already
/// sent and awaiting acknowledgement is not counted, so a fast client's throughput is unaffected; an SSE stream's
/// small frames never come near the mark.
pub const NOTSENT_LOWAT: u32 = 16 << 10;

fn limit_unsent(stream: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        tracing::debug!(error = %e, "cannot set TCP_NOTSENT_LOWAT");
    }
}

/// One client connection, start to end: HTTP/1.1 with the header limits, each request to `handler` (a panic
/// answers 500), writes under the write timeout; a panic while streaming closes only this connection.
async fn connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    limits: ServerLimits,
    stop: CancellationToken,
) {
    let state = Arc::new(ConnState::default());
    let io = io::WriteTimeout::new(stream, limits.write_timeout, state.clone());
    let stopping = stop.clone();
    let activity = Arc::new(drain::Activity::default());
    let requests = activity.clone();
    let service = service_fn(move |req| {
        let handler = handler.clone();
        let state = state.clone();
        let stopping = stopping.clone();
        let in_progress = requests.started();
        // Boxed per request: hyper keeps the slot for a service future for the connection's life, sized for the
        // future's type. Unboxed, that was ~8 KiB (the whole vendor call: connect, TLS, head) held by every open
        // stream; boxed, it is a pointer, and the call's state is freed with its response.
        Box::pin(async move {
            let fallback = handler.clone();
            let res = AssertUnwindSafe(handler.handle(req, state))
                .catch_unwind()
                .await;
            let mut res = res.unwrap_or_else(|_| {
                tracing::error!(%peer, "request handler panicked; answered 500");
                fallback.panicked()
            });
            if stopping.is_cancelled() {
                // Draining: this answer is the connection's last, and says so, so a proxy does not reuse it.
                res.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(res.map(|body| drain::Counted::new(body, in_progress)))
        })
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .serve_connection(TokioIo::new(io), service);
    // A panic while streaming a body unwinds out of the connection future: only this connection ends.
    let driven = AssertUnwindSafe(drive(conn, stop, &activity))
        .catch_unwind()
        .await;
    match driven {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        Err(_) => tracing::error!(%peer, "connection panicked while streaming; closed it"),
    }
}

/// Runs a connection; on `stop`, lets it answer what its client (a proxy reusing the kept-alive connection) still
/// sends, each answer marked `Connection: close`, and closes it once it has had no request in progress for
/// [`drain::DRAIN_LINGER`] (see `server/drain.rs` for the race this avoids).
async fn drive<S>(
    conn: http1::Connection<TokioIo<io::WriteTimeout<tokio::net::TcpStream>>, S>,
    stop: CancellationToken,
    activity: &drain::Activity,
) -> hyper::Result<()>
where
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<BoxError>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = Watch::new(stop) => {
            tokio::select! {
                ended = conn.as_mut() => return ended,
                () = activity.idle(drain::DRAIN_LINGER) => {}
            }
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}
