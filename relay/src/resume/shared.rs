//! Resumable answers shared by the replicas through the `[store]` (Redis): any replica can serve a resume.
//!
//! The replica that calls the vendor (the owner) keeps the answer in its own log as without a store, and appends the
//! same frames to a Redis Stream (`…:stream:{<id>}:log`, one entry per vendor frame: its bytes `d` and where events
//! start in it `e`, as `offset:number,…`), batched ([`super::publish`]): every answer's new frames go in one
//! pipeline of script calls, one round trip for the replica every few milliseconds, not one per frame. Each call says
//! the owner is alive (`…:owner`, expiring after [`OWNER_TTL`]), keeps every key for the window (`PEXPIRE`, the time bound),
//! and reads whether a client stopped the answer (`…:stop`) or follows it on another replica (`…:followers`). The
//! answer's end goes in as a last entry (`end`: `done`, `failed`, `cancelled`, or `gone` past `max_bytes`, after
//! which nothing more is appended: the length bound).
//!
//! A resume that reaches a replica without the answer ([`follower`]) checks the owner's tenant (`…:meta`), replays the
//! log from Redis and follows it (polling every [`POLL`]), saying it follows so the owner keeps reading past the
//! window. If the owner stops saying it is alive before the end entry, the client gets what was kept, then an
//! `event: error` (`resume_incomplete`): never silence, never a short answer that looks whole.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tokio::sync::mpsc;

use crate::limit::store::RedisStore;
use crate::tap::{ErrorShape, Failure};
use relay_wire::sse::EventStarts;

/// The owner says it is alive at least this often (with frames or without).
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// An owner not heard from for this long is gone.
pub const OWNER_TTL: Duration = Duration::from_secs(3);
/// A follower on another replica says so this often; heard of, it counts as attached for [`OWNER_TTL`].
pub const POLL: Duration = Duration::from_millis(20);
/// How long a resume waits for an answer the store does not have yet (its owner's first append may be on its way).
const FIRST_APPEND: Duration = Duration::from_millis(100);
/// Log entries read per poll.
const BATCH: usize = 256;

/// Appends one answer's batch. KEYS: log, meta, owner, followers, stop. ARGV: keep (ms), owner ttl (ms), tenant, route, state
/// (`live` or the end), entries, then `d`, `e` per entry. Returns {stop asked, followed elsewhere}.
pub(super) const APPEND: &str = r"
local keep, n = tonumber(ARGV[1]), tonumber(ARGV[6])
redis.call('HSET', KEYS[2], 'tenant', ARGV[3], 'route', ARGV[4], 'state', ARGV[5], 'keep', ARGV[1])
for i = 0, n - 1 do
  redis.call('XADD', KEYS[1], '*', 'd', ARGV[7 + 2 * i], 'e', ARGV[8 + 2 * i])
end
if ARGV[5] ~= 'live' then
  redis.call('XADD', KEYS[1], '*', 'end', ARGV[5])
  redis.call('DEL', KEYS[3])
else
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], keep) end
redis.call('PEXPIRE', KEYS[2], keep)
return {redis.call('EXISTS', KEYS[5]), redis.call('EXISTS', KEYS[4])}
";

/// A follower's poll; while followed, the answer is kept (its owner's `keep` from now). KEYS: log, meta, owner,
/// followers. ARGV: last entry id read, follower ttl (ms), count. Returns {owner alive, entries after the last one
/// read}.
const FOLLOW: &str = r"
redis.call('SET', KEYS[4], '1', 'PX', ARGV[2])
local keep = redis.call('HGET', KEYS[2], 'keep')
if keep then
  redis.call('PEXPIRE', KEYS[1], keep)
  redis.call('PEXPIRE', KEYS[2], keep)
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[3])
return {redis.call('EXISTS', KEYS[3]), entries}
";

/// Stops an answer from any replica. KEYS: meta, stop. ARGV: keep (ms). Returns the answer's state, or nil.
const STOP: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'live' then redis.call('SET', KEYS[2], '1', 'PX', ARGV[1]) end
return state
";

/// The store and its scripts, for resumable answers; and the answers this replica appends to it.
#[derive(Debug)]
pub struct Shared {
    pub(super) store: Arc<RedisStore>,
    pub(super) append: redis::Script,
    follow: redis::Script,
    stop: redis::Script,
    pub(super) publishing: super::publish::Publishing,
}

