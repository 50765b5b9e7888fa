//! The owner's side of answers shared through the store: what each answer has not appended yet ([`Outbox`]), and
//! the one task per replica ([`run`]) that appends every answer's new frames together, in one pipeline of script
//! calls, one round trip every [`GATHER`] at most (on a Redis Cluster, one call per answer, all at once: an
//! answer's keys share a slot, two answers' do not). Each call also says the owner is alive (at least every
//! [`super::shared::HEARTBEAT`], frames or not) and brings back whether a client stopped the answer or follows it on
//! another replica. A failed round trip puts the frames back in front of their outbox and is retried: the store's
//! copy of an answer never has a gap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::log::StreamLog;
use super::shared::{HEARTBEAT, OWNER_TTL, Shared, millis};

/// How long the publisher gathers frames after the first one comes: the batch of every answer of the replica.
pub const GATHER: Duration = Duration::from_millis(5);
/// After a failed round trip, the next comes this much later.
const RETRY: Duration = Duration::from_millis(250);

/// What one answer has not appended yet.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<Pending>,
    /// The publisher's wake-up, shared by every outbox of the replica.
    ready: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Pending {
    frames: Vec<(Bytes, String)>,
    end: Option<&'static str>,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A vendor frame and where events start in it (`offset:number,…`).
    pub fn frame(&self, frame: Bytes, starts: String) {
        let mut p = self.lock();
        if p.end.is_none() {
            p.frames.push((frame, starts));
        }
        drop(p);
        self.ready.notify_one();
    }

    /// The answer ended (`done`, `failed`, `cancelled`) or stopped being resumable (`gone`): the last entry.
    pub fn end(&self, how: &'static str) {
        self.lock().end.get_or_insert(how);
        self.ready.notify_one();
    }

    fn take(&self) -> (Vec<(Bytes, String)>, Option<&'static str>) {
        let mut p = self.lock();
        (std::mem::take(&mut p.frames), p.end)
    }

    /// A batch that did not reach the store goes back in front of what came since.
    fn restore(&self, mut frames: Vec<(Bytes, String)>) {
        let mut p = self.lock();
        frames.append(&mut p.frames);
        p.frames = frames;
    }
}

/// The answers this replica appends to the store.
#[derive(Debug, Default)]
pub struct Publishing {
    answers: Mutex<Vec<Publication>>,
    ready: Arc<Notify>,
    running: AtomicBool,
}

#[derive(Debug, Clone)]
struct Publication {
    log: Arc<StreamLog>,
    outbox: Arc<Outbox>,
    route: Arc<str>,
}

impl Publishing {
    /// An outbox for a new answer (its frames go out once it is [`Publishing::add`]ed).
    pub fn outbox(&self) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::default(),
            ready: self.ready.clone(),
        })
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Vec<Publication>> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Appends `log`'s frames (through `outbox`) to the store from now on; starts the replica's publisher on `runtime`
/// the first time.
pub fn add(
    shared: &Arc<Shared>,
    log: Arc<StreamLog>,
    outbox: Arc<Outbox>,
    route: Arc<str>,
    runtime: &tokio::runtime::Handle,
) {
    let publishing = &shared.publishing;
    publishing
        .answers()
        .push(Publication { log, outbox, route });
    if !publishing.running.swap(true, Ordering::AcqRel) {
        runtime.spawn(run(shared.clone()));
    }
    publishing.ready.notify_one();
}

/// One answer's part of a round trip.
struct Batch {
    answer: Publication,
    frames: Vec<(Bytes, String)>,
    end: Option<&'static str>,
}

/// The replica's publisher: gathers every answer's new frames for [`GATHER`], appends them in one round trip, and
/// says every answer's owner is alive at least every [`HEARTBEAT`].
async fn run(shared: Arc<Shared>) {
    let publishing = &shared.publishing;
    let mut beat_at = Instant::now();
    loop {
        tokio::select! {
            () = publishing.ready.notified() => tokio::time::sleep(GATHER).await,
            () = tokio::time::sleep_until(beat_at) => {}
        }
        let now = Instant::now();
        let beat = now >= beat_at;
        if beat {
            beat_at = now + HEARTBEAT;
        }
        let answers = publishing.answers().clone();
        let batches: Vec<Batch> = answers
            .into_iter()
            .filter_map(|answer| {
                let (frames, end) = answer.outbox.take();
                let due = beat || !frames.is_empty() || end.is_some();
                due.then_some(Batch {
                    answer,
                    frames,
                    end,
                })
            })
            .collect();
        if batches.is_empty() {
            continue;
        }
        match append(&shared, &batches).await {
            Ok(replies) => {
                let now = Instant::now();
                for (b, (stop, followers)) in batches.iter().zip(replies) {
                    if stop {
                        b.answer.log.stop();
                    }
                    if followers {
                        b.answer.log.followed_elsewhere(now + OWNER_TTL);
                    }
                }
                let ended: Vec<&Arc<StreamLog>> = batches
                    .iter()
                    .filter(|b| b.end.is_some())
                    .map(|b| &b.answer.log)
                    .collect();
                publishing
                    .answers()
                    .retain(|a| !ended.iter().any(|l| Arc::ptr_eq(l, &a.log)));
            }
            Err(e) => {
                shared.store.failed(&e);
                let now = Instant::now();
                for b in batches {
                    b.answer.outbox.restore(b.frames);
                    if b.end.is_some() && b.answer.log.is_over(now) {
                        // Over, and nobody waits for it: given up rather than retried forever.
                        let log = b.answer.log;
                        publishing.answers().retain(|a| !Arc::ptr_eq(&log, &a.log));
                    }
                }
                tokio::time::sleep(RETRY).await;
                publishing.ready.notify_one();
            }
        }
    }
}

/// One round trip: every batch's script call (a pipeline; on a Cluster, concurrent calls). Per batch: {stop asked,
/// followed elsewhere}.
async fn append(
    shared: &Shared,
    batches: &[Batch],
) -> Result<Vec<(bool, bool)>, crate::limit::store::StoreError> {
    let invocations: Vec<redis::ScriptInvocation<'_>> =
        batches.iter().map(|b| invocation(shared, b)).collect();
    let store = &shared.store;
    let replies: Vec<(i64, i64)> = if store.is_cluster() {
        let calls = invocations.iter().map(|inv| store.run::<(i64, i64)>(inv));
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?
    } else {
        let mut pipe = redis::pipe();
        // The script is loaded first in every round trip: a store that restarted empty does not fail it.
        pipe.load_script(&shared.append).ignore();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let values: Vec<Value> = store.run_pipeline(&pipe).await?;
        values
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()
            .map_err(|_| crate::limit::store::StoreError::Reply)?
    };
    Ok(replies.into_iter().map(|(s, f)| (s == 1, f == 1)).collect())
}

/// One answer's script call: its keys, its frames, its end.
fn invocation<'a>(shared: &'a Shared, b: &'a Batch) -> redis::ScriptInvocation<'a> {
    let log = &b.answer.log;
    let mut inv = shared.append.prepare_invoke();
    for k in shared.keys(log.id()) {
        inv.key(k);
    }
    inv.arg(millis(log.window() * 2))
        .arg(millis(OWNER_TTL))
        .arg(log.tenant())
        .arg(&*b.answer.route)
        .arg(b.end.unwrap_or("live"))
        .arg(b.frames.len());
    for (d, e) in &b.frames {
        inv.arg(&d[..]).arg(e);
    }
    inv
}
