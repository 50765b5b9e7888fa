//! A client's view of a resumable answer: from its place in the [`StreamLog`] on, each event preceded by the
//! relay's `id: <stream>:<seq>` line (a small frame of its own; the vendor's bytes are the kept `Bytes`, unchanged).
//!
//! The client whose request started the answer reads the vendor itself while it is connected ([`Follower::driving`]:
//! it polls the tapped body in its own `poll_frame`, pushes each frame into the log and sends it on, one task as
//! for any stream). When it leaves before the end, the tapped body is handed to a task ([`super::produce`]) that
//! reads on for the window. Other followers (resumes) only read the log, woken when it grows.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::fmt::Write;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::time::Instant;

use super::Streams;
use super::log::{BACKLOG, LogEnd, State, StreamLog, keep, trim, wake_all};

/// A follower's body error (the answer was cancelled, or failed outside an event stream).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The tapped vendor body, boxed so a follower can own it whatever its type.
pub type Vendor = UnsyncBoxBody<Bytes, BoxError>;

/// One client following the answer.
#[derive(Debug)]
pub struct Follower {
    log: Arc<StreamLog>,
    slot: usize,
    /// The vendor's tapped body while this follower reads it (the first client, connected), and where the answer
    /// is registered (for the task that takes over).
    drive: Option<(Vendor, Arc<Streams>)>,
    /// Where this follower writes its `id:` lines, [`ID_LINES`] bytes at a time: one allocation per few dozen
    /// events, not one per event.
    ids: BytesMut,
}

/// The block the `id:` lines are written into (each line ~45 bytes).
const ID_LINES: usize = 1024;

/// What the log has for a follower now.
enum Next {
    Frame(Bytes),
    End(Option<Result<Frame<Bytes>, BoxError>>),
    /// Nothing yet; the follower's waker is registered.
    Wait,
    /// Nothing yet, and this follower reads the vendor (its waker is registered too).
    Read,
    /// A client asked to stop the answer: drop the vendor's body.
    Stop,
}

impl Follower {
    pub(super) fn new(log: Arc<StreamLog>, slot: usize) -> Self {
        Self {
            log,
            slot,
            drive: None,
            ids: BytesMut::new(),
        }
    }

    /// This follower reads the vendor's `body` itself while it is connected.
    pub fn driving(mut self, body: Vendor, streams: Arc<Streams>) -> Self {
        self.drive = Some((body, streams));
        self
    }

    fn next(&mut self, cx: &mut Context<'_>) -> Next {
        let log = &self.log;
        let mut s = log.lock();
        let s = &mut *s;
        loop {
            let Some(Some(place)) = s.followers.get_mut(self.slot) else {
                return Next::End(None);
            };
            let at = place.at;
            let Some(entry) = at
                .checked_sub(s.first)
                .and_then(|i| s.entries.get(i as usize))
            else {
                return at_the_end(s, self.slot, self.drive.is_some(), cx);
            };
            place.at += 1;
            let frame = match entry.seq {
                Some(seq) => {
                    if self.ids.capacity() - self.ids.len() < ID_LINES / 8 {
                        self.ids.reserve(ID_LINES);
                    }
                    let _ = writeln!(self.ids, "id: {}:{seq}", log.id);
                    self.ids.split().freeze()
                }
                None if entry.bytes.is_empty() => continue,
                None => entry.bytes.clone(),
            };
            if !s.resumable {
                trim(s);
                // A follower that reads the vendor may wait for this one (the backlog bound).
                wake_all(s);
                log.changed.notify_one();
            } else if at >= s.kept {
                keep(s, at + 1);
            }
            return Next::Frame(frame);
        }
    }

    /// The vendor's body ended or failed, or was dropped (`stopped`): the answer ends, and is kept for the window.
    fn ended(&mut self, end: LogEnd, stopped: bool) {
        if let Some((body, streams)) = self.drive.take() {
            drop(body);
            if stopped {
                crate::metrics::resume_detached("stopped");
            }
            self.log.end(end);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(super::produce::retain(self.log.clone(), streams));
            }
        }
    }
}

/// A follower at the end of the log: the answer's end, or wait for more (reading the vendor if it drives).
fn at_the_end(s: &mut State, slot: usize, drives: bool, cx: &mut Context<'_>) -> Next {
    if s.forgotten && !matches!(s.end, Some(LogEnd::Done | LogEnd::Failed)) {
        return Next::End(Some(Err("the answer was cancelled".into())));
    }
    match s.end {
        Some(LogEnd::Done) => return Next::End(None),
        Some(LogEnd::Failed) => return Next::End(Some(Err("the vendor's body failed".into()))),
        Some(LogEnd::Cancelled) => return Next::End(Some(Err("the answer was cancelled".into()))),
        None => {}
    }
    if let Some(Some(place)) = s.followers.get_mut(slot)
        && !place
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
    {
        place.waker = Some(cx.waker().clone());
    }
    if !drives {
        return Next::Wait;
    }
    if s.stopped {
        return Next::Stop;
    }
    // Past `max_bytes`, a slower follower holds what it has not read: read on only within the backlog bound.
    if !s.resumable && s.held > BACKLOG {
        return Next::Wait;
    }
    Next::Read
}

impl Body for Follower {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.next(cx) {
                Next::Frame(frame) => return Poll::Ready(Some(Ok(Frame::data(frame)))),
                Next::End(end) => return Poll::Ready(end),
                Next::Wait => return Poll::Pending,
                Next::Stop => this.ended(LogEnd::Cancelled, true),
                Next::Read => {
                    let Some((body, _)) = this.drive.as_mut() else {
                        return Poll::Pending;
                    };
                    match Pin::new(body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data() {
                                this.log.push_from(this.slot, data);
                            }
                        }
                        Poll::Ready(Some(Err(_))) => this.ended(LogEnd::Failed, false),
                        Poll::Ready(None) => this.ended(LogEnd::Done, false),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for Follower {
    /// The client left. If it was reading the vendor, a task reads on for the window (or cancels at once when the
    /// answer is not resumable: [`StreamLog::step`]).
    fn drop(&mut self) {
        let mut s = self.log.lock();
        if let Some(slot) = s.followers.get_mut(self.slot)
            && slot.take().is_some()
        {
            s.attached -= 1;
            if s.attached == 0 {
                s.alone_since = Some(Instant::now());
            }
            if !s.resumable {
                trim(&mut s);
                wake_all(&mut s);
            }
        }
        drop(s);
        self.log.changed.notify_one();
        if let Some((body, streams)) = self.drive.take() {
            let read_on = super::produce::produce(self.log.clone(), body, streams);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(read_on);
            }
        }
    }
}
