//! The request path, in order. Each stage is a function here or a module of its own:
//!
//! 1. trace id: a fresh id names the request in every log line (replaced by the upstream's `x-trace-id` once the
//!    upstream answers) and in the `x-trace-id` response header;
//! 2. routing: `GET /healthz` and the demo page need no key; a configured route path needs `POST`; anything else 404;
//! 3. authenticate ([`crate::auth`]) → the tenant, or 401;
//! 4. concurrency limits ([`crate::rate_limit`]) → a permit held by the response body, or 503/429;
//! 5. read the request body, bounded by `max_request_body_bytes` (413 before reading when `Content-Length` says so);
//! 6. forward ([`crate::upstream`]), with failover to the route's next endpoint on connect errors, 429 and 5xx, only
//!    while nothing has been sent to the client → the response head, or 502/504 ([`crate::error`]);
//! 7. wrap the upstream body in the tap ([`crate::tap`]: timers, keep-alives, error events) and stream it back;
//! 8. the tap records the end of the stream (the audit line). A client that leaves before step 7 is recorded by
//!    [`Pending`].
//!
//! Stages 1–5 return before any upstream call. The stack is concrete functions rather than tower layers: each stage
//! is small, ordered, and tested through the real server.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::{Principal, authenticate};
use crate::config::{Config, Route};
use crate::error::{RelayError, UpstreamError, respond};
use crate::rate_limit::{Limiter, StreamPermit};
use crate::server::{ConnState, Handler};
use crate::sse::EventScanner;
use crate::tap::{Observer, StreamInfo, TapBody, TapParts, Timers};
use crate::upstream::{Upstream, build_request, copy_response_headers};

/// Header carrying the trace id, both from the upstream and to the client.
pub const TRACE_ID: &str = "x-trace-id";

/// Body of every relay response: a tapped upstream body or a small complete one (errors are [`BoxError`]).
pub type RelayBody = Either<TapBody<Incoming>, Full<Bytes>>;

/// Shared, immutable state of the request path; one per worker thread ([`Relay::for_worker`]).
pub struct Relay {
    config: Arc<Config>,
    tls: rustls::ClientConfig,
    upstreams: Vec<Upstream>,
    route_names: Vec<Arc<str>>,
    limiter: Limiter,
    drain: CancellationToken,
}

impl Handler for Relay {
    type Body = RelayBody;

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnState>,
    ) -> Response<RelayBody> {
        let trace_id = new_trace_id();
        let span = tracing::info_span!(
            "request",
            trace_id = %trace_id,
            tenant = tracing::field::Empty,
            method = %req.method(),
            path = req.uri().path()
        );
        self.route(req, trace_id, conn).instrument(span).await
    }

    fn panicked(&self) -> Response<RelayBody> {
        complete(crate::error::json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the relay failed to handle this request",
            &new_trace_id(),
        ))
    }
}

impl Relay {
    /// `drain`: cancelled when the shutdown grace period is over; every stream then ends with a `shutdown` event.
    pub fn new(config: Arc<Config>, drain: CancellationToken) -> Self {
        let tls = crate::upstream::tls_config();
        let upstreams = crate::upstream::clients(&config.routes, &tls);
        let route_names = config
            .routes
            .iter()
            .map(|r| Arc::from(r.path.as_str()))
            .collect();
        let limits = &config.limits;
        let tenants = config.clients.iter().map(|c| &c.tenant);
        let limiter = Limiter::new(limits.max_streams, limits.max_streams_per_tenant, tenants);
        Self {
            config,
            tls,
            upstreams,
            route_names,
            limiter,
            drain,
        }
    }

    /// The same relay for another worker thread: same configuration, stream limits and drain token, but its own
    /// upstream connection pools, so that a stream's client and vendor connections are served by one thread.
    pub fn for_worker(&self) -> Self {
        Self {
            config: self.config.clone(),
            tls: self.tls.clone(),
            upstreams: crate::upstream::clients(&self.config.routes, &self.tls),
            route_names: self.route_names.clone(),
            limiter: self.limiter.clone(),
            drain: self.drain.clone(),
        }
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        trace_id: String,
        conn: Arc<ConnState>,
    ) -> Response<RelayBody> {
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
        match self.forward(index, req, &trace_id, conn).await {
            Ok(res) => res,
            Err(e) => complete(respond(&e, &trace_id)),
        }
    }

