//! The owner's side of answers shared through the store: what each answer has not appended yet ([`Outbox`]), and
//! the one task per replica (`run`) that appends every answer's new frames together, in one pipeline of script
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
/// How often an answer with no client on this replica asks the store whether one follows it elsewhere.
const ALONE_BEAT: Duration = Duration::from_millis(50);
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
    /// Its meta and owner keys are in the store (its first round trip went through).
    announced: Arc<AtomicBool>,
}

impl Publishing {
    /// An outbox for a new answer (its frames go out once it is added: [`add`]).
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
    publishing.answers().push(Publication {
        log,
        outbox,
        route,
        announced: Arc::default(),
    });
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
    /// The state call goes too: first round trip, heartbeat, or end.
    state: bool,
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
        let mut any_alone = false;
        let batches: Vec<Batch> = answers
            .into_iter()
            .filter_map(|answer| {
                let (frames, end) = answer.outbox.take();
                let alone = answer.log.alone();
                any_alone |= alone;
                let state =
                    beat || alone || end.is_some() || !answer.announced.load(Ordering::Acquire);
                (state || !frames.is_empty()).then_some(Batch {
                    answer,
                    frames,
                    end,
                    state,
                })
            })
            .collect();
        if any_alone {
            // An answer whose client left hears of a client following it on another replica within this, not a
            // heartbeat: its window may be shorter than a second.
            beat_at = beat_at.min(now + ALONE_BEAT);
        }
        if batches.is_empty() {
            continue;
        }
        match append(&shared, &batches).await {
            Ok(replies) => {
                let now = Instant::now();
                for (b, (stop, followers)) in batches.iter().zip(replies) {
                    b.answer.announced.store(true, Ordering::Release);
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

/// One round trip (a pipeline; on a Cluster, one pipeline per answer, concurrently): per answer, its new frames
/// as one stream entry (`XADD`), then, when due, its state call. Per batch: {stop asked, followed elsewhere}
/// (both false without a state call).
async fn append(
    shared: &Shared,
    batches: &[Batch],
) -> Result<Vec<(bool, bool)>, crate::limit::store::StoreError> {
    let invocations: Vec<Option<redis::ScriptInvocation<'_>>> = batches
        .iter()
        .map(|b| b.state.then(|| state_call(shared, b)))
        .collect();
    let store = &shared.store;
    let add = |pipe: &mut redis::Pipeline, b: &Batch, inv: &Option<redis::ScriptInvocation<'_>>| {
        if let Some((d, e)) = coalesce(&b.frames) {
            let log = shared.keys(b.answer.log.id());
            pipe.cmd("XADD")
                .arg(&log[0])
                .arg("*")
                .arg("d")
                .arg(&d[..])
                .arg("e")
                .arg(e)
                .ignore();
        }
        if let Some(inv) = inv {
            pipe.invoke_script(inv);
        }
    };
    let replies: Vec<Option<(i64, i64)>> = if store.is_cluster() {
        let calls = batches.iter().zip(&invocations).map(|(b, inv)| {
            let mut pipe = redis::pipe();
            if inv.is_some() {
                pipe.load_script(&shared.append).ignore();
            }
            add(&mut pipe, b, inv);
            async move {
                let values: Vec<Value> = store.run_pipeline(&pipe).await?;
                Ok::<_, crate::limit::store::StoreError>(values.into_iter().next())
            }
        });
        let values = futures_util::future::join_all(calls).await;
        values
            .into_iter()
            .map(|v| v.map(|v| v.and_then(|v| redis::from_redis_value(v).ok())))
            .collect::<Result<_, _>>()?
    } else {
        let mut pipe = redis::pipe();
        // The script is loaded first in every round trip with a state call: a store that restarted empty does not
        // fail it.
        if invocations.iter().any(Option::is_some) {
            pipe.load_script(&shared.append).ignore();
        }
        for (b, inv) in batches.iter().zip(&invocations) {
            add(&mut pipe, b, inv);
        }
        let mut values = store.run_pipeline::<Vec<Value>>(&pipe).await?.into_iter();
        let mut replies = Vec::with_capacity(batches.len());
        for inv in &invocations {
            replies.push(match inv {
                Some(_) => {
                    let v = values
                        .next()
                        .ok_or(crate::limit::store::StoreError::Reply)?;
                    Some(
                        redis::from_redis_value(v)
                            .map_err(|_| crate::limit::store::StoreError::Reply)?,
                    )
                }
                None => None,
            });
        }
        replies
    };
    Ok(replies
        .into_iter()
        .map(|r| r.map_or((false, false), |(s, f)| (s == 1, f == 1)))
        .collect())
}

/// An answer's new frames as one entry: their bytes end to end, and where events start in them.
fn coalesce(frames: &[(Bytes, String)]) -> Option<(Bytes, String)> {
    match frames {
        [] => None,
        [(d, e)] => Some((d.clone(), e.clone())),
        _ => {
            let mut d = bytes::BytesMut::with_capacity(frames.iter().map(|(d, _)| d.len()).sum());
            let mut e = String::new();
            for (frame, starts) in frames {
                for cut in starts.split(',').filter(|c| !c.is_empty()) {
                    let Some((off, seq)) = cut.split_once(':') else {
                        continue;
                    };
                    let off = off.parse::<usize>().unwrap_or(0) + d.len();
                    if !e.is_empty() {
                        e.push(',');
                    }
                    e.push_str(&format!("{off}:{seq}"));
                }
                d.extend_from_slice(frame);
            }
            Some((d.freeze(), e))
        }
    }
}

/// One answer's state call: its meta, its owner alive (or gone at the end), its keys' time bound, its end entry.
fn state_call<'a>(shared: &'a Shared, b: &'a Batch) -> redis::ScriptInvocation<'a> {
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
        .arg(0);
    inv
}
