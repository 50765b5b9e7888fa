//! The one tap on the response body: forwards upstream frames unchanged, observes them, and owns the stream's
//! timers and its ending.
//!
//! [`TapBody`] hands each upstream `Bytes` frame to hyper as it is (no copy, no re-framing, no buffer). The
//! [`Observer`] looks at `&[u8]`: bytes, frames, first byte, the event scanner ([`crate::sse`]) and the bounded
//! audit text ([`crate::audit`]). When the stream ends it writes exactly one audit line with an [`End`].
//!
//! Timers, all lazy (one `Sleep`, re-armed only when it fires, never per frame): first byte (from the request's
//! start until the first body frame), idle (between frames), total (a generous backstop), and keep-alive comments
//! (`: keep-alive`) while the upstream is silent, sent only at event boundaries so they never split an upstream
//! event. The drain token (graceful shutdown) ends the stream too.
//!
//! Failures after the head was sent cannot change the status: on an event stream the client gets one
//! `event: error` whose `data` names the kind and the trace id (after a blank line when an event was half-sent),
//! then a clean end. EOF without the route's terminal line, or in the middle of an event, is a truncation. The
//! relay never invents a terminal `[DONE]`. A non-event-stream body just ends with an error (hyper aborts it).
//!
//! Client disconnect, decided here: **cancel the upstream**. hyper drops the response body, this tap's `Drop`
//! records `client_cancelled`, and the upstream body it owns is dropped with it, which closes the upstream
//! connection so the vendor stops generating (and billing). Nothing else holds the upstream body: no spawned task,
//! no channel. Tokens generated but not yet relayed are not counted; the audit line has the bytes relayed so far.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::audit::AuditText;
use crate::rate_limit::StreamPermit;
use crate::server::ConnState;
use crate::sse::EventScanner;

/// Errors a relayed body may end with (only on bodies that are not event streams).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Why a stream failed after its head was sent. `kind()` is the fixed name clients and logs see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    UpstreamReset,
    UpstreamTruncated,
    UpstreamFirstByteTimeout,
    UpstreamIdleTimeout,
    TotalTimeout,
    UpstreamProtocol,
    Shutdown,
}

impl Failure {
    pub fn kind(self) -> &'static str {
        match self {
            Failure::UpstreamReset => "upstream_reset",
            Failure::UpstreamTruncated => "upstream_truncated",
            Failure::UpstreamFirstByteTimeout => "upstream_first_byte_timeout",
            Failure::UpstreamIdleTimeout => "upstream_idle_timeout",
            Failure::TotalTimeout => "stream_total_timeout",
            Failure::UpstreamProtocol => "upstream_protocol",
            Failure::Shutdown => "shutdown",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Failure::UpstreamReset => {
                "the upstream connection failed before the answer was complete"
            }
            Failure::UpstreamTruncated => {
                "the upstream ended the stream before the answer was complete"
            }
            Failure::UpstreamFirstByteTimeout => "the upstream sent no data in time",
            Failure::UpstreamIdleTimeout => "the upstream stopped sending",
            Failure::TotalTimeout => "the stream reached the relay's maximum duration",
            Failure::UpstreamProtocol => "the upstream sent a malformed event stream",
            Failure::Shutdown => "the relay is shutting down; retry the request",
        }
    }
}

/// How a relayed stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The upstream body ended complete and every byte was handed to the client.
    Complete,
    /// The stream failed; the detail is for the log line only.
    Failed(Failure, String),
    /// The client went away (hyper dropped the body) before the end.
    Cancelled { write_timeout: bool },
}

/// Who and what a stream is, for the end-of-stream record.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    pub tenant: Arc<str>,
    pub route: Arc<str>,
    pub trace_id: Arc<str>,
    pub status: u16,
    /// Upstream attempts it took to get this answer (failover).
    pub attempts: usize,
    pub started: Instant,
}

/// The stream's time limits, from the route.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    pub first_byte_deadline: Instant,
    pub idle: Duration,
    pub total_deadline: Instant,
    pub keepalive: Option<Duration>,
}

/// Watches frames go by; consumed by the single end-of-stream record.
#[derive(Debug)]
pub struct Observer {
    info: StreamInfo,
    first_byte: Option<Instant>,
    bytes: u64,
    frames: u64,
    pings: u64,
    audit: Option<AuditText>,
    /// Present when the body is an event stream.
    scanner: Option<EventScanner>,
}

