//! The one tap on the response body: forwards upstream frames unchanged, observes them, owns the stream's timers,
//! and reports the stream's end exactly once, through a callback (as linkerd's `body-eos` does).
//!
//! [`TapBody`] hands each upstream `Bytes` frame to hyper as it is (no copy, no re-framing, no buffer). Its
//! observer looks at `&[u8]`: bytes, frames, first byte, the event scanner (`relay_wire::sse`), the bounded audit
//! text ([`crate::text`]), the vendor's usage and the answer's estimated tokens ([`crate::usage`]). When the stream ends, however it ends, the tap calls its [`OnEnd`] once with an [`End`]
//! and what it [`Seen`]; it knows nothing about who listens (the record, the stream's permit: [`crate::stack`]
//! wires them).
//!
//! Timers ([`timers`]), all lazy (one `Sleep`, moved only when it must fire earlier, never per frame): first byte
//! (from the request's start until the first body frame), idle (between frames), total (a generous backstop), and
//! keep-alive comments (`: keep-alive`) while the upstream is silent, sent only at event boundaries so they never
//! split an upstream event. The drain token (graceful shutdown) ends the stream too.
//!
//! Failures after the head was sent cannot change the status ([`failure`]): on an event stream the client gets one
//! `event: error` whose `data` names the kind and the trace id (after a blank line when an event was half-sent),
//! then a clean end. EOF without the route's terminal line, or in the middle of an event, is a truncation. The
//! relay never invents a terminal `[DONE]`. A non-event-stream body just ends with an error (hyper aborts it).
//!
//! Client disconnect, decided here: **cancel the upstream**. hyper drops the response body, this tap's `Drop`
//! reports [`End::Cancelled`], and the upstream body it owns is dropped with it, which closes the upstream
//! connection so the vendor stops generating (and billing). Nothing else holds the upstream body: no spawned task,
//! no channel. The answer is charged what it used so far: the vendor's usage when it came, else an estimate of
//! the text relayed ([`crate::usage::estimate`]); tokens generated but not yet relayed are not counted.

pub mod failure;
pub mod hide;
pub mod timers;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

pub use crate::outcome::{End, Failure, ReadFailure, Seen};
pub use failure::ErrorShape;
pub use timers::Timers;

use crate::flushed::Flushed;
use crate::metrics::Buckets;
use crate::shutdown::Watch;
use crate::text::AuditText;
use crate::usage::UsageScanner;
use crate::usage::estimate::AnswerTokens;
use hide::HideUsage;
use relay_wire::sse::EventScanner;
use timers::Due;

/// What a body that is not an event stream may end with (the same type as [`crate::error::BoxError`]; named here
/// so the tap needs nothing from the error stage, which gathers the stages' errors, the resume stage's among them).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Seen {
    /// The connection was cut with `got` body bytes in the client's socket (`None`: not known): the vendor bytes
    /// the client got, counting the relay's own keep-alive comments as delivered. Events, text and tokens stay what
    /// was relayed.
    pub fn cut(&mut self, got: Option<u64>) {
        if let Some(got) = got {
            let own = self.ping_bytes;
            self.bytes = self
                .bytes
                .min(got.saturating_sub(own).saturating_add(self.hidden));
        }
    }
}

/// Called once when a stream ends, however it ends (complete, failed, or dropped).
pub trait OnEnd: Send + Unpin + 'static {
    fn on_end(self, end: End, seen: Seen);
}

impl<F: FnOnce(End, Seen) + Send + Unpin + 'static> OnEnd for F {
    fn on_end(self, end: End, seen: Seen) {
        self(end, seen)
    }
}

/// Frames yielded but not yet known to be written; more (a client that reads nothing) go unmeasured.
const UNWRITTEN: usize = 16;

/// The relay-added delay of each vendor frame: from the moment the tap received it from the vendor connection to
/// the moment the client's connection had handed it to the socket (the first [`Flushed`] mark after it). It
/// includes the relay's own work and any wait for a client socket that accepts nothing (backpressure); it does not
/// include the vendor's network, nor the client's.
pub struct AddedDelay {
    flushed: Arc<Flushed>,
    histogram: Arc<Buckets>,
    unwritten: [Instant; UNWRITTEN],
    len: usize,
}

