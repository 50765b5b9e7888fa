//! The shared state store for limits across replicas (`[store]`): Redis. Without it the limits live in the
//! process ([`crate::limit`]), which is exact for one replica only.
//!
//! Each limit is one atomic server-side script, so replicas never race: today the request rate (GCRA, the same
//! algorithm as [`crate::limit::rate`], on the server's clock, so replicas' clocks do not matter). Keys are
//! `<key_prefix>:{<tenant>}:<limit>`: the braces are a Redis Cluster hash tag, so one tenant's keys live on one
//! shard. The store is asked at a request's start, never per chunk.
//!
//! Every call has `timeout_ms`; a call that fails or times out applies `on_store_error` (`allow`: the request
//! goes on unlimited; `deny`: 503 `store_unavailable`), is counted in `ssegate_store_errors_total` and logged
//! at most once per [`LOG_EVERY`]. The connection is made on first use and re-made by itself after Redis comes
//! back (`redis::aio::ConnectionManager`): an unreachable Redis at startup is a warning, not an exit.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::rate::{self, RateRefused, RateState};

/// What a request does when the store cannot answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Goes on without the limits the store keeps (the default: Redis down must not take the relay down).
    Allow,
    /// Is refused with 503.
    Deny,
}

/// `[store]`, validated.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub client: redis::Client,
    pub timeout: Duration,
    pub on_error: OnStoreError,
    pub key_prefix: String,
}

/// At most one log line per this long about store errors (each is counted in the metrics).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// GCRA on the server: `KEYS[1]` the tenant's theoretical arrival time (µs), `ARGV` the emission interval and the
/// period (µs). Returns `{admitted, ahead_us, retry_after_us}`.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local ahead = tat + interval - now
if ahead > period then
  return {0, tat - now, ahead - period}
end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil(ahead / 1000) + 1000)
return {1, ahead, 0}
";

/// A Redis store shared by every worker.
pub struct RedisStore {
    conn: ConnectionManager,
    config: StoreConfig,
    gcra: redis::Script,
    last_logged: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.config.timeout)
            .field("on_error", &self.config.on_error)
            .finish_non_exhaustive()
    }
}

/// Why the store did not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("the store answered something else than the script returns")]
    Reply,
}

impl RedisStore {
    /// The store, connecting on first use. Needs a tokio runtime (the connection's task runs on it).
    pub fn new(config: StoreConfig) -> Result<Self, StoreError> {
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(config.client.clone(), manager)?;
        Ok(Self {
            conn,
            config,
            gcra: redis::Script::new(GCRA),
            last_logged: Mutex::new(None),
        })
    }

    /// One round trip, within the timeout (at least a second: the first call also connects).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        let within = self.config.timeout.max(Duration::from_secs(1));
        tokio::time::timeout(within, ping)
            .await
            .map_err(|_| StoreError::Timeout(within))??;
        Ok(())
    }

    pub fn on_error(&self) -> OnStoreError {
        self.config.on_error
    }

    /// Counts one request of `tenant` against `limit` per `period`, on the server.
    pub async fn admit_request(
        &self,
        tenant: &str,
        limit: u32,
        period: Duration,
    ) -> Result<Result<RateState, RateRefused>, StoreError> {
        let key = format!("{}:{{{tenant}}}:requests", self.config.key_prefix);
        let interval = period / limit.max(1);
        let mut conn = self.conn.clone();
        let mut call = self.gcra.key(key);
        call.arg(interval.as_micros() as u64)
            .arg(period.as_micros() as u64);
        let reply: Vec<i64> =
            tokio::time::timeout(self.config.timeout, call.invoke_async(&mut conn))
                .await
                .map_err(|_| StoreError::Timeout(self.config.timeout))??;
        let &[admitted, ahead, retry] = reply.as_slice() else {
            return Err(StoreError::Reply);
        };
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let state = rate::state_for(limit, period, interval, us(ahead));
        Ok(if admitted == 1 {
            Ok(state)
        } else {
            Err(RateRefused {
                state,
                retry_after: us(retry),
            })
        })
    }

    /// Counts a failed call and logs it unless one was logged within [`LOG_EVERY`].
    pub fn failed(&self, e: &StoreError) {
        crate::metrics::store_error();
        let now = Instant::now();
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            *last = Some(now);
            let error = e.to_string();
            let on_store_error = match self.config.on_error {
                OnStoreError::Allow => "allow",
                OnStoreError::Deny => "deny",
            };
            tracing::warn!(%error, on_store_error, "limit store unavailable (logged at most every 10 s)");
        }
    }
}
