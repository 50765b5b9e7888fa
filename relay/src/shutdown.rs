//! Shutdown signals: the first SIGTERM or SIGINT starts a graceful drain ([`crate::server`]); a second one means
//! "now" (`main` exits 130 without waiting).

use std::future::Future;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Both signals, watched for the life of the process.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// A second signal cut the drain short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forced;

/// Runs `serving` (which stops accepting and drains once `stop` is cancelled) until it ends; the first signal
/// cancels `stop`, a second one gives up waiting.
pub async fn until_signalled<T>(
    serving: impl Future<Output = T>,
    stop: CancellationToken,
    mut signals: Signals,
) -> Result<T, Forced> {
    let watch = async {
        let first = signals.next().await;
        tracing::info!(
            signal = first,
            "shutting down gracefully (send it again to exit now)"
        );
        stop.cancel();
        signals.next().await
    };
    tokio::select! {
        served = serving => Ok(served),
        second = watch => {
            tracing::warn!(signal = second, "second signal: exiting now");
            Err(Forced)
        }
    }
}
