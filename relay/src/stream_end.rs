//! Where a stream ends: the tap reports its end once ([`crate::tap::OnEnd`]) to a [`StreamEnd`], which waits for the
//! client's connection to say what it got, then counts the stream in the metrics, closes its spans, charges its
//! tokens (the vendor's usage or an estimate) and records its usage ([`crate::account`]), and writes its audit line
//! ([`crate::record`]); dropping the permit gives back its slots and whatever of its token reservation was not
//! settled. The composition root ([`crate::stack`]) builds one per answer and hands it to the tap; nothing here
//! reaches back into the request path.

use std::sync::Arc;

use tokio::time::Instant;

use crate::account::{Account, StreamUsage};
use crate::limit::StreamPermit;
use crate::metrics::RouteMeters;
use crate::record::Record;
use crate::server::{ConnState, Delivery};
use crate::tap::{End, OnEnd, Seen};
use crate::trace::StreamSpans;

/// What the tap calls when a stream ends: counts it, writes the record and releases the stream's concurrency
/// slots.
pub struct StreamEnd {
    pub(crate) record: Record,
    /// The request's and the vendor call's spans, when traces are on: they end with the stream.
    pub(crate) spans: Option<StreamSpans>,
    pub(crate) conn: Arc<ConnState>,
    pub(crate) meters: RouteMeters,
    /// When the request started and when the vendor request was sent.
    pub(crate) started: Instant,
    pub(crate) called: Instant,
    /// Where the answer's usage goes; `None`: the vendor refused (nothing to charge).
    pub(crate) billing: Option<Billing>,
    /// The stream's slots and token reservation: settled by the account, or given back when dropped.
    pub(crate) permit: StreamPermit,
    /// A resumable answer's log ([`crate::resume`]): its end is the vendor's, not one connection's.
    pub(crate) resume: Option<Arc<crate::resume::StreamLog>>,
}

/// An answer's account, with what it is recorded under and the estimate of its request's prompt.
pub struct Billing {
    pub(crate) account: Arc<Account>,
    pub(crate) route: Arc<str>,
    pub(crate) model: Option<String>,
    pub(crate) prompt_estimate: u64,
}

impl OnEnd for StreamEnd {
    /// The record waits for the connection to settle what the client got: a complete vendor body is a complete
    /// stream only once its tail is written to the client's socket (until hyper's last flush, the client may still
    /// lose it: write timeout, connection gone); and a cut connection's record has the bytes that reached the client,
    /// not those handed to hyper.
    ///
    /// A resumable answer is read to its end whatever becomes of the connection that asked for it (a client may
    /// resume it on another), so it ends when the vendor's body does.
    fn on_end(self, end: End, mut seen: Seen) {
        if self.resume.is_some() {
            self.finish(end, seen);
            return;
        }
        let conn = self.conn.clone();
        conn.when_written(move |delivery| {
            let end = match delivery {
                Delivery::Written => end,
                Delivery::TimedOut(got) | Delivery::Lost(got) => {
                    seen.cut(got);
                    if end == End::Complete {
                        End::Cancelled
                    } else {
                        end
                    }
                }
            };
            self.finish(end, seen);
        });
    }
}

impl StreamEnd {
    fn finish(mut self, end: End, seen: Seen) {
        if let Some(log) = &self.resume {
            self.record.resumable(log.id().clone(), log.resumes());
        }
        let write_timed_out = matches!(end, End::Cancelled) && self.conn.write_timed_out();
        let m = &self.meters;
        m.in_flight.decrement(1.0);
        m.bytes.increment(seen.bytes);
        m.events.increment(seen.events.unwrap_or(0));
        m.keepalives.increment(seen.pings);
        let charged = self.billing.as_ref().map(|b| {
            let complete = end == End::Complete;
            crate::usage::charged(seen.tokens, complete, b.prompt_estimate, seen.answer_tokens)
        });
        if let Some(c) = &charged {
            m.tokens(self.record.tenant(), c);
        }
        if let Some(first) = seen.first_byte {
            m.upstream_ttfb
                .record(first.duration_since(self.called).as_secs_f64());
            m.client_ttfb
                .record(first.duration_since(self.started).as_secs_f64());
        }
        let kind = end.kind(write_timed_out, seen.first_byte.is_some());
        m.stream_ended(kind, end.class(), self.started.elapsed().as_secs_f64());
        if let Some(spans) = self.spans {
            spans.ended(&end, kind, &seen);
        }
        if let (Some(b), Some(c)) = (self.billing, charged) {
            let events = seen.events.unwrap_or(0);
            let usage = StreamUsage {
                tenant: self.record.tenant_arc(),
                route: b.route,
                model: b.model,
                totals: crate::usage::Totals::stream(c, seen.bytes, events),
            };
            b.account.stream_ended(usage, self.permit);
        }
        self.record
            .stream_ended(&end, write_timed_out, &seen, charged.as_ref());
    }
}
