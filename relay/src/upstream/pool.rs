//! Idle vendor connections of one endpoint, kept for the next call. A connection comes back only after its
//! response was read to the end on a keep-alive connection ([`super::exchange::VendorBody`]); it is taken most
//! recently used first and checked before reuse ([`Conn::is_open_and_quiet`]): one the vendor closed, or that has
//! stray bytes, is dropped instead of failing a request. Bounded by count (`max_idle_connections`; more are closed
//! as they come back) and age (`pool_idle_timeout_ms`; older ones are closed when the pool is next used).
//!
//! With `pin_connections` every worker thread has its own pools (its own runtime owns the sockets); otherwise one
//! pool per endpoint serves all threads behind a mutex held for a push or a pop.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::exchange::Conn;

pub struct Pool {
    idle: Mutex<Vec<(Conn, Instant)>>,
    max: usize,
    timeout: Duration,
}

impl Pool {
    pub fn new(max: usize, timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max,
            timeout,
        }
    }

    /// An idle connection that is still open, if there is one.
    pub fn take(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((mut conn, since)) = idle.pop() {
            if now.duration_since(since) < self.timeout && conn.is_open_and_quiet() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next call, unless the pool is full. Connections past their idle time go.
    pub fn put(&self, conn: Conn) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, since)| now.duration_since(*since) < self.timeout);
        if idle.len() < self.max {
            idle.push((conn, now));
        }
    }

    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }
}
