//! The request path, in order. Each stage is a function here or a module of its own:
//!
//! 1. trace id: a fresh id names the request in every log line (replaced by the upstream's `x-trace-id` once the
//!    upstream answers) and in the `x-trace-id` response header;
//! 2. routing: `GET /healthz` and the demo page need no key; a configured route path needs `POST`; anything else 404;
//! 3. authenticate ([`crate::auth`]) → the tenant, or 401 with no upstream call;
//! 4. read the request body, bounded by `max_request_body_bytes` (413 before reading when `Content-Length` says so);
//! 5. forward ([`crate::upstream`]) → the upstream response head, or 502/504 ([`crate::error`]);
//! 6. wrap the upstream body in the tap ([`crate::tap`]) and stream it back with the relay's headers;
//! 7. the tap records the end of the stream (the audit line).
//!
//! The stack is concrete functions rather than tower layers: each stage is small, ordered, and tested through the
//! real server; layers arrive when a stage must compose or be swapped (rate limits, metrics).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::{Principal, authenticate};
use crate::config::Config;
use crate::error::{RelayError, UpstreamError, respond};
use crate::tap::{Observer, StreamInfo, TapBody};
use crate::upstream::{Upstream, build_request, copy_response_headers};

/// Header carrying the trace id, both from the upstream and to the client.
pub const TRACE_ID: &str = "x-trace-id";

/// Body of every relay response: a tapped upstream body or a small complete one.
pub type RelayBody = Either<TapBody<Incoming>, Full<Bytes>>;

/// Shared, immutable state of the request path.
pub struct Relay {
    config: Arc<Config>,
    upstreams: Vec<Upstream>,
    route_names: Vec<Arc<str>>,
}

impl Relay {
    pub fn new(config: Arc<Config>) -> Self {
        let upstreams = crate::upstream::clients(&config.routes);
        let route_names = config
            .routes
            .iter()
            .map(|r| Arc::from(r.path.as_str()))
            .collect();
        Self {
            config,
            upstreams,
            route_names,
        }
    }

    /// Handles one request. Never fails: every error becomes a response here.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<RelayBody> {
        let trace_id = new_trace_id();
        let span = tracing::info_span!(
            "request",
            trace_id = %trace_id,
            tenant = tracing::field::Empty,
            method = %req.method(),
            path = req.uri().path()
        );
        self.route(req, trace_id).instrument(span).await
    }

    async fn route(&self, req: Request<Incoming>, trace_id: String) -> Response<RelayBody> {
        let path = req.uri().path();
        if path == "/healthz" && req.method() == Method::GET {
            return complete(json_ok());
        }
        if path == "/" && req.method() == Method::GET && self.config.demo_page {
            return complete(crate::demo::page());
        }
        let Some(index) = self.config.routes.iter().position(|r| r.path == path) else {
            return complete(respond(&RelayError::NotFound, &trace_id));
        };
        if req.method() != Method::POST {
            return complete(respond(&RelayError::MethodNotAllowed, &trace_id));
        }
        match self.forward(index, req, &trace_id).await {
            Ok(res) => res,
            Err(e) => complete(respond(&e, &trace_id)),
        }
    }

    async fn forward(
        &self,
        index: usize,
        req: Request<Incoming>,
        trace_id: &str,
    ) -> Result<Response<RelayBody>, RelayError> {
        let started = Instant::now();
        let route = &self.config.routes[index];
        let principal = authenticate(req.headers(), &self.config.clients)?;
        tracing::Span::current().record("tenant", &*principal.tenant);
        let (parts, body) = req.into_parts();
        let body = read_body(&parts.headers, body, self.config.max_request_body_bytes).await?;
        let upstream_req = build_request(route, &parts.headers, body);
        let upstream_res = self.upstreams[index].send(upstream_req).await?;
        let status = upstream_res.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // The vendor key is ours: the client cannot fix this, the operator must.
            return Err(UpstreamError::Credential(status).into());
        }
        if status.is_redirection() || status.is_informational() {
            return Err(UpstreamError::Redirect(status).into());
        }
        let trace_id: Arc<str> = upstream_trace_id(upstream_res.headers())
            .map_or_else(|| Arc::from(trace_id), Arc::from);
        tracing::Span::current().record("trace_id", &*trace_id);
        Ok(self.respond_stream(index, principal, upstream_res, trace_id, started))
    }

    fn respond_stream(
        &self,
        index: usize,
        principal: Principal,
        upstream: Response<Incoming>,
        trace_id: Arc<str>,
        started: Instant,
    ) -> Response<RelayBody> {
        let (parts, body) = upstream.into_parts();
        let event_stream = parts.status.is_success() && is_event_stream(&parts.headers);
        let info = StreamInfo {
            tenant: principal.tenant,
            route: self.route_names[index].clone(),
            trace_id: trace_id.clone(),
            status: parts.status.as_u16(),
            event_stream,
            started,
        };
        let audit = self.config.audit;
        let observer = Observer::new(info, audit.enabled.then_some(audit.max_text_bytes));
        let mut res = Response::new(Either::Left(TapBody::new(body, observer)));
        *res.status_mut() = parts.status;
        let headers = res.headers_mut();
        copy_response_headers(&parts.headers, headers);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        if let Ok(v) = HeaderValue::from_str(&trace_id) {
            headers.insert(TRACE_ID, v);
        }
        res
    }
}

fn complete(res: Response<Full<Bytes>>) -> Response<RelayBody> {
    res.map(Either::Right)
}

fn json_ok() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(b"{\"status\":\"ok\"}")));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// The upstream's trace id, when it is a short printable token.
fn upstream_trace_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(TRACE_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
}

/// Reads the whole request body, refusing more than `limit` bytes (up front when `Content-Length` says so).
async fn read_body(headers: &HeaderMap, body: Incoming, limit: u64) -> Result<Bytes, RelayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(RelayError::PayloadTooLarge { limit });
    }
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(RelayError::PayloadTooLarge { limit })
        }
        Err(_) => Err(RelayError::BadBody),
    }
}

/// A random 128-bit id in hex, from the standard library's per-process random keys.
pub fn new_trace_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut a = RandomState::new().build_hasher();
    a.write_u64(n);
    let mut b = RandomState::new().build_hasher();
    b.write_u64(!n);
    format!("{:016x}{:016x}", a.finish(), b.finish())
}
