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