impl AddedDelay {
    pub fn new(flushed: Arc<Flushed>, histogram: Arc<Buckets>) -> Self {
        Self {
            flushed,
            histogram,
            unwritten: [Instant::now(); UNWRITTEN],
            len: 0,
        }
    }

    /// A frame received at `at` was handed to the client's connection.
    fn yielded(&mut self, at: Instant) {
        self.settle();
        if self.len == UNWRITTEN {
            self.unwritten.copy_within(1.., 0);
            self.len -= 1;
        }
        self.unwritten[self.len] = at;
        self.len += 1;
    }

    /// Records the frames the connection has written since.
    fn settle(&mut self) {
        let Some(written) = self.flushed.last().filter(|_| self.len > 0) else {
            return;
        };
        // Strictly before: a write that completed at the very instant a frame arrived cannot have carried it.
        let done = self.unwritten[..self.len]
            .iter()
            .take_while(|t| **t < written)
            .count();
        for t in &self.unwritten[..done] {
            self.histogram.record(written.duration_since(*t));
        }
        self.unwritten.copy_within(done..self.len, 0);
        self.len -= done;
    }
}

/// Everything a tap needs besides the upstream body.
pub struct TapParts<E> {
    pub timers: Timers,
    /// Present when the body is an event stream (keep-alives, error events, truncation need it).
    pub scanner: Option<EventScanner>,
    /// Cap of the audit text, or `None` for no text.
    pub text_max: Option<usize>,
    /// Cancelled when the shutdown grace period is over.
    pub drain: CancellationToken,
    /// Named in error events.
    pub trace_id: Arc<str>,
    /// The vendor's error shape, for error events ([`failure`]).
    pub error_shape: ErrorShape,
    /// Records the time between two upstream frames.
    pub chunk_gap: Option<Arc<Buckets>>,
    /// Records the relay-added delay of each frame.
    pub added_delay: Option<AddedDelay>,
    /// Drop the usage-only chunk ([`hide`]): the relay asked for usage on the client's behalf. Event streams only.
    pub hide_usage: bool,
    /// Reads the vendor's usage as its dialect reports it (and, for Gemini, the end of the answer in the data).
    pub usage: UsageScanner,
    pub on_end: E,
}

/// Watches frames go by.
#[derive(Debug)]
struct Observer {
    seen: Seen,
    text: Option<AuditText>,
    scanner: Option<EventScanner>,
    /// The vendor's usage, in an event stream's last events or a JSON answer's body alike.
    usage: UsageScanner,
    /// The answer's text so far, in tokens, for an answer that ends without usage.
    answer: AnswerTokens,
}

impl Observer {
    fn observe(&mut self, data: &[u8], now: Instant) -> Result<(), relay_wire::sse::EventTooLarge> {
        let seen = &mut self.seen;
        if seen.first_byte.is_none() && !data.is_empty() {
            seen.first_byte = Some(now);
        }
        seen.bytes += data.len() as u64;
        seen.frames += 1;
        if let Some(t) = self.text.as_mut() {
            t.push(data);
        }
        self.usage.feed(data);
        self.answer.feed(data);
        match self.scanner.as_mut() {
            Some(s) => s.feed(data),
            None => Ok(()),
        }
    }

    fn at_boundary(&self) -> bool {
        self.scanner.as_ref().is_some_and(EventScanner::at_boundary)
    }

    fn into_seen(self) -> Seen {
        let mut seen = self.seen;
        seen.events = self.scanner.as_ref().map(EventScanner::events);
        seen.text = self.text.map(AuditText::finish);
        seen.tokens = self.usage.tokens();
        seen.answer_tokens = self.answer.tokens();
        seen
    }
}

