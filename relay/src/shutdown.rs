//! Shutdown signals: the first SIGTERM or SIGINT starts a graceful drain ([`crate::server`]); a second one means
//! "now" (`main` exits 130 without waiting).

use tokio::signal::unix::{Signal, SignalKind, signal};

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

/// How a signal-driven run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Drained (or the server stopped on its own).
    Gracefully,
    /// A second signal cut the drain short.
    Forced,
}

/// Runs the relay until a signal, then drains; a second signal ends the wait at once.
pub async fn run_until_signalled(
    config: std::sync::Arc<crate::Config>,
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
    mut signals: Signals,
) -> Ended {
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
        () = crate::run(config, listener, stop.clone()) => Ended::Gracefully,
        second = watch => {
            tracing::warn!(signal = second, "second signal: exiting now");
            Ended::Forced
        }
    }
}
