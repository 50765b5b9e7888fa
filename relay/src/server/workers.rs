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
//!
//! Startup is all or nothing: every worker reports whether its thread, runtime and listener handle are up before
//! `ready` is called; if one cannot start, the others are stopped and the error is returned (the process exits
//! non-zero rather than serving with fewer workers than configured, or not at all).

use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::{Handler, Shutdown, serve};
use crate::config::ServerLimits;

/// A worker that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot hand the listener to worker threads")]
    Listener(#[source] io::Error),
    #[error("cannot start worker {worker}")]
    Worker {
        worker: usize,
        #[source]
        source: io::Error,
    },
}

/// Serves `listener` on `workers` threads (pinned or shared, see the module docs), each pinned worker with its own
/// handler from `make`; calls `ready` once every worker is up, then serves until `shutdown.stop` and returns when
/// every worker has drained.
pub async fn serve_workers<H: Handler>(
    listener: TcpListener,
    workers: usize,
    pinned: bool,
    make: impl Fn() -> Arc<H>,
    limits: ServerLimits,
    shutdown: Shutdown,
    ready: impl FnOnce(),
) -> Result<(), ServeError> {
    let listener = listener.into_std().map_err(ServeError::Listener)?;
    // Each thread holds a sender: it reports its start, and `recv` returns `None` once every thread has ended.
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(), ServeError>>();
    let threads = if pinned { workers } else { 1 };
    let mut failed = None;
    for worker in 0..threads {
        let started = listener.try_clone().and_then(|own| {
            let (handler, shutdown, tx) = (make(), shutdown.clone(), tx.clone());
            // Pinned: a single-threaded runtime per worker. Shared: one thread runs the accept loop on a
            // work-stealing runtime whose `workers` threads serve the connections.
            let pool = (!pinned).then_some(workers);
            std::thread::Builder::new()
                .name(format!("relay-worker-{worker}"))
                .spawn(move || run_worker(worker, own, pool, handler, limits, shutdown, tx))
        });
        if let Err(source) = started {
            failed = Some(ServeError::Worker { worker, source });
            break;
        }
    }
    drop((tx, listener));
    let spawned = if failed.is_some() { 0 } else { threads };
    for _ in 0..spawned {
        match rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                failed = Some(e);
                break;
            }
            None => break,
        }
    }
    match failed {
        None => ready(),
        // Stop the workers that did start; they have no streams yet, so they end at once.
        Some(_) => shutdown.stop.cancel(),
    }
    while rx.recv().await.is_some() {}
    failed.map_or(Ok(()), Err)
}

/// One worker: a runtime (single-threaded, or a work-stealing pool of `pool` threads) serving its listener handle
/// until the drain is over. Reports on `started` whether it could start.
fn run_worker<H: Handler>(
    worker: usize,
    listener: std::net::TcpListener,
    pool: Option<usize>,
    handler: Arc<H>,
    limits: ServerLimits,
    shutdown: Shutdown,
    started: mpsc::UnboundedSender<Result<(), ServeError>>,
) {
    let mut builder = match pool {
        None => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads.max(1)).thread_name("relay-pool");
            b
        }
    };
    let fail = |source| {
        let _ = started.send(Err(ServeError::Worker { worker, source }));
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    runtime.block_on(async {
        match TcpListener::from_std(listener) {
            Ok(l) => {
                let _ = started.send(Ok(()));
                serve(l, handler, limits, shutdown).await;
            }
            Err(e) => fail(e),
        }
    });
}
