//! The threads that serve connections, in one of two models (`pin_connections`):
//!
//! - **shared** (default): `workers` threads of one work-stealing tokio runtime. A stream's tasks run wherever
//!   there is a free thread, so when the OS deschedules one thread (the relay sharing its CPUs with other busy
//!   processes), its streams move to another. The price is cross-thread wake-ups: profiling 100 streams showed
//!   ~0.4 futex calls and ~0.3 extra context switches per relayed chunk.
//! - **pinned**: nginx style. Each worker is one OS thread with a single-threaded runtime that accepts from its
//!   own handle on the shared listening socket and serves what it accepted from start to end, upstream connection
//!   included (each worker has its own upstream pools). A chunk's read, tap and write happen on one thread and wake
//!   no other: ~15% less CPU per chunk at 100 streams here. But a thread the OS deschedules delays every stream it
//!   holds: on the 2-core reference machine, saturated by the load generator and the mock, 1000 streams saw a
//!   median chunk delay 2 to 4 times the shared model's. Choose it when the relay has its CPUs to itself.
//!
//! In the pinned model all workers' epoll sets watch the one socket; whichever worker is free first takes a new
//! connection (the others see `EAGAIN`), so load follows idleness. Stream limits are shared by all workers in both
//! models (one set of semaphores).

use std::sync::Arc;

use tokio::net::TcpListener;

use super::{Handler, Shutdown, serve};
use crate::config::ServerLimits;

/// Serves `listener` on `workers` threads (pinned or shared, see the module docs), each pinned worker with its own
/// handler from `make`, until `shutdown.stop`; returns when every worker has drained. A worker that cannot be
/// started is logged and the others carry on; with none started, the caller's runtime serves.
pub async fn serve_workers<H: Handler>(
    listener: TcpListener,
    workers: usize,
    pinned: bool,
    make: impl Fn() -> Arc<H>,
    limits: ServerLimits,
    shutdown: Shutdown,
) {
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot hand the listener to worker threads; not serving");
            return;
        }
    };
    // Each thread holds a sender; `recv` returns `None` once every one has ended (drained, or panicked).
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut started = 0;
    let threads = if pinned { workers } else { 1 };
    for n in 0..threads {
        let own = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(worker = n, error = %e, "cannot share the listener with a worker; running fewer");
                continue;
            }
        };
        let (handler, shutdown, done) = (make(), shutdown.clone(), done_tx.clone());
        // Pinned: a single-threaded runtime per worker. Shared: one thread runs the accept loop on a work-stealing
        // runtime whose `workers` threads serve the connections.
        let pool = (!pinned).then_some(workers);
        let spawned = std::thread::Builder::new()
            .name(format!("relay-worker-{n}"))
            .spawn(move || run_worker(own, pool, handler, limits, shutdown, done));
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

/// One worker: a runtime (single-threaded, or a work-stealing pool of `pool` threads) serving its listener handle
/// until the drain is over.
fn run_worker<H: Handler>(
    listener: std::net::TcpListener,
    pool: Option<usize>,
    handler: Arc<H>,
    limits: ServerLimits,
    shutdown: Shutdown,
    _done: tokio::sync::mpsc::Sender<()>,
) {
    let mut builder = match pool {
        None => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads.max(1)).thread_name("relay-pool");
            b
        }
    };
    let runtime = match builder.enable_all().build() {
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
