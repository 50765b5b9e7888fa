//! The trace stage: how a request is named in logs, headers and traces.
//!
//! **The trace id** is a W3C trace id (32 lower-case hex digits): the client's, when it sent a valid `traceparent`
//! (nginx passes it through), else a fresh one (the span's own when traces are on). It is the `trace_id` of every
//! log line of the request, the audit line included, and of every error body. The `x-trace-id` response header
//! carries the vendor's id when the vendor sent one that passes [`upstream_trace_id`]'s filter (so the client and
//! the vendor's support name the stream the same way; the audit line has it as `vendor_trace_id`), else this id.
//!
//! **Spans** (exported only when traces are on, [`crate::otel`]): `request` (kind server) from accept to the end
//! of the stream, its parent the client's `traceparent`; `upstream` (kind client, a child) from the vendor call to
//! the end of the vendor's body. Attributes follow the HTTP and GenAI semantic conventions plus `ssegate.*`; the
//! ones only traces need are set through [`OpenTelemetrySpanExt`], which does nothing when traces are off, so log
//! lines keep only `trace_id`, `tenant` and the path. The first byte is an event at the time it arrived. A route
//! with `propagate_trace` sends the vendor a `traceparent` naming the `upstream` span (or, traces off, the client's
//! context passed on unchanged, or the trace id with a fresh span id). Nothing here runs per chunk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio::time::Instant;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::outcome::{End, Seen};

/// Header carrying the trace id to the client (and, from some vendors, theirs).
pub const TRACE_ID: &str = "x-trace-id";

/// A random 128-bit id, 32 lower-case hex digits.
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The vendor's trace id, when it is a short printable token (anything else could forge log lines or headers).
pub fn upstream_trace_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(TRACE_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
}

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported ([`crate::otel`] turns this on once its layer is installed).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Called once the trace layer is in place.
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// A request's trace id and span, and the context its client sent.
pub struct RequestTrace {
    pub id: Arc<str>,
    pub span: Span,
    /// The client's `traceparent`/`tracestate`, when valid.
    remote: Context,
}

impl RequestTrace {
    /// Opens the request span. `route`: the configured route's path, when the request matched one (span names
    /// must not carry arbitrary request paths).
    pub fn start(method: &Method, route: Option<&str>, path: &str, headers: &HeaderMap) -> Self {
        let remote = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let name = match route {
            Some(r) => format!("{method} {r}"),
            None => method.to_string(),
        };
        let span = tracing::info_span!(
            "request",
            otel.name = name,
            otel.kind = "server",
            trace_id = tracing::field::Empty,
            vendor_trace_id = tracing::field::Empty,
            tenant = tracing::field::Empty,
            path
        );
        let mut id = None;
        if exporting() {
            let _ = span.set_parent(remote.clone());
            let context = span.context();
            let own = context.span().span_context().trace_id();
            id = (own != TraceId::INVALID).then_some(own);
            span.set_attribute("http.request.method", method.to_string());
            span.set_attribute("url.path", path.to_owned());
            span.set_attribute("url.scheme", "http");
            if let Some(r) = route {
                span.set_attribute("http.route", r.to_owned());
            }
        }
        let remote_id = remote.span().span_context().trace_id();
        let id = match id.or((remote_id != TraceId::INVALID).then_some(remote_id)) {
            Some(t) => format!("{t:032x}"),
            None => new_trace_id(),
        };
        span.record("trace_id", &id);
        Self {
            id: Arc::from(id),
            span,
            remote,
        }
    }

    /// Who asked (once authenticated).
    pub fn tenant(&self, tenant: &str) {
        self.span.record("tenant", tenant);
        if exporting() {
            self.span.set_attribute("ssegate.tenant", tenant.to_owned());
        }
    }

    /// What is known once the request body is read: the vendor's name and the model asked for.
    pub fn gen_ai(&self, system: &str, model: Option<&str>) {
        if exporting() {
            gen_ai(&self.span, system, model);
        }
    }

    /// The vendor call's span (a disabled one when traces are off): `chat {model}`, kind client.
    pub fn vendor_span(&self, system: &str, model: Option<&str>, target: &Uri) -> Span {
        if !exporting() {
            return Span::none();
        }
        let name = format!("chat {}", model.unwrap_or(system));
        let span = tracing::info_span!(parent: &self.span, "upstream", otel.name = name, otel.kind = "client");
        gen_ai(&span, system, model);
        span.set_attribute("http.request.method", "POST");
        if let Some(host) = target.host() {
            span.set_attribute("server.address", host.to_owned());
        }
        let port = target.port_u16().or(match target.scheme_str() {
            Some("https") => Some(443),
            _ => Some(80),
        });
        if let Some(p) = port {
            span.set_attribute("server.port", i64::from(p));
        }
        span
    }

    /// The `traceparent` (and `tracestate`) a route with `propagate_trace` sends the vendor.
    pub fn propagate(&self, vendor: &Span, out: &mut HeaderMap) {
        let mut context = vendor.context();
        if !context.span().span_context().is_valid() {
            context = if self.remote.span().span_context().is_valid() {
                self.remote.clone()
            } else {
                let id = TraceId::from_hex(&self.id).unwrap_or(TraceId::INVALID);
                let span_id = SpanId::from_bytes(rand_span_id());
                let sc =
                    SpanContext::new(id, span_id, TraceFlags::default(), false, TraceState::NONE);
                Context::new().with_remote_span_context(sc)
            };
        }
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(out));
    }

    /// The vendor answered (`status`) after `attempts`; `vendor_id`: its own trace id, if any.
    pub fn answered(&self, vendor: &Span, status: u16, attempts: usize, vendor_id: Option<&str>) {
        if let Some(v) = vendor_id {
            self.span.record("vendor_trace_id", v);
        }
        vendor.set_attribute("http.response.status_code", i64::from(status));
        vendor.set_attribute("ssegate.attempts", attempts as i64);
        if status >= 400 {
            vendor.set_status(Status::error(format!("vendor answered {status}")));
        }
    }

    /// The vendor call failed before an answer (`kind`: the error's fixed name).
    pub fn refused(vendor: &Span, kind: &str) {
        vendor.set_attribute("error.type", kind.to_owned());
        vendor.set_status(Status::error(kind.to_owned()));
    }

    /// The status the client got (the request span's end, unless a stream follows).
    pub fn responded(&self, status: u16) {
        if exporting() {
            self.span
                .set_attribute("http.response.status_code", i64::from(status));
            if status >= 500 {
                self.span
                    .set_status(Status::error(format!("answered {status}")));
            }
        }
    }
}

