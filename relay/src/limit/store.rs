//! The shared state store for limits across replicas (`[store]`): Redis. Without it the limits live in the
//! process ([`crate::limit`]), which is exact for one replica only.
//!
//! Each limit is one atomic server-side script, so replicas never race, on the server's clock, so the replicas'
//! clocks do not matter:
//!
//! - a stream's start ([`RedisStore::enter`], one call): a stream slot (below), then the tenant's tokens
//!   (`…:tokens`, a GCRA with a cost per token; `…:tokens:day:<n>` and `…:tokens:month:<n>`, counters: the
//!   request's reservation must fit and is charged, [`super::tokens`]), then its request rate (`…:requests`, GCRA, the same algorithm as [`crate::limit::rate`]);
//! - a stream's end ([`RedisStore::charge`], one call): its slot given back, its token reservation settled to what
//!   it used, its totals added to the day's usage (`…:usage:<day>`, a hash by route, model and figure, kept 400
//!   days); a request that ends without an answer (its [`Lease`] dropped) gives its slot and reservation back in
//!   the same script;
//! - concurrent streams: leases (`…:streams`, a sorted set of lease ids scored by their expiry). A stream takes a
//!   lease when fewer than the tenant's limit are unexpired, gives it back when it ends (however it ends: the lease
//!   is dropped with the stream's permit), and this replica renews all the leases it holds every third of
//!   `stream_lease_ms` ([`RedisStore::renew_until`], one call per tenant). A replica that dies stops renewing: its
//!   slots are free again within `stream_lease_ms`. A store that restarts empty forgets the open streams' leases:
//!   each replica's next renewal adds back those it still holds (counted in `ssegate_store_leases_restored_total`),
//!   so the limit holds again within one renewal interval (`stream_lease_ms / 3`) of the store answering; streams
//!   admitted in that window (at most the tenant's limit, over all replicas) run to their end.
//!
//! Keys are `<key_prefix>:{<tenant>}:<limit>`: the braces are a Redis Cluster hash tag, so one tenant's keys live
//! on one shard. The store is asked at a stream's start (slot, admission) and end (slot, charge) and for the renewals, never
//! per chunk.
//!
//! Every call has `timeout_ms`; a call that fails or times out applies `on_store_error` (`allow`: the request
//! goes on unlimited; `deny`: 503 `store_unavailable`), is counted in `ssegate_store_errors_total` and logged
//! at most once per [`LOG_EVERY`]. The connection is made on first use and re-made by itself after Redis comes
//! back (`redis::aio::ConnectionManager`, or the cluster client's connection, which also follows `MOVED` and
//! `ASK`): an unreachable Redis at startup is a warning, not an exit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::TokenLimits;
use super::rate::{self, RateRefused};
use super::tokens::Calendar;
use super::{Admitted, LimitError, refused_tokens};
pub use crate::config::OnStoreError;
use crate::usage::Totals;

/// Where the store is: one Redis server (or a primary behind a failover proxy), or a Redis Cluster.
#[derive(Clone, Debug)]
pub enum StoreClient {
    Single(Box<redis::Client>),
    /// The cluster's seed nodes; the client learns the slots from them and follows `MOVED`/`ASK` by itself. Every
    /// script's keys are one tenant's (one hash tag, one slot), so each call goes to one shard.
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// The store's client and settings, built at startup from `[store]` ([`crate::config::StoreSettings`]).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub client: StoreClient,
    pub timeout: Duration,
    pub on_error: OnStoreError,
    pub key_prefix: String,
    /// How long a stream's slot outlives the last renewal of the replica holding it.
    pub stream_lease: Duration,
}

const MINUTE: Duration = Duration::from_secs(60);

/// The next renewal after a failed one comes this soon (or at the normal interval, when that is sooner).
pub const RETRY_RENEWAL: Duration = Duration::from_millis(250);