impl Observer {
    /// `audit_max`: cap of the audit text, or `None` for no text; `scanner`: for event streams.
    pub fn new(info: StreamInfo, audit_max: Option<usize>, scanner: Option<EventScanner>) -> Self {
        Self {
            info,
            first_byte: None,
            bytes: 0,
            frames: 0,
            pings: 0,
            audit: audit_max.map(AuditText::new),
            scanner,
        }
    }

    fn observe(&mut self, data: &[u8], now: Instant) -> Result<(), crate::sse::EventTooLarge> {
        if self.first_byte.is_none() && !data.is_empty() {
            self.first_byte = Some(now);
        }
        self.bytes += data.len() as u64;
        self.frames += 1;
        if let Some(a) = self.audit.as_mut() {
            a.push(data);
        }
        match self.scanner.as_mut() {
            Some(s) => s.feed(data),
            None => Ok(()),
        }
    }

    /// The end-of-stream record: one structured log line (warn level when the stream failed).
    fn end(self, end: &End) {
        let i = &self.info;
        let ms = |t: Instant| t.duration_since(i.started).as_secs_f64() * 1000.0;
        let ttfb_ms = self.first_byte.map(ms);
        let duration_ms = ms(Instant::now());
        let (text, text_truncated) = match self.audit {
            Some(a) => {
                let (t, cut) = a.finish();
                (Some(t), cut)
            }
            None => (None, false),
        };
        let (outcome, error) = match end {
            End::Complete => ("complete", None),
            End::Failed(f, detail) => (f.kind(), Some(detail.as_str())),
            End::Cancelled {
                write_timeout: true,
            } => ("client_write_timeout", None),
            End::Cancelled { .. } if self.first_byte.is_none() => {
                ("client_cancelled_before_first_byte", None)
            }
            End::Cancelled { .. } => ("client_cancelled_mid_stream", None),
        };
        let events = self.scanner.as_ref().map(EventScanner::events);
        macro_rules! record {
            ($level:expr) => {
                tracing::event!(
                    target: "ssegate::audit",
                    $level,
                    tenant = %i.tenant,
                    route = %i.route,
                    trace_id = %i.trace_id,
                    status = i.status,
                    outcome,
                    error,
                    attempts = i.attempts,
                    bytes = self.bytes,
                    frames = self.frames,
                    events,
                    pings = self.pings,
                    ttfb_ms,
                    duration_ms,
                    text,
                    text_truncated,
                    "stream ended"
                )
            };
        }
        if matches!(end, End::Failed(..)) {
            record!(tracing::Level::WARN);
        } else {
            record!(tracing::Level::INFO);
        }
    }
}

/// What the timer decided.
enum Due {
    Fail(Failure),
    Ping,
    Wait(Instant),
}

/// The upstream body, wrapped. Owns the upstream body: dropping this drops (cancels) the upstream.
pub struct TapBody<B> {
    inner: B,
    observer: Option<Observer>,
    timers: Timers,
    /// Last upstream data frame (idle timer) and last byte sent either way (keep-alive timer).
    last_frame: Option<Instant>,
    last_activity: Instant,
    sleep: Pin<Box<Sleep>>,
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    /// A keep-alive comment or error event waiting to go out.
    outbox: Option<Bytes>,
    conn: Arc<ConnState>,
    /// Concurrency slots, released when the stream ends.
    _permit: Option<StreamPermit>,
}

/// Everything a tap needs besides the upstream body.
pub struct TapParts {
    pub observer: Observer,
    pub timers: Timers,
    pub drain: tokio_util::sync::CancellationToken,
    pub conn: Arc<ConnState>,
    pub permit: Option<StreamPermit>,
}

impl<B> TapBody<B> {
    pub fn new(inner: B, parts: TapParts) -> Self {
        let now = Instant::now();
        Self {
            inner,
            observer: Some(parts.observer),
            timers: parts.timers,
            last_frame: None,
            last_activity: now,
            sleep: Box::pin(tokio::time::sleep_until(parts.timers.first_byte_deadline)),
            drain: Box::pin(parts.drain.cancelled_owned()),
            outbox: None,
            conn: parts.conn,
            _permit: parts.permit,
        }
    }

    fn finish(&mut self, end: &End) {
        if let Some(o) = self.observer.take() {
            o.end(end);
        }
    }

