//! One resumable answer, kept: the vendor's frames as they came, split at event starts (zero-copy `Bytes` slices),
//! each event numbered; and the clients following it ([`Follower`]), each with its own place in it.
//!
//! The producer ([`super::produce`]) pushes frames and asks [`StreamLog::step`] what to do next: read on, wait for a
//! slow client, or cancel the vendor call (no client for the whole window, or none at all once the answer is over
//! `max_bytes`). Followers read from their place and are woken when more comes. Every bound is here: at most
//! `max_bytes` kept for a resumable answer; past it the answer is no longer resumable, what every follower has read
//! is dropped, and the producer reads on only while the followers are less than [`BACKLOG`] bytes behind.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use relay_wire::sse::EventStarts;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use super::follow::Follower;
use super::publish::Outbox;
use crate::config::Resume;

/// How far behind its followers a non-resumable answer may be read (the vendor is paused past this).
pub const BACKLOG: usize = 64 << 10;

/// The kept copies are written into buffers of this size (or the frame's, when larger).
const ARENA_CHUNK: usize = 4096;

/// What the producer should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read the next frame; with no follower, until the given moment (the window's end).
    Read(Option<Instant>),
    /// Wait for the followers to read (or leave).
    Wait,
    /// Cancel the vendor call: no follower within the window (`expired`), none when over `max_bytes`
    /// (`not_resumable`), or a client asked (`stopped`).
    Cancel(&'static str),
}

/// After the answer's end, what keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retain {
    /// Followers are reading it.
    Followed,
    /// Nobody follows: kept until then for a client that comes back.
    Until(Instant),
    /// Time's up.
    Over,
}

/// How the answer ended, for its followers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEnd {
    /// The vendor's body ended (the relay's error event, if any, is in the log).
    Done,
    /// The body failed outside an event stream (followers fail too).
    Failed,
    /// The vendor call was cancelled: nobody followed within the window, or a client stopped it.
    Cancelled,
}

/// Why a client cannot follow this answer from where it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `max_bytes`, cancelled or forgotten.
    Gone,
    /// The client names an event the answer never had.
    AfterTheEnd,
}

#[derive(Debug)]
pub(super) struct Entry {
    /// The event this piece starts, or `None`: it continues the previous one.
    pub(super) seq: Option<u64>,
    pub(super) bytes: Bytes,
}

#[derive(Debug, Default)]
pub(super) struct Place {
    /// Absolute index of the next entry to send.
    pub(super) at: u64,
    pub(super) waker: Option<Waker>,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) entries: VecDeque<Entry>,
    /// Absolute index of `entries[0]`.
    pub(super) first: u64,
    pub(super) held: usize,
    pub(super) total: u64,
    /// The next event's number (the first is 1).
    pub(super) next_seq: u64,
    pub(super) starts: EventStarts,
    /// Where the last frame was split (kept to reuse its allocation).
    pub(super) cuts: Vec<usize>,
    /// Entries before this absolute index hold copies in `arena`, not the vendor connection's buffers.
    pub(super) kept: u64,
    /// Where those copies are written, [`ARENA_CHUNK`] at a time.
    pub(super) arena: BytesMut,
    pub(super) resumable: bool,
    pub(super) end: Option<LogEnd>,
    /// Kept no longer: its entries are dropped, resumes are told it is gone.
    pub(super) forgotten: bool,
    /// One slot per follower that ever came (`None` once it left).
    pub(super) followers: Vec<Option<Place>>,
    pub(super) attached: usize,
    /// Since when no follower has been attached.
    pub(super) alone_since: Option<Instant>,
    pub(super) resumes: u32,
    /// A client asked to stop the answer.
    pub(super) stopped: bool,
    /// A client follows the answer on another replica (through the store), as of its last word, until then.
    pub(super) elsewhere_until: Option<Instant>,
}

/// One answer's bytes and followers, shared by its producer and every client that follows it.
#[derive(Debug)]
pub struct StreamLog {
    pub(super) id: Arc<str>,
    tenant: Arc<str>,
    resume: Resume,
    state: Mutex<State>,
    /// Told when a follower reads, comes or leaves (the producer is the one waiter).
    pub(super) changed: Notify,
    /// With a store: what goes to the store's copy of the answer ([`super::shared`]).
    outbox: Option<Arc<Outbox>>,
}