fn gen_ai(span: &Span, system: &str, model: Option<&str>) {
    span.set_attribute("gen_ai.system", system.to_owned());
    span.set_attribute("gen_ai.operation.name", "chat");
    if let Some(m) = model {
        span.set_attribute("gen_ai.request.model", m.to_owned());
    }
}

fn rand_span_id() -> [u8; 8] {
    let mut id = [0; 8];
    id.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    id
}

/// A stream's two spans, held until it ends (only when traces are on: otherwise nothing is kept per stream).
pub struct StreamSpans {
    request: Span,
    vendor: Span,
}

impl StreamSpans {
    pub fn new(request: &RequestTrace, vendor: Span) -> Option<Self> {
        exporting().then(|| Self {
            request: request.span.clone(),
            vendor,
        })
    }

    /// Writes how the stream ended into both spans; they end when this is dropped.
    pub fn ended(self, end: &End, outcome: &'static str, seen: &Seen) {
        for span in [&self.vendor, &self.request] {
            span.set_attribute("ssegate.outcome", outcome);
            span.set_attribute("ssegate.bytes", seen.bytes as i64);
            if let Some(e) = seen.events {
                span.set_attribute("ssegate.events", e as i64);
            }
            if let Some(t) = seen.tokens {
                span.set_attribute("gen_ai.usage.input_tokens", t.prompt as i64);
                span.set_attribute("gen_ai.usage.output_tokens", t.completion as i64);
            }
            if let Some(first) = seen.first_byte {
                span.add_event_with_timestamp(
                    "first_byte",
                    wall_clock(first),
                    Vec::<KeyValue>::new(),
                );
            }
            if let End::Failed(f, _) = end {
                span.set_attribute("error.type", f.kind());
                span.set_status(Status::error(f.message()));
            }
            // A span's end time is when it was last exited, not when it closes: exit it now, at the stream's end.
            drop(span.enter());
        }
    }
}

/// The wall-clock time of a monotonic instant in the past.
fn wall_clock(at: Instant) -> SystemTime {
    SystemTime::now() - Instant::now().saturating_duration_since(at)
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_unique_hex() {
        let (a, b) = (new_trace_id(), new_trace_id());
        assert_ne!(a, b);
        assert!(
            a.len() == 32 && a.bytes().all(|c| c.is_ascii_hexdigit()),
            "{a}"
        );
    }

    #[test]
    fn only_short_printable_vendor_ids_are_taken() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(TRACE_ID, HeaderValue::from_static(v));
            upstream_trace_id(&h).map(str::to_owned)
        };
        assert_eq!(with("mock-1-2").as_deref(), Some("mock-1-2"));
        assert_eq!(with(""), None);
        assert_eq!(with("a b"), None);
        assert_eq!(with(Box::leak("x".repeat(129).into_boxed_str())), None);
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_parent(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static(value));
        h.insert("tracestate", HeaderValue::from_static("vendor=abc"));
        h
    }

    #[test]
    fn the_clients_trace_id_names_the_request() {
        let t = RequestTrace::start(
            &Method::POST,
            Some("/v1/chat"),
            "/v1/chat",
            &with_parent(PARENT),
        );
        assert_eq!(&*t.id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let bad = RequestTrace::start(
            &Method::POST,
            None,
            "/x",
            &with_parent("00-zz-00f067aa0ba902b7-01"),
        );
        assert_eq!(bad.id.len(), 32);
        assert_ne!(&*bad.id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn without_exported_spans_the_clients_context_is_passed_on() {
        let t = RequestTrace::start(&Method::POST, None, "/", &with_parent(PARENT));
        let mut out = HeaderMap::new();
        t.propagate(&Span::none(), &mut out);
        assert_eq!(out["traceparent"], PARENT);
        assert_eq!(out["tracestate"], "vendor=abc");

        let fresh = RequestTrace::start(&Method::POST, None, "/", &HeaderMap::new());
        let mut out = HeaderMap::new();
        fresh.propagate(&Span::none(), &mut out);
        let parent = out["traceparent"].to_str().unwrap_or_default().to_owned();
        let parts: Vec<&str> = parent.split('-').collect();
        assert_eq!(parts.len(), 4, "{parent}");
        assert_eq!((parts[0], parts[1]), ("00", &*fresh.id));
        assert_eq!(parts[2].len(), 16);
    }

    #[test]
    fn the_model_is_read_from_the_top_of_the_body() {
        let model = |body: &[u8]| crate::usage::asked(body).and_then(|a| a.model);
        let body =
            br#"{"messages":[{"role":"user","content":"\"model\":\"x\""}],"model":"gpt-4o"}"#;
        assert_eq!(model(body).as_deref(), Some("gpt-4o"));
        assert_eq!(model(b"{\"model\":3}"), None);
        assert_eq!(model(b"not json"), None);
    }
}
