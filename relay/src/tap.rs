//! The one tap on the response body: forwards upstream frames unchanged and observes them on the way.
//!
//! [`TapBody`] hands each upstream `Bytes` frame to hyper as it is (no copy, no re-framing, no buffer); the
//! [`Observer`] looks at `&[u8]` to count bytes and frames, stamp the first byte and feed the bounded audit text.
//! When the stream ends it fires exactly once, with an [`End`]: `Complete`, `Error` or `Cancelled`, and writes the
//! audit line. Future observers (usage, metrics) hang off the same place.
//!
//! Client disconnect, decided here: **cancel the upstream**. When the client goes away hyper drops the response
//! body, this tap's `Drop` records `Cancelled`, and the upstream `Incoming` it owns is dropped with it, which closes
//! the upstream connection, so the vendor stops generating (and billing) within one event. Nothing else holds the
//! upstream body: no spawned task, no channel. The cost is that tokens generated but not yet relayed are never
//! counted; the audit line says `cancelled` with the bytes relayed so far.
//!
//! Mid-stream upstream failure on an event stream: the client gets one `event: error` (after a blank line, so it
//! cannot merge into a half-sent event) and then a clean end. The relay never invents a terminal `[DONE]`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::audit::AuditText;

/// How a relayed stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The upstream body ended and every byte was handed to the client.
    Complete,
    /// The upstream body failed mid-stream (the error's text, for the log line only).
    Error(String),
    /// The client went away (hyper dropped the body) before the end.
    Cancelled,
}

impl End {
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::Error(_) => "upstream_error",
            End::Cancelled => "client_cancelled",
        }
    }
}

/// Who and what a stream is, for the end-of-stream record.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    pub tenant: Arc<str>,
    pub route: Arc<str>,
    pub trace_id: Arc<str>,
    pub status: u16,
    /// The body is an event stream, so a mid-stream failure can be told to the client in-band.
    pub event_stream: bool,
    pub started: Instant,
}

/// Watches frames go by; consumed by the single end-of-stream record.
#[derive(Debug)]
pub struct Observer {
    info: StreamInfo,
    first_byte: Option<Instant>,
    bytes: u64,
    frames: u64,
    audit: Option<AuditText>,
}

impl Observer {
    /// `audit_max`: cap of the audit text in bytes, or `None` to log no text.
    pub fn new(info: StreamInfo, audit_max: Option<usize>) -> Self {
        Self {
            info,
            first_byte: None,
            bytes: 0,
            frames: 0,
            audit: audit_max.map(AuditText::new),
        }
    }

    fn observe(&mut self, data: &[u8]) {
        if self.first_byte.is_none() && !data.is_empty() {
            self.first_byte = Some(Instant::now());
        }
        self.bytes += data.len() as u64;
        self.frames += 1;
        if let Some(a) = self.audit.as_mut() {
            a.push(data);
        }
    }

    /// The end-of-stream record: one structured log line (warn level when the upstream failed).
    fn end(self, end: End) {
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
        let error = match &end {
            End::Error(e) => Some(e.as_str()),
            _ => None,
        };
        macro_rules! record {
            ($level:expr) => {
                tracing::event!(
                    target: "ssegate::audit",
                    $level,
                    tenant = %i.tenant,
                    route = %i.route,
                    trace_id = %i.trace_id,
                    status = i.status,
                    outcome = end.as_str(),
                    error,
                    bytes = self.bytes,
                    frames = self.frames,
                    ttfb_ms,
                    duration_ms,
                    text,
                    text_truncated,
                    "stream ended"
                )
            };
        }
        if error.is_some() {
            record!(tracing::Level::WARN);
        } else {
            record!(tracing::Level::INFO);
        }
    }
}

/// The upstream body, wrapped. Owns the upstream body: dropping this drops (cancels) the upstream.
pub struct TapBody<B> {
    inner: B,
    observer: Option<Observer>,
}

impl<B> TapBody<B> {
    pub fn new(inner: B, observer: Observer) -> Self {
        Self {
            inner,
            observer: Some(observer),
        }
    }

    fn finish(&mut self, end: End) {
        if let Some(o) = self.observer.take() {
            o.end(end);
        }
    }
}

/// The SSE event sent when the upstream fails mid-stream.
fn error_event(trace_id: &str) -> Bytes {
    let data = serde_json::json!({
        "type": "upstream_error",
        "code": "upstream_reset",
        "message": "the upstream stream failed before its end",
        "trace_id": trace_id,
    });
    Bytes::from(format!("\n\nevent: error\ndata: {data}\n\n"))
}

impl<B> Body for TapBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(observer) = this.observer.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    observer.observe(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                let event = observer
                    .info
                    .event_stream
                    .then(|| error_event(&observer.info.trace_id));
                this.finish(End::Error(e.to_string()));
                match event {
                    Some(event) => Poll::Ready(Some(Ok(Frame::data(event)))),
                    None => Poll::Ready(Some(Err(e))),
                }
            }
            None => {
                this.finish(End::Complete);
                Poll::Ready(None)
            }
        }
    }

    /// Ends only once the observer has fired, so hyper always polls to the upstream's own end (a `Complete`
    /// record) instead of dropping a body it believes finished (which would read as `Cancelled`).
    fn is_end_stream(&self) -> bool {
        self.observer.is_none()
    }

    /// Unknown length: the body may gain an error event, so it is always sent chunked.
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<B> Drop for TapBody<B> {
    fn drop(&mut self) {
        self.finish(End::Cancelled);
    }
}
