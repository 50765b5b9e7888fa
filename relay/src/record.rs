//! The end-of-stream record: one structured log line (target `ssegate::audit`) per request that got past
//! authentication, written exactly once however it ended, the blog post's `log.info("…result: {}")` done right.
//!
//! A [`Record`] is opened once the tenant is known. If the request fails before the stream starts, the error is
//! logged by [`crate::error::respond`] and the record is [`Record::refused`] (no second line). If the client leaves
//! while the relay still waits for the vendor's head, dropping the record writes `client_cancelled_before_response`.
//! Otherwise [`crate::stack`] hands it to the tap's end-of-stream callback, which calls [`Record::stream_ended`].
//! Failures are logged at warn level with their detail; everything else at info.

use std::sync::Arc;

use tokio::time::Instant;

use crate::outcome::{End, Seen};
use crate::usage::Charged;

/// One request's record, written when it is finished or dropped.
#[derive(Debug)]
pub struct Record {
    tenant: Arc<str>,
    route: Arc<str>,
    trace_id: Arc<str>,
    /// The vendor's own id for the stream (its `x-trace-id`), when it sent one.
    vendor_trace_id: Option<Arc<str>>,
    started: Instant,
    /// The vendor's status and the attempts it took, once it answered.
    answer: Option<(u16, usize)>,
    /// A resumable answer's stream id, and how many times it was resumed by its end.
    stream: Option<(Arc<str>, u32)>,
    /// The request policy applied, and the rules that rewrote the request (`aliases,max_tokens`; empty: none).
    policy: Option<(Arc<str>, String)>,
    written: bool,
}

impl Record {
    /// Opens the record of a request that passed authentication.
    pub fn open(tenant: Arc<str>, route: Arc<str>, trace_id: Arc<str>, started: Instant) -> Self {
        Self {
            tenant,
            route,
            trace_id,
            vendor_trace_id: None,
            started,
            answer: None,
            stream: None,
            policy: None,
            written: false,
        }
    }

    /// The vendor answered: its status, the attempts it took, and its own id for the stream, if any.
    pub fn answered(&mut self, status: u16, attempts: usize, vendor_trace_id: Option<Arc<str>>) {
        self.answer = Some((status, attempts));
        self.vendor_trace_id = vendor_trace_id;
    }

    /// The answer is resumable, as stream `id`, and was resumed `resumes` times so far.
    pub fn resumable(&mut self, id: Arc<str>, resumes: u32) {
        self.stream = Some((id, resumes));
    }

    /// The request policy `name` allowed the request, rewritten by the rules `rewrites` names.
    pub fn policy(&mut self, name: Arc<str>, rewrites: crate::policy::Rewrites) {
        self.policy = Some((name, rewrites.joined()));
    }

    /// The route it came on.
    pub fn route_arc(&self) -> Arc<str> {
        self.route.clone()
    }

    /// Whose request this is.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The same, shared.
    pub fn tenant_arc(&self) -> Arc<str> {
        self.tenant.clone()
    }

    /// The request ended with an error response before any stream; that response's log line is the record.
    pub fn refused(mut self) {
        self.written = true;
    }

    /// The stream ended; `write_timed_out`: the client's connection was cut for accepting no bytes.
    /// `charged`: the tokens the answer was charged (`None`: the vendor refused, nothing charged).
    pub fn stream_ended(
        mut self,
        end: &End,
        write_timed_out: bool,
        seen: &Seen,
        charged: Option<&Charged>,
    ) {
        let outcome = end.kind(write_timed_out, seen.first_byte.is_some());
        let error = match end {
            End::Failed(_, detail) => Some(detail.as_str()),
            _ => None,
        };
        self.write(outcome, error, Some(seen), charged);
    }

    fn write(
        &mut self,
        outcome: &str,
        error: Option<&str>,
        seen: Option<&Seen>,
        charged: Option<&Charged>,
    ) {
        self.written = true;
        // Milliseconds to the microsecond: `606.199`, not float noise like `606.1986919999999`.
        let ms = |t: Instant| (t.duration_since(self.started).as_secs_f64() * 1e6).round() / 1e3;
        let ttfb_ms = seen.and_then(|s| s.first_byte).map(ms);
        let duration_ms = ms(Instant::now());
        let (status, attempts) = self.answer.unzip();
        let (stream_id, resumes) = self.stream.clone().unzip();
        let (policy, policy_rewrites) = self.policy.take().unzip();
        let policy_rewrites = policy_rewrites.filter(|r| !r.is_empty());
        let (text, text_truncated) = seen
            .and_then(|s| s.text.as_ref())
            .map(|(t, cut)| (t.as_str(), *cut))
            .unzip();
        macro_rules! record {
            ($level:expr) => {
                tracing::event!(
                    target: "ssegate::audit",
                    $level,
                    tenant = %self.tenant,
                    route = %self.route,
                    trace_id = %self.trace_id,
                    vendor_trace_id = self.vendor_trace_id.as_deref().map(tracing::field::display),
                    status,
                    outcome,
                    error,
                    attempts,
                    stream_id = stream_id.as_deref().map(tracing::field::display),
                    resumes,
                    policy = policy.as_deref().map(tracing::field::display),
                    policy_rewrites = policy_rewrites.as_deref().map(tracing::field::display),
                    bytes = seen.map(|s| s.bytes),
                    frames = seen.map(|s| s.frames),
                    events = seen.and_then(|s| s.events),
                    pings = seen.map(|s| s.pings),
                    usage = charged.map(|c| c.source.name()),
                    prompt_tokens = charged.map(|c| c.tokens.prompt),
                    completion_tokens = charged.map(|c| c.tokens.completion),
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

impl Drop for Record {
    fn drop(&mut self) {
        if !self.written && !std::thread::panicking() {
            self.write("client_cancelled_before_response", None, None, None);
        }
    }
}