/// An answer as another replica sees it in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub tenant: String,
    pub route: String,
    /// `live`, or how it ended.
    pub state: String,
}

impl Shared {
    pub fn new(store: Arc<RedisStore>) -> Self {
        Self {
            store,
            append: redis::Script::new(APPEND),
            follow: redis::Script::new(FOLLOW),
            stop: redis::Script::new(STOP),
            publishing: super::publish::Publishing::default(),
        }
    }

    pub(super) fn keys(&self, id: &str) -> [String; 5] {
        ["log", "meta", "owner", "followers", "stop"].map(|p| self.store.stream_key(id, p))
    }

    /// The answer's owner, tenant and state, if the store has it.
    pub async fn meta(&self, id: &str) -> Result<Option<Meta>, crate::limit::store::StoreError> {
        let [_, meta, ..] = self.keys(id);
        let script = redis::Script::new("return redis.call('HGETALL', KEYS[1])");
        let mut inv = script.prepare_invoke();
        inv.key(meta);
        let fields: std::collections::HashMap<String, String> = self.store.run(&inv).await?;
        let field = |k: &str| fields.get(k).cloned();
        Ok(match (field("tenant"), field("route"), field("state")) {
            (Some(tenant), Some(route), Some(state)) => Some(Meta {
                tenant,
                route,
                state,
            }),
            _ => None,
        })
    }

    /// As [`Shared::meta`], looking once more a little later when the store does not have it: an answer's owner
    /// appends its first frames within [`super::publish::GATHER`] and a round trip, and a client that lost its
    /// connection right after its first event may be faster than that.
    pub async fn meta_soon(
        &self,
        id: &str,
    ) -> Result<Option<Meta>, crate::limit::store::StoreError> {
        if let Some(meta) = self.meta(id).await? {
            return Ok(Some(meta));
        }
        tokio::time::sleep(FIRST_APPEND).await;
        self.meta(id).await
    }

    /// Asks the owner to stop the answer (it reads the request with its next batch, within [`HEARTBEAT`]); the
    /// answer's state before (`None`: unknown).
    pub async fn stop(&self, id: &str) -> Result<Option<String>, crate::limit::store::StoreError> {
        let [_, meta, _, _, stop] = self.keys(id);
        let mut inv = self.stop.prepare_invoke();
        inv.key(meta).key(stop).arg(millis(OWNER_TTL * 2));
        self.store.run(&inv).await
    }

