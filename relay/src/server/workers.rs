//! Worker threads, nginx style: each worker is one OS thread with a single-threaded runtime that accepts from its own
//! handle on the shared listening socket and serves what it accepted from start to end, upstream connection included
//! (each worker has its own upstream pools). A chunk's read from the vendor, its pass through the tap and its write
//! to the client therefore happen on one thread: no task is woken across threads, no work is stolen, no futex is
//! touched on the hot path. Profiling the work-stealing runtime at 100 streams showed ~0.4 futex calls and ~0.3
//! extra context switches per relayed chunk, which this removes.
//!
//! All workers' epoll sets watch the one socket; whichever worker is free first takes a new connection (the others
//! see `EAGAIN`), so load follows idleness. Stream limits are shared by all workers (one set of semaphores).

use std::sync::Arc;

use tokio::net::TcpListener;

use super::{Handler, Shutdown, serve};
use crate::config::ServerLimits;

/// Serves `listener` on `workers` threads, each with its own handler from `make`, until `shutdown.stop`; returns
/// when every worker has drained. A worker that cannot be started is logged and the others carry on; with none
/// started (or `workers <= 1`) the caller's runtime serves.
pub async fn serve_workers<H: Handler>(
    listener: TcpListener,
    workers: usize,
    make: impl Fn() -> Arc<H>,
    limits: ServerLimits,
    shutdown: Shutdown,
) {
    if workers <= 1 {
        return serve(listener, make(), limits, shutdown).await;
    }
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot hand the listener to worker threads; not serving");
            return;
        }
    };
    // Each worker holds a sender; `recv` returns `None` once every worker has ended (drained, or panicked).
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut started = 0;
    for n in 0..workers {
        let own = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(worker = n, error = %e, "cannot share the listener with a worker; running fewer");
                continue;
            }
        };
        let (handler, shutdown, done) = (make(), shutdown.clone(), done_tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("relay-worker-{n}"))
            .spawn(move || run_worker(own, handler, limits, shutdown, done));
        match spawned {
            Ok(_) => started += 1,
            Err(e) => {
                tracing::warn!(worker = n, error = %e, "cannot start a worker thread; running fewer")
            }
        }
    }
    drop(done_tx);
    if started == 0 {
        match TcpListener::from_std(listener) {
            Ok(l) => serve(l, make(), limits, shutdown).await,
            Err(e) => {
                tracing::error!(error = %e, "no worker could start and the listener is unusable")
            }
        }
        return;
    }
    drop(listener);
    while done_rx.recv().await.is_some() {}
}

/// One worker: a single-threaded runtime serving its listener handle until the drain is over.
fn run_worker<H: Handler>(
    listener: std::net::TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    shutdown: Shutdown,
    _done: tokio::sync::mpsc::Sender<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker's runtime; this worker does not serve");
            return;
        }
    };
    runtime.block_on(async move {
        match TcpListener::from_std(listener) {
            Ok(l) => serve(l, handler, limits, shutdown).await,
            Err(e) => tracing::error!(error = %e, "cannot register the listener in a worker; it does not serve"),
        }
    });
}