/// What [`TapBody`]'s `poll_frame` answers.
type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// The upstream body, wrapped. Owns the upstream body: dropping this drops (cancels) the upstream.
pub struct TapBody<B, E: OnEnd> {
    inner: B,
    /// Both present until the stream has ended (the callback fired).
    live: Option<(Observer, E)>,
    timers: Timers,
    trace_id: Arc<str>,
    error_shape: ErrorShape,
    /// Last upstream data frame (idle timer) and last byte sent either way (keep-alive timer).
    last_frame: Option<Instant>,
    last_activity: Instant,
    sleep: Pin<Box<Sleep>>,
    drain: Watch,
    /// A keep-alive comment or error event waiting to go out (after `ready`).
    outbox: Option<Bytes>,
    /// With `hide`: the vendor's bytes that go out next, as slices of its frames.
    hide: Option<HideUsage>,
    ready: VecDeque<Bytes>,
    chunk_gap: Option<Arc<Buckets>>,
    added_delay: Option<AddedDelay>,
}

impl<B, E: OnEnd> TapBody<B, E> {
    pub fn new(inner: B, parts: TapParts<E>) -> Self {
        let scanner_on = parts.scanner.is_some();
        let observer = Observer {
            seen: Seen::default(),
            text: parts.text_max.map(AuditText::new),
            usage: parts.usage,
            answer: AnswerTokens::default(),
            scanner: parts.scanner,
        };
        Self {
            inner,
            live: Some((observer, parts.on_end)),
            timers: parts.timers,
            trace_id: parts.trace_id,
            error_shape: parts.error_shape,
            last_frame: None,
            last_activity: Instant::now(),
            sleep: Box::pin(tokio::time::sleep_until(parts.timers.first_byte_deadline)),
            drain: Watch::new(parts.drain),
            outbox: None,
            hide: (parts.hide_usage && scanner_on).then(HideUsage::new),
            ready: VecDeque::new(),
            chunk_gap: parts.chunk_gap,
            added_delay: parts.added_delay,
        }
    }

    /// Reports the end, once.
    fn finish(&mut self, end: End) {
        if let Some(d) = self.added_delay.as_mut() {
            d.settle();
        }
        if let Some((observer, on_end)) = self.live.take() {
            let mut seen = observer.into_seen();
            seen.hidden = self.hide.as_ref().map_or(0, HideUsage::hidden);
            on_end.on_end(end, seen);
        }
    }

    /// Ends the stream with `failure`: an error event on event streams, an error otherwise.
    fn fail(&mut self, failure: Failure, detail: String) -> Polled {
        let event = self.live.as_ref().and_then(|(o, _)| {
            o.scanner.as_ref()?;
            Some(failure::error_event(
                failure,
                self.error_shape,
                &self.trace_id,
                o.at_boundary(),
            ))
        });
        self.finish(End::Failed(failure, detail));
        match event {
            Some(event) => {
                // A half event held back goes out first, as it would have without the hider.
                if let Some(h) = self.hide.as_mut() {
                    h.flush(&mut self.ready);
                }
                self.ready.push_back(event);
                Poll::Ready(self.ready.pop_front().map(|b| Ok(Frame::data(b))))
            }
            None => Poll::Ready(Some(Err(failure.message().into()))),
        }
    }

    /// A vendor data frame, seen before it goes out: the observer scans it, the gap since the last one and the
    /// delay the relay adds are measured. `Err`: the frame breaks the event size limit (the stream fails instead).
    #[inline]
    fn saw(&mut self, data: &Bytes) -> Result<(), String> {
        let now = Instant::now();
        if let Some((observer, _)) = self.live.as_mut() {
            observer.observe(data, now).map_err(|e| e.to_string())?;
        }
        if let (Some(gap), Some(last)) = (&self.chunk_gap, self.last_frame) {
            gap.record(now.duration_since(last));
        }
        self.last_frame = Some(now);
        self.last_activity = now;
        if let Some(d) = self.added_delay.as_mut() {
            d.yielded(now);
        }
        Ok(())
    }