    /// A failed store call: counted and logged as every store error.
    pub fn failed(&self, e: &crate::limit::store::StoreError) {
        self.store.failed(e);
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The body of a resume served from the store: frames from a task reading the store, in order.
#[derive(Debug)]
pub struct SharedFollower {
    rx: mpsc::Receiver<Bytes>,
}

impl SharedFollower {
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Bytes>> {
        self.rx.poll_recv(cx)
    }
}

/// Frames to a follower in flight at most (the store is read no faster than the client takes them).
const QUEUE: usize = 16;

/// A follower of the answer `id`, in the store, after event `after`; its frames come from a task on this runtime.
pub fn follower(
    shared: Arc<Shared>,
    id: Arc<str>,
    after: u64,
    shape: ErrorShape,
    trace_id: Arc<str>,
) -> SharedFollower {
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = follow(shared, id, after, tx, shape, trace_id);
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(task);
    }
    SharedFollower { rx }
}

/// Replays the answer's log from the store after event `after`, then follows it to its end entry; without one by
/// the time the owner is gone, ends with an `event: error` (`resume_incomplete`).
async fn follow(
    shared: Arc<Shared>,
    id: Arc<str>,
    after: u64,
    tx: mpsc::Sender<Bytes>,
    shape: ErrorShape,
    trace_id: Arc<str>,
) {
    let [log_key, meta, owner, followers, _] = shared.keys(&id);
    let mut last = "0-0".to_owned();
    let mut out = Emit {
        id: id.clone(),
        after,
        started: false,
        starts: EventStarts::new(),
        tx,
    };
    // The owner's absence is believed only after a poll that found nothing new (its last entries may be in flight).
    let mut owner_missing = 0;
    loop {
        let mut inv = shared.follow.prepare_invoke();
        inv.key(&log_key)
            .key(&meta)
            .key(&owner)
            .key(&followers)
            .arg(&last)
            .arg(millis(OWNER_TTL))
            .arg(BATCH);
        let (alive, entries) = match shared.store.run::<(i64, Vec<Value>)>(&inv).await {
            Ok(reply) => reply,
            Err(e) => {
                shared.store.failed(&e);
                (1, Vec::new())
            }
        };
        let got = entries.len();
        for entry in entries {
            let Some((entry_id, fields)) = parse_entry(entry) else {
                continue;
            };
            last = entry_id;
            match fields {
                Fields::Frame(d, e) => {
                    if !out.frame(d, &e).await {
                        return;
                    }
                }
                Fields::End(how) => {
                    if how != "done" {
                        out.fail(shape, &trace_id).await;
                    }
                    return;
                }
            }
        }
        if got == 0 && alive == 0 {
            owner_missing += 1;
            if owner_missing >= 2 {
                out.fail(shape, &trace_id).await;
                return;
            }
        } else {
            owner_missing = 0;
        }
        if out.tx.is_closed() {
            return;
        }
        if got < BATCH {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Where a follower of the store's log is: the event it resumes after, whether it has reached the first event after
/// it, and whether what it sent stops mid-event.
struct Emit {
    id: Arc<str>,
    after: u64,
    started: bool,
    starts: EventStarts,
    tx: mpsc::Sender<Bytes>,
}

impl Emit {
    /// Sends the part of a vendor frame that comes after event `after`, with an `id:` line before each event;
    /// `false`: the client left.
    async fn frame(&mut self, mut d: Bytes, starts: &str) -> bool {
        let mut taken = 0;
        for cut in starts.split(',').filter(|c| !c.is_empty()) {
            let parsed = cut.split_once(':').and_then(|(off, seq)| {
                Some((off.parse::<usize>().ok()?, seq.parse::<u64>().ok()?))
            });
            // Offsets come in order, within the frame (the owner wrote them); anything else is skipped.
            let Some((off, seq)) =
                parsed.filter(|(off, _)| *off >= taken && off - taken <= d.len())
            else {
                continue;
            };
            let piece = d.split_to(off - taken);
            taken = off;
            if self.started && !self.send(piece).await {
                return false;
            }
            self.started |= seq > self.after;
            if self.started {
                let line = Bytes::from(format!("id: {}:{seq}\n", self.id));
                if !self.send(line).await {
                    return false;
                }
            }
        }
        !self.started || self.send(d).await
    }

    async fn send(&mut self, b: Bytes) -> bool {
        if b.is_empty() {
            return true;
        }
        self.starts.feed(&b, |_| {});
        self.tx.send(b).await.is_ok()
    }

    async fn fail(&mut self, shape: ErrorShape, trace_id: &str) {
        let event = crate::tap::failure::error_event(
            Failure::ResumeIncomplete,
            shape,
            trace_id,
            self.starts.at_boundary(),
        );
        let _ = self.tx.send(event).await;
    }
}

enum Fields {
    Frame(Bytes, String),
    End(String),
}

/// `[id, [field, value, …]]` from `XRANGE`.
fn parse_entry(v: Value) -> Option<(String, Fields)> {
    let Value::Array(mut parts) = v else {
        return None;
    };
    let fields = parts.pop()?;
    let id: String = redis::from_redis_value(parts.pop()?).ok()?;
    let Value::Array(fields) = fields else {
        return None;
    };
    let mut it = fields.into_iter();
    let (mut d, mut e, mut end) = (None, None, None);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let k: String = redis::from_redis_value(k).ok()?;
        match k.as_str() {
            "d" => d = Some(Bytes::from(redis::from_redis_value::<Vec<u8>>(v).ok()?)),
            "e" => e = Some(redis::from_redis_value::<String>(v).ok()?),
            "end" => end = Some(redis::from_redis_value::<String>(v).ok()?),
            _ => {}
        }
    }
    match (d, e, end) {
        (_, _, Some(end)) => Some((id, Fields::End(end))),
        (Some(d), e, None) => Some((id, Fields::Frame(d, e.unwrap_or_default()))),
        _ => None,
    }
}