/// At most one log line per this long about store errors (each is counted in the metrics).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A stream's start, on the server, in one call: a stream slot, then the tenant's tokens, then its request rate.
/// `KEYS`: the tenant's leases (a sorted set), requests TAT, tokens TAT, tokens used today and this month. `ARGV`:
/// the tenant's concurrent streams, the lease (ms), the new lease's id, requests per minute (0: none), tokens per
/// minute (0: none), the day and month quotas (0: none), the tokens to reserve (0: none). The lease is added and
/// the tokens reserved only when everything admits the request. TATs are µs of the server's clock, written with
/// `%.0f` (Lua would write a float as `%.14g`, losing microseconds); a microsecond of slack absorbs the float
/// division's rounding. Returns `{verdict, requests_ahead_us, requests_retry_us, tokens_ahead_us, day_used,
/// month_used}` (the tokens before the reservation); verdict 1 admitted (lease taken, tokens reserved, request
/// counted), 3 no stream slot, 2 refused by tokens, 0 refused by the request rate (nothing taken or counted but
/// for 1).
const ENTER: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return {3, 0, 0, 0, 0, 0}
end
local period = 60000000
local rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5])
local day_quota, month_quota = tonumber(ARGV[6]), tonumber(ARGV[7])
local reserve = tonumber(ARGV[8])
local tok_ahead = 0
if tpm > 0 then
  local tat = tonumber(redis.call('GET', KEYS[3]) or now)
  if tat > now then tok_ahead = tat - now end
end
local day_used = tonumber(redis.call('GET', KEYS[4]) or 0)
local month_used = tonumber(redis.call('GET', KEYS[5]) or 0)
if (tpm > 0 and tok_ahead + reserve * (period / tpm) > period + 1)
  or (day_quota > 0 and day_used + reserve > day_quota)
  or (month_quota > 0 and month_used + reserve > month_quota) then
  return {2, 0, 0, tok_ahead, day_used, month_used}
end
local ahead = 0
if rpm > 0 then
  local interval = period / rpm
  local tat = tonumber(redis.call('GET', KEYS[2]) or now)
  if tat < now then tat = now end
  ahead = tat + interval - now
  if ahead > period then
    return {0, tat - now, ahead - period, tok_ahead, day_used, month_used}
  end
  redis.call('SET', KEYS[2], string.format('%.0f', tat + interval), 'PX', math.ceil(ahead / 1000) + 1000)
end
if reserve > 0 then
  if tpm > 0 then
    local until_us = tok_ahead + reserve * (period / tpm)
    redis.call('SET', KEYS[3], string.format('%.0f', now + until_us), 'PX', math.ceil(until_us / 1000) + 1000)
  end
  redis.call('INCRBY', KEYS[4], reserve)
  redis.call('EXPIRE', KEYS[4], 172800)
  redis.call('INCRBY', KEYS[5], reserve)
  redis.call('EXPIRE', KEYS[5], 3024000)
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return {1, ahead, 0, tok_ahead, day_used, month_used}
";

/// A stream's end, in one call: its lease given back, its reservation settled and its usage added. `KEYS`: the
/// leases, tokens TAT, tokens used on the day and in the month of the reservation, the day's usage hash. `ARGV`:
/// the lease's id (empty: none), tokens per minute (0: none), the tokens to charge beyond the reservation
/// (negative: given back; a refund never frees more than the whole limit nor takes a count below 0), the field
/// prefix (`route\nmodel\n`), then field/value pairs of the usage (none: a reservation given back unused).
const END: &str = r"
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
local tpm = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
if tpm > 0 and n ~= 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local tat = tonumber(redis.call('GET', KEYS[2]) or now)
  if tat < now then tat = now end
  tat = tat + n * (60000000 / tpm)
  if tat <= now then
    redis.call('DEL', KEYS[2])
  else
    redis.call('SET', KEYS[2], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
end
if n ~= 0 then
  if redis.call('INCRBY', KEYS[3], n) < 0 then redis.call('SET', KEYS[3], 0) end
  redis.call('EXPIRE', KEYS[3], 172800)
  if redis.call('INCRBY', KEYS[4], n) < 0 then redis.call('SET', KEYS[4], 0) end
  redis.call('EXPIRE', KEYS[4], 3024000)
end
if #ARGV > 4 then
  for i = 5, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[5], ARGV[4] .. ARGV[i], ARGV[i + 1])
  end
  redis.call('EXPIRE', KEYS[5], 34560000)
