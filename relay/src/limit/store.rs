//! The shared state store for limits across replicas (`[store]`): Redis. Without it the limits live in the
//! process ([`crate::limit`]), which is exact for one replica only.
//!
//! Each limit is one atomic server-side script, so replicas never race, on the server's clock, so the replicas'
//! clocks do not matter:
//!
//! - the request rate: GCRA, the same algorithm as [`crate::limit::rate`] (`…:requests`, one number);
//! - concurrent streams: leases (`…:streams`, a sorted set of lease ids scored by their expiry). A stream takes a
//!   lease when fewer than the tenant's limit are unexpired, gives it back when it ends (however it ends: the lease
//!   is dropped with the stream's permit), and this replica renews all the leases it holds every third of
//!   `stream_lease_ms` ([`RedisStore::renew_until`], one call per tenant). A replica that dies stops renewing: its
//!   slots are free again within `stream_lease_ms`.
//!
//! Keys are `<key_prefix>:{<tenant>}:<limit>`: the braces are a Redis Cluster hash tag, so one tenant's keys live
//! on one shard. The store is asked at a stream's start and end and for the renewals, never per chunk.
//!
//! Every call has `timeout_ms`; a call that fails or times out applies `on_store_error` (`allow`: the request
//! goes on unlimited; `deny`: 503 `store_unavailable`), is counted in `ssegate_store_errors_total` and logged
//! at most once per [`LOG_EVERY`]. The connection is made on first use and re-made by itself after Redis comes
//! back (`redis::aio::ConnectionManager`): an unreachable Redis at startup is a warning, not an exit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// How long a stream's slot outlives the last renewal of the replica holding it.
    pub stream_lease: Duration,
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

/// Leases: `KEYS[1]` the tenant's sorted set; `ARGV` the limit, the lease (ms) and the new lease's id. Returns 1
/// when taken, 0 when the tenant's unexpired leases are at the limit.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
";

/// Renewal: `ARGV` the lease (ms), then the ids this replica holds; only ids still in the set are renewed (`XX`).
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 1
";

/// A Redis store shared by every worker.
pub struct RedisStore {
    conn: ConnectionManager,
    config: StoreConfig,
    gcra: redis::Script,
    acquire: redis::Script,
    renew: redis::Script,
    last_logged: Mutex<Option<Instant>>,
    /// This process, in lease ids (a fresh UUID per start).
    replica: String,
    next_lease: AtomicU64,
    /// The leases this replica holds, by id: their tenant.
    held: Mutex<HashMap<u64, Arc<str>>>,
}

/// A tenant's stream slot in the store; given back when dropped.
#[derive(Debug)]
pub struct Lease {
    store: Arc<RedisStore>,
    tenant: Arc<str>,
    id: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.store.held().remove(&self.id);
        let (store, tenant, id) = (self.store.clone(), self.tenant.clone(), self.id);
        // The stream has ended; giving the slot back must not hold up what ends it. A release that fails leaves
        // the slot to expire with its lease.
        let release = async move {
            let mut conn = store.conn.clone();
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(store.key(&tenant, "streams"))
                .arg(store.lease_id(id));
            if let Err(e) = store.within(cmd.query_async::<i64>(&mut conn)).await {
                store.failed(&e);
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release);
        }
    }
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
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
            last_logged: Mutex::new(None),
            replica: uuid::Uuid::new_v4().simple().to_string(),
            next_lease: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, tenant: &str, limit: &str) -> String {
        format!("{}:{{{tenant}}}:{limit}", self.config.key_prefix)
    }

    fn lease_id(&self, id: u64) -> String {
        format!("{}-{id}", self.replica)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<str>>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes one of `tenant`'s `limit` stream slots: `None` when all are taken.
    pub async fn acquire_stream(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        limit: u32,
    ) -> Result<Option<Lease>, StoreError> {
        let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        // Held (renewed) from before the call: a lease granted just as a renewal runs is renewed too.
        self.held().insert(id, tenant.clone());
        let mut conn = self.conn.clone();
        let mut call = self.acquire.key(self.key(tenant, "streams"));
        let lease_ms = self.config.stream_lease.as_millis() as u64;
        call.arg(limit).arg(lease_ms).arg(self.lease_id(id));
        let taken = self.within(call.invoke_async::<i64>(&mut conn)).await;
        let lease = || Lease {
            store: self.clone(),
            tenant: tenant.clone(),
            id,
        };
        match taken {
            Ok(1) => Ok(Some(lease())),
            Ok(_) => {
                self.held().remove(&id);
                Ok(None)
            }
            // Unknown whether the script ran: dropping the lease gives it back (or lets it expire).
            Err(e) => {
                drop(lease());
                Err(e)
            }
        }
    }

    /// Renews every lease this replica holds, every third of the lease time, until `done` is cancelled.
    pub async fn renew_until(&self, done: tokio_util::sync::CancellationToken) {
        let every = self.config.stream_lease / 3;
        loop {
            tokio::select! {
                () = done.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let mut by_tenant: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
            for (id, tenant) in self.held().iter() {
                by_tenant.entry(tenant.clone()).or_default().push(*id);
            }
            for (tenant, ids) in by_tenant {
                let mut conn = self.conn.clone();
                let mut call = self.renew.key(self.key(&tenant, "streams"));
                call.arg(self.config.stream_lease.as_millis() as u64);
                for id in ids {
                    call.arg(self.lease_id(id));
                }
                if let Err(e) = self.within(call.invoke_async::<i64>(&mut conn)).await {
                    self.failed(&e);
                }
            }
        }
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

    /// `call` within the store's timeout.
    async fn within<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let timeout = self.config.timeout;
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| StoreError::Timeout(timeout))?
            .map_err(StoreError::from)
    }

    /// After a failed call: counted and logged ([`RedisStore::failed`]), then `on_store_error`: `Ok` to go on
    /// without the limit, or the refusal.
    pub fn unavailable(&self, e: &StoreError) -> Result<(), super::LimitError> {
        self.failed(e);
        match self.config.on_error {
            OnStoreError::Allow => Ok(()),
            OnStoreError::Deny => Err(super::LimitError::StoreUnavailable),
        }
    }

    /// Counts one request of `tenant` against `limit` per `period`, on the server.
    pub async fn admit_request(
        &self,
        tenant: &str,
        limit: u32,
        period: Duration,
    ) -> Result<Result<RateState, RateRefused>, StoreError> {
        let key = self.key(tenant, "requests");
        let interval = period / limit.max(1);
        let mut conn = self.conn.clone();
        let mut call = self.gcra.key(key);
        call.arg(interval.as_micros() as u64)
            .arg(period.as_micros() as u64);
        let reply: Vec<i64> = self.within(call.invoke_async(&mut conn)).await?;
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