    async fn forward(
        &self,
        index: usize,
        req: Request<Incoming>,
        trace_id: &str,
        conn: Arc<ConnState>,
    ) -> Result<Response<RelayBody>, RelayError> {
        let started = Instant::now();
        let route = &self.config.routes[index];
        let principal = authenticate(req.headers(), &self.config.clients)?;
        tracing::Span::current().record("tenant", &*principal.tenant);
        let permit = self.limiter.acquire(&principal.tenant)?;
        let (parts, body) = req.into_parts();
        let body = read_body(&parts.headers, body, self.config.max_request_body_bytes).await?;
        let mut pending = Pending::new(&principal, &self.route_names[index], trace_id);
        let deadline = started + route.first_byte_timeout;
        let called = self
            .call(index, route, &parts.headers, body, deadline)
            .await;
        pending.disarm();
        let (upstream_res, attempts) = called?;
        let trace_id: Arc<str> = upstream_trace_id(upstream_res.headers())
            .map_or_else(|| Arc::from(trace_id), Arc::from);
        tracing::Span::current().record("trace_id", &*trace_id);
        let info = StreamInfo {
            tenant: principal.tenant,
            route: self.route_names[index].clone(),
            trace_id,
            status: upstream_res.status().as_u16(),
            attempts,
            started,
        };
        Ok(self.stream_back(route, upstream_res, info, conn, permit))
    }

    /// Calls the route's endpoints in order until one answers with something other than a connect error, 429 or
    /// 5xx, or the attempts run out (the last answer is then passed on). A head timeout is not retried: that vendor
    /// may still be generating, and a second call would be paid twice.
    async fn call(
        &self,
        index: usize,
        route: &Route,
        inbound: &HeaderMap,
        body: Bytes,
        deadline: Instant,
    ) -> Result<(Response<Incoming>, usize), RelayError> {
        let mut attempt = 0;
        loop {
            let target = &route.targets[attempt];
            attempt += 1;
            let last = attempt >= route.max_attempts;
            let req = build_request(route, target, inbound, body.clone());
            match self.upstreams[index].send(req, deadline).await {
                Ok(res) => {
                    let status = res.status();
                    let retryable =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if retryable && !last {
                        tracing::warn!(
                            attempt,
                            status = status.as_u16(),
                            "upstream answered an error; trying the next endpoint"
                        );
                        continue;
                    }
                    return check_status(res).map(|r| (r, attempt));
                }
                Err(e @ (UpstreamError::Connect(_) | UpstreamError::ConnectTimeout)) if !last => {
                    tracing::warn!(attempt, error = %e, "upstream unreachable; trying the next endpoint");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn stream_back(
        &self,
        route: &Route,
        upstream: Response<Incoming>,
        info: StreamInfo,
        conn: Arc<ConnState>,
        permit: StreamPermit,
    ) -> Response<RelayBody> {
        let (parts, body) = upstream.into_parts();
        let event_stream = parts.status.is_success() && is_event_stream(&parts.headers);
        let scanner = event_stream
            .then(|| EventScanner::new(route.terminal_event.as_deref(), route.max_event_bytes));
        let audit = self.config.audit;
        let trace_id = info.trace_id.clone();
        let timers = Timers {
            first_byte_deadline: info.started + route.first_byte_timeout,
            idle: route.idle_timeout,
            total_deadline: info.started + route.total_timeout,
            keepalive: route.keepalive_interval,
        };
        let tap = TapParts {
            observer: Observer::new(info, audit.enabled.then_some(audit.max_text_bytes), scanner),
            timers,
            drain: self.drain.clone(),
            conn,
            permit: Some(permit),
        };
        let mut res = Response::new(Either::Left(TapBody::new(body, tap)));
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

/// Vendor answers the client must not see as they are: our key rejected (401/403), redirects, 1xx.
fn check_status(res: Response<Incoming>) -> Result<Response<Incoming>, RelayError> {
    let status = res.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        // The vendor key is ours: the client cannot fix this, the operator must.
        return Err(UpstreamError::Credential(status).into());
    }
    if status.is_redirection() || status.is_informational() {
        return Err(UpstreamError::Redirect(status).into());
    }
    Ok(res)
}

/// Records a client that left while the relay was still waiting for the upstream's head (hyper drops the request
/// future, and with it the pending upstream call).
struct Pending<'a> {
    armed: bool,
    tenant: Arc<str>,
    route: &'a str,
    trace_id: &'a str,
    started: Instant,
}

impl<'a> Pending<'a> {
    fn new(principal: &Principal, route: &'a str, trace_id: &'a str) -> Self {
        Self {
            armed: true,
            tenant: principal.tenant.clone(),
            route,
            trace_id,
            started: Instant::now(),
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed && !std::thread::panicking() {
            tracing::info!(
                target: "ssegate::audit",
                tenant = %self.tenant,
                route = self.route,
                trace_id = self.trace_id,
                outcome = "client_cancelled_before_response",
                duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                "stream ended"
            );
        }
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