end
return 1
";

/// Renewal: `ARGV` the lease (ms), then the ids this replica holds. Each is renewed; one the set no longer has (the
/// store restarted, empty, or lost the key) is added again, so that the slots a replica's live streams hold count
/// again after a restart. Returns the ids added again.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local restored = {}
for i = 2, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    restored[#restored + 1] = ARGV[i]
  end
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease * 2)
return restored
";

/// A connection to the store: multiplexed, reconnecting by itself, cheap to clone.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis store shared by every worker.
pub struct RedisStore {
    conn: Conn,
    config: StoreConfig,
    enter: redis::Script,
    end: redis::Script,
    renew: redis::Script,
    last_logged: Mutex<Option<Instant>>,
    /// This process, in lease ids (a fresh UUID per start).
    replica: String,
    next_lease: AtomicU64,
    /// The leases this replica holds, by id: their tenant.
    held: Mutex<HashMap<u64, Arc<str>>>,
}

/// A tenant's stream slot in the store, and the tokens reserved with it; given back (the reservation in full)
/// when dropped, unless the stream's end call settles it ([`RedisStore::charge`]).
#[derive(Debug)]
pub struct Lease {
    store: Arc<RedisStore>,
    tenant: Arc<str>,
    id: u64,
    /// Tokens reserved with the slot, under which per-minute limit, and when (the windows they count in).
    reserved: u64,
    per_minute: Option<u32>,
    made: Calendar,
    /// Given back by another call (the stream's end): nothing to do on drop.
    given_back: bool,
}

impl Lease {
    /// No longer renewed nor given back on drop (another call gives it back): its id.
    fn disarm(mut self) -> u64 {
        self.store.held().remove(&self.id);
        self.given_back = true;
        self.id
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.given_back {
            return;
        }
        self.store.held().remove(&self.id);
        let store = self.store.clone();
        let (tenant, id) = (self.tenant.clone(), self.id);
        let (reserved, per_minute, made) = (self.reserved, self.per_minute, self.made);
        // The request has ended without an answer to charge; giving the slot and the reservation back must not
        // hold up what ends it. A release that fails leaves the slot to expire with its lease (and the reservation
        // to count until its window turns).
        let release = async move {
            let settle = Settle {
                lease_id: store.lease_id(id),
                per_minute,
                delta: -i64::try_from(reserved).unwrap_or(i64::MAX),
                made,
            };
            if let Err(e) = store.end(&tenant, settle, None, made).await {
                store.failed(&e);
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release);
        }
    }
}

/// What a stream's end settles: its lease, and its tokens beyond (or short of) what it reserved.
struct Settle {
    lease_id: String,
    per_minute: Option<u32>,
    delta: i64,
    made: Calendar,
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
        let conn = match &config.client {
            StoreClient::Single(client) => Conn::Single(ConnectionManager::new_lazy_with_config(
                (**client).clone(),
                manager,
            )?),
            StoreClient::Cluster(client) => {
                let cluster = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(Duration::from_secs(1))
                    .set_response_timeout(config.timeout);
                Conn::Cluster(client.get_pending_async_connection_with_config(cluster))
            }
        };
        Ok(Self {
            conn,
            config,
            enter: redis::Script::new(ENTER),
            end: redis::Script::new(END),
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

    /// A key of a resumable answer ([`crate::resume`]): `<key_prefix>:stream:{<stream id>}:<part>`, one hash tag
    /// per answer, so each answer's keys live on one Cluster shard.
    pub fn stream_key(&self, stream: &str, part: &str) -> String {
        format!("{}:stream:{{{stream}}}:{part}", self.config.key_prefix)
    }

    /// A Redis Cluster (a pipeline's commands must then share a slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Runs `pipe` within the store's timeout.
    pub async fn run_pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.within(pipe.query_async(&mut conn)).await
    }

    /// Runs `script` within the store's timeout.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.within(script.invoke_async(&mut conn)).await
    }