    /// The vendor's body ended: a truncation fails, else the end is reported. `None`: something held back still
    /// goes out (poll again).
    fn upstream_ended(&mut self) -> Option<Polled> {
        let observer = self.live.as_ref().map(|(o, _)| o);
        let scanner = observer.and_then(|o| o.scanner.as_ref());
        // Gemini has no terminal line: its last event carries a `finishReason` (or `blockReason`).
        let no_end = scanner.is_some() && observer.is_some_and(|o| !o.usage.end_seen());
        if scanner.is_some_and(EventScanner::truncated_at_eof) || no_end {
            let detail = "end of body without the terminal event".to_owned();
            return Some(self.fail(Failure::UpstreamTruncated, detail));
        }
        self.finish(End::Complete);
        // Nothing is held at a clean end (an open event is a truncation, above); should anything be, it goes out
        // rather than being lost.
        if let Some(h) = self.hide.as_mut().filter(|h| h.holding()) {
            h.flush(&mut self.ready);
            return None;
        }
        Some(Poll::Ready(None))
    }

    /// The vendor has nothing now: the shutdown drain, the timeouts, a keepalive due. `None`: poll again (a ping
    /// is queued, or the timer has fired already).
    fn quiet(&mut self, cx: &mut Context<'_>) -> Option<Polled> {
        if Pin::new(&mut self.drain).poll(cx).is_ready() {
            let detail = "shutdown grace period over".to_owned();
            return Some(self.fail(Failure::Shutdown, detail));
        }
        let now = Instant::now();
        let at_boundary = self.live.as_ref().is_some_and(|(o, _)| o.at_boundary());
        match self
            .timers
            .due(now, self.last_frame, self.last_activity, at_boundary)
        {
            Due::Fail(f) => Some(self.fail(f, f.message().to_owned())),
            Due::Ping => {
                let ping = self.error_shape.keepalive();
                self.outbox = Some(Bytes::from_static(ping));
                self.last_activity = now;
                if let Some((observer, _)) = self.live.as_mut() {
                    observer.seen.pings += 1;
                    observer.seen.ping_bytes += ping.len() as u64;
                }
                None
            }
            Due::Wait(at) => {
                // Re-arm only when the timer must fire earlier, or has fired. A deadline that moved later (every
                // frame pushes the idle deadline back) is left alone: the timer fires early once and is re-armed
                // then, instead of being moved in the timer wheel on every frame.
                let deadline = self.sleep.deadline();
                if at < deadline || deadline <= now {
                    self.sleep.as_mut().reset(at);
                }
                self.sleep
                    .as_mut()
                    .poll(cx)
                    .is_pending()
                    .then_some(Poll::Pending)
            }
        }
    }
}

impl<B, E> Body for TapBody<B, E>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: ReadFailure,
    E: OnEnd,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(d) = this.added_delay.as_mut() {
            d.settle();
        }
        loop {
            if let Some(out) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if let Some(out) = this.outbox.take() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if this.live.is_none() {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref()
                        && let Err(detail) = this.saw(data)
                    {
                        // The oversized event is not forwarded: the error event ends what was sent so far.
                        return this.fail(Failure::UpstreamProtocol, detail);
                    }
                    if let Some(hide) = this.hide.as_mut() {
                        match frame.into_data() {
                            Ok(data) => hide.frame(data, &mut this.ready),
                            Err(other) => return Poll::Ready(Some(Ok(other))),
                        }
                        continue;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => return this.fail(e.failure(), e.to_string()),
                Poll::Ready(None) => match this.upstream_ended() {
                    Some(end) => return end,
                    None => continue,
                },
                Poll::Pending => {}
            }
            if let Some(polled) = this.quiet(cx) {
                return polled;
            }
        }
    }

    /// Ends only once the end was reported, so hyper always polls to the upstream's own end (a `complete`
    /// record) instead of dropping a body it believes finished (which would read as cancelled).
    fn is_end_stream(&self) -> bool {
        self.live.is_none() && self.outbox.is_none() && self.ready.is_empty()
    }

    /// Unknown length: the body may gain keep-alive comments or an error event, so it is always sent chunked.
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<B, E: OnEnd> Drop for TapBody<B, E> {
    fn drop(&mut self) {
        self.finish(End::Cancelled);
    }
}

#[cfg(test)]
mod tests;