impl StreamLog {
    pub fn new(
        id: Arc<str>,
        tenant: Arc<str>,
        resume: Resume,
        outbox: Option<Arc<Outbox>>,
    ) -> Self {
        Self {
            id,
            tenant,
            resume,
            state: Mutex::new(State {
                entries: VecDeque::new(),
                first: 0,
                held: 0,
                total: 0,
                next_seq: 1,
                starts: EventStarts::new(),
                cuts: Vec::new(),
                kept: 0,
                arena: BytesMut::new(),
                resumable: true,
                end: None,
                forgotten: false,
                followers: Vec::new(),
                attached: 0,
                alone_since: Some(Instant::now()),
                resumes: 0,
                stopped: false,
                elsewhere_until: None,
            }),
            changed: Notify::new(),
            outbox,
        }
    }

    /// The stream id (32 hex digits).
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Whose answer this is.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn window(&self) -> std::time::Duration {
        self.resume.window
    }

    /// Times a client resumed this answer.
    pub fn resumes(&self) -> u32 {
        self.lock().resumes
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first client, the one whose request started the answer: from the start.
    pub fn first_follower(self: &Arc<Self>) -> Follower {
        let mut s = self.lock();
        let at = s.first;
        self.attach_at(&mut s, at)
    }

    /// A client resuming after event `after` (0: from the start): it gets the events after that one, then follows
    /// the answer live.
    pub fn resume(self: &Arc<Self>, after: u64) -> Result<Follower, Refusal> {
        let mut s = self.lock();
        if !s.resumable || s.forgotten || s.end == Some(LogEnd::Cancelled) {
            return Err(Refusal::Gone);
        }
        if after >= s.next_seq {
            return Err(Refusal::AfterTheEnd);
        }
        let skip = s
            .entries
            .iter()
            .position(|e| e.seq.is_some_and(|n| n > after))
            .unwrap_or(s.entries.len());
        let at = s.first + skip as u64;
        s.resumes += 1;
        Ok(self.attach_at(&mut s, at))
    }

    fn attach_at(self: &Arc<Self>, s: &mut State, at: u64) -> Follower {
        let slot = s.followers.len();
        s.followers.push(Some(Place { at, waker: None }));
        s.attached += 1;
        s.alone_since = None;
        self.changed.notify_one();
        Follower::new(self.clone(), slot)
    }

    /// A frame from the vendor (through the tap): kept, split where events start, and handed to the followers.
    pub fn push(&self, frame: Bytes) {
        self.push_from(usize::MAX, frame);
    }

    /// As [`StreamLog::push`], by the follower in `slot` that reads the vendor itself: it is not woken for it
    /// (it sends the frame next anyway; a wake-up would poll its connection once more per frame).
    pub(super) fn push_from(&self, slot: usize, mut frame: Bytes) {
        let mut s = self.lock();
        let s = &mut *s;
        let len = frame.len();
        let mut cuts = std::mem::take(&mut s.cuts);
        cuts.clear();
        s.starts.feed(&frame, |i| cuts.push(i));
        if let Some(outbox) = self.outbox.as_ref().filter(|_| s.resumable) {
            let mut starts = String::new();
            for (k, i) in cuts.iter().enumerate() {
                use std::fmt::Write;
                let sep = if k == 0 { "" } else { "," };
                let _ = write!(starts, "{sep}{i}:{}", s.next_seq + k as u64);
            }
            outbox.frame(frame.clone(), starts);
        }
        let mut taken = 0;
        for &i in &cuts {
            if i > taken {
                s.entries.push_back(Entry {
                    seq: None,
                    bytes: frame.split_to(i - taken),
                });
                taken = i;
            }
            // An event starts here: an empty entry carries its number (its `id:` line goes out there).
            s.entries.push_back(Entry {
                seq: Some(s.next_seq),
                bytes: Bytes::new(),
            });
            s.next_seq += 1;
        }
        s.cuts = cuts;
        if !frame.is_empty() {
            s.entries.push_back(Entry {
                seq: None,
                bytes: frame,
            });
        }
        s.held += len;
        s.total += len as u64;
        if s.resumable && s.total > self.resume.max_bytes as u64 {
            s.resumable = false;
            if let Some(outbox) = &self.outbox {
                outbox.end("gone");
            }
        }
        if !s.resumable {
            trim(s);
        } else if s.attached == 0 {
            // Nobody sends these now: keep copies right away.
            let end = s.first + s.entries.len() as u64;
            keep(s, end);
        }
        for (i, place) in s.followers.iter_mut().enumerate() {
            if let Some(w) = place
                .as_mut()
                .filter(|_| i != slot)
                .and_then(|p| p.waker.take())
            {
                w.wake();
            }
        }
    }

    /// The answer ended.
    pub fn end(&self, end: LogEnd) {
        if let Some(outbox) = &self.outbox {
            outbox.end(match end {
                LogEnd::Done => "done",
                LogEnd::Failed => "failed",
                LogEnd::Cancelled => "cancelled",
            });
        }
        let mut s = self.lock();
        s.end = Some(end);
        if end == LogEnd::Cancelled {
            forget(&mut s);
        }
        wake_all(&mut s);
    }

    /// A client asked to stop the answer: the vendor call is cancelled (once the producer sees it), its followers
    /// end. `false`: it had ended already.
    pub fn stop(&self) -> bool {
        let mut s = self.lock();
        if s.end.is_some() {
            return false;
        }
        s.stopped = true;
        // A follower reading the vendor itself ([`Follower::driving`]) waits on its own waker.
        wake_all(&mut s);
        drop(s);
        self.changed.notify_one();
        true
    }

    /// Still being read with no client of this replica following it: whether a client follows it elsewhere decides
    /// whether it goes on (the publisher asks the store often then).
    pub fn alone(&self) -> bool {
        let s = self.lock();
        s.attached == 0 && s.end.is_none()
    }

    /// The vendor call was cancelled (nothing is kept).
    pub fn cancelled(&self) -> bool {
        self.lock().end == Some(LogEnd::Cancelled)
    }

    /// Drops what is kept; a resume from now on is told the answer is gone.
    pub fn forget(&self) {
        forget(&mut self.lock());
    }

    /// What the producer does next, at `now`.
    pub fn step(&self, now: Instant) -> Step {
        let s = self.lock();
        match (s.attached, s.alone_since) {
            _ if s.stopped => Step::Cancel("stopped"),
            (0, _) if !s.resumable => Step::Cancel("not_resumable"),
            (0, Some(since)) => {
                let since = since.max(s.elsewhere_until.unwrap_or(since));
                let until = since + self.resume.window;
                if now >= until {
                    Step::Cancel("expired")
                } else {
                    Step::Read(Some(until))
                }
            }
            _ if !s.resumable && s.held > BACKLOG => Step::Wait,
            _ => Step::Read(None),
        }
    }

    /// After the end: how long the answer is kept.
    pub fn retain(&self, now: Instant) -> Retain {
        let s = self.lock();
        let alone_since = s.alone_since.map(|a| a.max(s.elsewhere_until.unwrap_or(a)));
        match (s.attached, alone_since) {
            (0, Some(since)) if now >= since + self.resume.window => Retain::Over,
            (0, Some(since)) => Retain::Until(since + self.resume.window),
            _ => Retain::Followed,
        }
    }

    /// A client follows the answer on another replica, as the store said, until `until` unless it says so again:
    /// the window starts over from then.
    pub fn followed_elsewhere(&self, until: Instant) {
        self.lock().elsewhere_until = Some(until);
        self.changed.notify_one();
    }

    /// The answer has ended and nobody has followed it for the window.
    pub fn is_over(&self, now: Instant) -> bool {
        let ended = self.lock().end.is_some();
        ended && self.retain(now) == Retain::Over
    }

    /// Waits until a follower comes, reads or leaves (or returns at once if one did since the last wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Copies the entries before absolute index `upto` into the arena, so the answer kept for resumes holds its own
/// bytes (a few KiB) instead of the vendor connection's read buffers (each frame a slice of one, up to tens of KiB
/// pinned per frame). The copy is made once the first follower has handed the frame to its connection, never before
/// it goes out: the vendor's buffers go to the client as they are.
pub(super) fn keep(s: &mut State, upto: u64) {
    let from = s.kept.max(s.first);
    for i in from..upto {
        let Some(e) = s.entries.get_mut((i - s.first) as usize) else {
            break;
        };
        let len = e.bytes.len();
        if len == 0 {
            continue;
        }
        if s.arena.capacity() - s.arena.len() < len {
            s.arena.reserve(len.max(ARENA_CHUNK));
        }
        s.arena.extend_from_slice(&e.bytes);
        e.bytes = s.arena.split().freeze();
    }
    s.kept = s.kept.max(upto);
}

/// Drops what every follower has read (not resumable any more: nobody may come back for it).
pub(super) fn trim(s: &mut State) {
    let keep_from = s
        .followers
        .iter()
        .flatten()
        .map(|p| p.at)
        .min()
        .unwrap_or(s.first + s.entries.len() as u64);
    while s.first < keep_from {
        let Some(e) = s.entries.pop_front() else {
            break;
        };
        s.held -= e.bytes.len();
        s.first += 1;
    }
}

fn forget(s: &mut State) {
    s.forgotten = true;
    s.first += s.entries.len() as u64;
    s.entries = VecDeque::new();
    s.held = 0;
}

pub(super) fn wake_all(s: &mut State) {
    for place in s.followers.iter_mut().flatten() {
        if let Some(w) = place.waker.take() {
            w.wake();
        }
    }
}
