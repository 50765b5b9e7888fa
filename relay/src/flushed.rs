//! A leaf shared by a client connection's IO ([`crate::server`]) and the taps of its streams ([`crate::tap`]): the
//! last moment the connection handed everything it had buffered to the socket.
//!
//! hyper calls the IO's `poll_flush` only once its write buffer is empty, that is once every byte queued so far
//! (every frame the tap yielded) was accepted by the socket; the IO marks that moment here when a write happened
//! since the last mark. A frame the tap yielded at `t_in` was therefore accepted by the client's socket at the first
//! mark after `t_in`, which is how the tap measures the relay-added delay per chunk.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// When a connection last finished writing.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Nanoseconds after [`base`], plus one (0: never).
    at: AtomicU64,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

impl Flushed {
    /// Everything buffered was written at `now`.
    pub fn mark(&self, now: Instant) {
        let nanos = now.saturating_duration_since(base()).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.at.store(nanos + 1, Ordering::Relaxed);
    }

    /// The last mark, if any.
    pub fn last(&self) -> Option<Instant> {
        match self.at.load(Ordering::Relaxed) {
            0 => None,
            n => Some(base() + std::time::Duration::from_nanos(n - 1)),
        }
    }
}
