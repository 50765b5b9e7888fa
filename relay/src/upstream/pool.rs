//! Idle vendor connections of one endpoint, kept for the next call. A connection comes back only after its
//! response was read to the end on a keep-alive connection ([`super::exchange::VendorBody`]); it is taken most
//! recently used first and checked before reuse ([`Conn::is_open_and_quiet`]): one the vendor closed, or that has
//! stray bytes, is dropped instead of failing a request. Bounded by count (`max_idle_connections`; more are closed
//! as they come back) and age (`pool_idle_timeout_ms`): a sweep every half idle time, started with the pool's first
//! idle connection on the runtime that owns it, closes the ones past their time and the ones the vendor closed, so
//! no socket lingers half-closed; it ends when the pool is dropped.
//!
//! With `pin_connections` every worker thread has its own pools (its own runtime owns the sockets); otherwise one
//! pool per endpoint serves all threads behind a mutex held for a push or a pop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::exchange::Conn;

pub struct Pool {
    idle: Mutex<Vec<(Conn, Instant)>>,
    max: usize,
    timeout: Duration,
    sweeping: AtomicBool,
}

impl Pool {
    pub fn new(max: usize, timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max,
            timeout,
            sweeping: AtomicBool::new(false),
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
    pub fn put(self: &Arc<Self>, conn: Conn) {
        if self.max == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, since)| now.duration_since(*since) < self.timeout);
        if idle.len() < self.max {
            idle.push((conn, now));
        }
        drop(idle);
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let every = (self.timeout / 2).max(Duration::from_millis(50));
                runtime.spawn(sweeper(Arc::downgrade(self), every));
            }
        }
    }

    /// Closes the idle connections past their time or no longer open (one read attempt each: not on the hot path).
    fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain_mut(|(conn, since)| {
            now.duration_since(*since) < self.timeout && conn.is_open_and_quiet()
        });
    }
}

/// Sweeps the pool every `every` until it is dropped.
async fn sweeper(pool: Weak<Pool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.sweep();
    }
}