    /// Ends the stream with `failure`: an error event on event streams, an error otherwise.
    fn fail(
        &mut self,
        failure: Failure,
        detail: String,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let event = self.observer.as_ref().and_then(|o| {
            let scanner = o.scanner.as_ref()?;
            Some(error_event(
                failure,
                &o.info.trace_id,
                scanner.at_boundary(),
            ))
        });
        self.finish(&End::Failed(failure, detail));
        match event {
            Some(event) => Poll::Ready(Some(Ok(Frame::data(event)))),
            None => Poll::Ready(Some(Err(failure.message().into()))),
        }
    }

    /// Which deadline passed, whether a keep-alive is due, or when to look again.
    fn due(&self, now: Instant) -> Due {
        let t = &self.timers;
        if now >= t.total_deadline {
            return Due::Fail(Failure::TotalTimeout);
        }
        let (silence_deadline, silence) = match self.last_frame {
            None => (t.first_byte_deadline, Failure::UpstreamFirstByteTimeout),
            Some(at) => (at + t.idle, Failure::UpstreamIdleTimeout),
        };
        if now >= silence_deadline {
            return Due::Fail(silence);
        }
        let mut wake = silence_deadline.min(t.total_deadline);
        let at_boundary = self
            .observer
            .as_ref()
            .and_then(|o| o.scanner.as_ref())
            .is_some_and(EventScanner::at_boundary);
        if let (Some(every), true) = (t.keepalive, at_boundary) {
            let ping_at = self.last_activity + every;
            if now >= ping_at {
                return Due::Ping;
            }
            wake = wake.min(ping_at);
        }
        Due::Wait(wake)
    }
}

/// The SSE error event for `failure`, preceded by a blank line unless the stream is at an event boundary.
fn error_event(failure: Failure, trace_id: &str, at_boundary: bool) -> Bytes {
    let data = serde_json::json!({
        "kind": failure.kind(),
        "message": failure.message(),
        "trace_id": trace_id,
    });
    let lead = if at_boundary { "" } else { "\n\n" };
    Bytes::from(format!("{lead}event: error\ndata: {data}\n\n"))
}

impl<B> Body for TapBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(out) = this.outbox.take() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            let Some(observer) = this.observer.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let now = Instant::now();
                        if let Err(e) = observer.observe(data, now) {
                            // The oversized event is not forwarded: the error event ends what was sent so far.
                            return this.fail(Failure::UpstreamProtocol, e.to_string());
                        }
                        this.last_frame = Some(now);
                        this.last_activity = now;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    return this.fail(Failure::UpstreamReset, e.to_string());
                }
                Poll::Ready(None) => {
                    if observer
                        .scanner
                        .as_ref()
                        .is_some_and(EventScanner::truncated_at_eof)
                    {
                        let detail = "end of body without the terminal event".to_owned();
                        return this.fail(Failure::UpstreamTruncated, detail);
                    }
                    this.finish(&End::Complete);
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            if this.drain.as_mut().poll(cx).is_ready() {
                return this.fail(Failure::Shutdown, "shutdown grace period over".to_owned());
            }
            let now = Instant::now();
            match this.due(now) {
                Due::Fail(f) => return this.fail(f, f.message().to_owned()),
                Due::Ping => {
                    this.outbox = Some(Bytes::from_static(KEEPALIVE));
                    this.last_activity = now;
                    if let Some(o) = this.observer.as_mut() {
                        o.pings += 1;
                    }
                }
                Due::Wait(at) => {
                    // Re-arm only when the timer must fire earlier, or has fired. A deadline that moved later
                    // (every frame pushes the idle deadline back) is left alone: the timer fires early once and
                    // is re-armed then, instead of being moved in the timer wheel on every frame.
                    let deadline = this.sleep.deadline();
                    if at < deadline || deadline <= now {
                        this.sleep.as_mut().reset(at);
                    }
                    if this.sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Ends only once the observer has fired, so hyper always polls to the upstream's own end (a `complete`
    /// record) instead of dropping a body it believes finished (which would read as cancelled).
    fn is_end_stream(&self) -> bool {
        self.observer.is_none() && self.outbox.is_none()
    }

    /// Unknown length: the body may gain keep-alive comments or an error event, so it is always sent chunked.
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<B> Drop for TapBody<B> {
    fn drop(&mut self) {
        let write_timeout = self.conn.write_timed_out();
        self.finish(&End::Cancelled { write_timeout });
    }
}