    fn lease_id(&self, id: u64) -> String {
        format!("{}-{id}", self.replica)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<str>>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Renews every lease this replica holds, every third of the lease time, until `done` is cancelled. A lease the
    /// store no longer has (it restarted empty) is added again and counted
    /// (`ssegate_store_leases_restored_total`), so the tenant's concurrency limit holds again within one renewal
    /// interval of the store answering. After a failed renewal the next comes sooner ([`RETRY_RENEWAL`]), so the
    /// slots are back right after the store is.
    pub async fn renew_until(&self, done: tokio_util::sync::CancellationToken) {
        let every = self.config.stream_lease / 3;
        let mut wait = every;
        loop {
            tokio::select! {
                () = done.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = if self.renew_once().await {
                every
            } else {
                every.min(RETRY_RENEWAL)
            };
        }
    }

    /// One renewal of every lease this replica holds, one call per tenant; false when a call failed.
    async fn renew_once(&self) -> bool {
        let mut by_tenant: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        for (id, tenant) in self.held().iter() {
            by_tenant.entry(tenant.clone()).or_default().push(*id);
        }
        let mut all_ok = true;
        for (tenant, ids) in by_tenant {
            let mut conn = self.conn.clone();
            let key = self.key(&tenant, "streams");
            let mut call = self.renew.key(&key);
            call.arg(self.config.stream_lease.as_millis() as u64);
            for id in &ids {
                call.arg(self.lease_id(*id));
            }
            match self
                .within(call.invoke_async::<Vec<String>>(&mut conn))
                .await
            {
                Ok(restored) if !restored.is_empty() => self.restored(&key, &ids, &restored).await,
                Ok(_) => {}
                Err(e) => {
                    all_ok = false;
                    self.failed(&e);
                }
            }
        }
        all_ok
    }

    /// The renewal added `restored` again: count those still held, and take back any whose stream ended while the
    /// call was on its way (its own release may have reached the store first), so an ended stream's slot is never
    /// brought back to life.
    async fn restored(&self, key: &str, renewed: &[u64], restored: &[String]) {
        let ended: Vec<String> = {
            let held = self.held();
            renewed
                .iter()
                .filter(|id| !held.contains_key(id))
                .map(|id| self.lease_id(*id))
                .filter(|id| restored.contains(id))
                .collect()
        };
        crate::metrics::store_leases_restored((restored.len() - ended.len()) as u64);
        if ended.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(key).arg(&ended);
        if let Err(e) = self.within(cmd.query_async::<i64>(&mut conn)).await {
            self.failed(&e);
        }
    }

    /// A round trip and the scripts loaded, within the timeout (at least a second: the first call also connects).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let within = self.config.timeout.max(Duration::from_secs(1));
        // The scripts are loaded too: otherwise the first streams each pay a `NOSCRIPT` answer and a load before
        // their call (a script the store forgets later, on a restart, is loaded again by the call that misses it).
        let ping = async {
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            for script in [&self.enter, &self.end, &self.renew] {
                script.load_async(&mut conn).await?;
            }
            Ok::<_, redis::RedisError>(())
        };
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

    /// A stream's start ([`super::Limiter::enter`]), on the server, in one call: one of the tenant's
    /// `max_streams` slots (a lease), then its tokens (`reserve` of them must fit, and are reserved) and request
    /// rate. The lease (holding the reservation), or why not.
    pub async fn enter(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        max_streams: u32,
        rpm: Option<u32>,
        (tokens, reserve): (TokenLimits, u64),
        cal: Calendar,
    ) -> Result<Result<(Lease, Admitted), LimitError>, StoreError> {
        let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        // Held (renewed) from before the call: a lease granted just as a renewal runs is renewed too.
        self.held().insert(id, tenant.clone());
        // Nothing reserved until the store says so: a call that fails gives back the slot only (whether the script
        // ran is unknown; a reservation it made counts until its window turns, rather than tokens never reserved
        // being given away).
        let mut lease = Lease {
            store: self.clone(),
            tenant: tenant.clone(),
            id,
            reserved: 0,
            per_minute: tokens.per_minute,
            made: cal,
            given_back: false,
        };
        let mut conn = self.conn.clone();
        let mut call = self.enter.key(self.key(tenant, "streams"));
        let [tat, day, month] = self.token_keys(tenant, cal);
        call.key(self.key(tenant, "requests"))
            .key(tat)
            .key(day)
            .key(month);
        call.arg(max_streams)
            .arg(self.config.stream_lease.as_millis() as u64)
            .arg(self.lease_id(id))
            .arg(rpm.unwrap_or(0))
            .arg(tokens.per_minute.unwrap_or(0))
            .arg(tokens.per_day.unwrap_or(0))
            .arg(tokens.per_month.unwrap_or(0))
            .arg(reserve);
        let reply: Vec<i64> = self.within(call.invoke_async(&mut conn)).await?;
        let reply = EnterReply::read(&reply).ok_or(StoreError::Reply)?;
        if reply.verdict == 1 {
            lease.reserved = reserve;
            return Ok(Ok((lease, reply.admitted(rpm, tokens, reserve))));
        }
        // Not taken: nothing to give back.
        lease.disarm();
        Ok(Err(reply.refusal(rpm, tokens, reserve, cal)))
    }

    /// The end of an answer of `tenant` on `route` for `model` that used `used` tokens: its lease given back, its
    /// reservation settled (without a lease, as when the store did not answer at its start: `used` charged under
    /// `per_minute`) and its totals added to the day's usage, in one call.
    pub async fn charge(
        &self,
        tenant: &str,
        (lease, per_minute): (Option<Lease>, Option<u32>),
        used: u64,
        (route, model): (&str, &str),
        usage: &Totals,
        cal: Calendar,
    ) -> Result<(), StoreError> {
        let used = i64::try_from(used).unwrap_or(i64::MAX);
        // The lease is given back by this call (when it fails, the lease expires with its time).
        let settle = match lease {
            Some(l) => {
                let (reserved, per_minute, made) = (l.reserved, l.per_minute, l.made);
                Settle {
                    lease_id: self.lease_id(l.disarm()),
                    per_minute,
                    delta: used - i64::try_from(reserved).unwrap_or(i64::MAX),
                    made,
                }
            }
            None => Settle {
                lease_id: String::new(),
                per_minute,
                delta: used,
                made: cal,
            },
        };
        self.end(tenant, settle, Some(((route, model), usage)), cal)
            .await
    }

    /// The end script: `settle`, and `usage` (when given) added to the usage of the day of `cal`.
    async fn end(
        &self,
        tenant: &str,
        settle: Settle,
        usage: Option<((&str, &str), &Totals)>,
        cal: Calendar,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let [tat, day, month] = self.token_keys(tenant, settle.made);
        let mut call = self.end.key(self.key(tenant, "streams"));
        call.key(tat)
            .key(day)
            .key(month)
            .key(self.usage_key(tenant, cal.day()));
        call.arg(settle.lease_id)
            .arg(settle.per_minute.unwrap_or(0))
            .arg(settle.delta);
        if let Some(((route, model), totals)) = usage {
            call.arg(format!("{route}\n{model}\n"));
            for (name, value) in Totals::FIELDS.into_iter().zip(totals.values()) {
                call.arg(name).arg(value);
            }
        }
        self.within(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// The usage of `tenants` on each day of `days`: (tenant, route, model, totals) rows, one per day and key.
    pub async fn usage(
        &self,
        tenants: &[Arc<str>],
        days: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<(Arc<str>, String, String, Totals)>, StoreError> {
        // One pipeline per tenant: its keys share its hash tag, so on a cluster each pipeline goes to one shard.
        let mut asked = Vec::new();
        let mut replies: Vec<HashMap<String, u64>> = Vec::new();
        // A report may read many days: ten times a limit call's time per tenant.
        let within = self.config.timeout * 10;
        for tenant in tenants {
            let mut pipe = redis::pipe();
            for day in days.clone() {
                pipe.cmd("HGETALL").arg(self.usage_key(tenant, day));
                asked.push(tenant.clone());
            }
            let mut conn = self.conn.clone();
            let got: Vec<HashMap<String, u64>> =
                tokio::time::timeout(within, pipe.query_async(&mut conn))
                    .await
                    .map_err(|_| StoreError::Timeout(within))??;
            replies.extend(got);
        }
        let mut rows = Vec::new();
        for (tenant, fields) in asked.into_iter().zip(replies) {
            let mut by_key: HashMap<(String, String), Totals> = HashMap::new();
            for (field, value) in fields {
                let mut parts = field.splitn(3, '\n');
                let (Some(route), Some(model), Some(name)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                by_key
                    .entry((route.to_owned(), model.to_owned()))
                    .or_default()
                    .add_field(name, value);
            }
            rows.extend(
                by_key
                    .into_iter()
                    .map(|((route, model), totals)| (tenant.clone(), route, model, totals)),
            );
        }
        Ok(rows)
    }

    fn token_keys(&self, tenant: &str, cal: Calendar) -> [String; 3] {
        [
            self.key(tenant, "tokens"),
            self.key(tenant, &format!("tokens:day:{}", cal.day())),
            self.key(tenant, &format!("tokens:month:{}", cal.month())),
        ]
    }

    fn usage_key(&self, tenant: &str, day: u64) -> String {
        self.key(tenant, &format!("usage:{day}"))
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

/// What the `ENTER` script answered (see it for the fields).
struct EnterReply {
    verdict: i64,
    requests_ahead: Duration,
    requests_retry: Duration,
    tokens_ahead: Duration,
    /// Tokens used today and this month, before the reservation.
    used: (u64, u64),
}

impl EnterReply {
    fn read(reply: &[i64]) -> Option<Self> {
        let &[verdict, ahead, retry, tok_ahead, day_used, month_used] = reply else {
            return None;
        };
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        let us = |v: i64| Duration::from_micros(count(v));
        Some(Self {
            verdict,
            requests_ahead: us(ahead),
            requests_retry: us(retry),
            tokens_ahead: us(tok_ahead),
            used: (count(day_used), count(month_used)),
        })
    }

    /// An admitted request's rate headers' state: requests and tokens left after it.
    fn admitted(&self, rpm: Option<u32>, tokens: TokenLimits, reserve: u64) -> Admitted {
        let requests = rpm.map(|limit| {
            let interval = MINUTE / limit.max(1);
            rate::state_for(limit, MINUTE, interval, self.requests_ahead)
        });
        let tokens = tokens.per_minute.map(|limit| {
            TokenLimits::per_minute_verdict(limit, self.tokens_ahead, reserve)
                .unwrap_or_else(|r| r.state)
        });
        Admitted { requests, tokens }
    }

    /// Why a request was refused: no stream slot (3), its tokens (2), else its request rate.
    fn refusal(
        &self,
        rpm: Option<u32>,
        tokens: TokenLimits,
        reserve: u64,
        cal: Calendar,
    ) -> LimitError {
        match self.verdict {
            3 => LimitError::Tenant,
            2 => match tokens.verdict(self.tokens_ahead, self.used, reserve, cal) {
                Err(refused) => refused_tokens(refused),
                // The server's float arithmetic refused at the boundary where the relay's does not: one token's
                // time later it will not.
                Ok(_) => LimitError::Tokens(RateRefused {
                    state: rate::RateState {
                        limit: tokens.per_minute.unwrap_or(0),
                        remaining: 0,
                        reset: Duration::ZERO,
                    },
                    retry_after: Duration::from_secs(1),
                }),
            },
            _ => {
                let limit = rpm.unwrap_or(1);
                let interval = MINUTE / limit.max(1);
                LimitError::Requests(RateRefused {
                    state: rate::state_for(limit, MINUTE, interval, self.requests_ahead),
                    retry_after: self.requests_retry,
                })
            }
        }
    }
}
