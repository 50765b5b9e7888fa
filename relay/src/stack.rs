//! The composition root: the request path's stages, in order, each in its own module. Nothing imports this module
//! but the crate root; it imports them all.
//!
//! 1. route ([`crate::route`]): `GET /healthz`, a configured route (`POST`), or 404/405; a head over
//!    `max_header_bytes` that hyper read in one piece is 431 here ([`crate::headers::head_len`]);
//! 2. trace ([`crate::trace`]): the trace id (the client's `traceparent`'s, or fresh) names the request in every
//!    log line; the request span (named after the route) and, once the body is read, the vendor call's span;
//! 3. authenticate ([`crate::auth`]) → the tenant, or 401;
//! 4. the relay-wide stream slot ([`crate::limit::Limiter::admit_total`]) → 503 when the relay is full; read the
//!    request body, bounded ([`crate::body`]) → 413 before reading when `Content-Length` says so;
//!    then the caller's request policy ([`crate::policy`]) → the body as read or rewritten, or 400/403;
//! 5. the tenant's limits ([`crate::limit::Limiter::enter`]) → a permit held until the stream ends: a stream slot,
//!    the tokens the request may use reserved (its prompt estimated from the body, its `max_tokens`), the request
//!    rate counted; or 429;
//! 6. forward ([`crate::upstream`]), with failover before the first byte → the response head, or 502/504;
//! 7. tap the vendor's body ([`crate::tap`]: timers, keep-alives, error events) and stream it back, with the
//!    response headers the header policy allows ([`crate::headers`]);
//! 8. record the end of the answer, once ([`crate::record`]), and settle its tokens and account its usage
//!    ([`crate::account`]: the vendor's usage, or an estimate), through the tap's end-of-stream callback.
//!
//! Errors before the stream become responses in one place ([`crate::error::respond`]); when the request body was
//! not read to its end, the rest is discarded (bounded) first and the answer closes the connection. The stages are plain
//! functions rather than tower layers: each is small, ordered, and tested alone; [`Relay::handle_request`] is
//! generic over the request body so the whole path can be driven without a socket.

/// Every tenant's limits as configured.
fn tenant_limits(config: &Config) -> impl Iterator<Item = (&Arc<str>, crate::config::Limits)> {
    config.tenants.iter().map(|t| {
        let own = config.tenant_limits.get(t).copied().unwrap_or_default();
        (t, own)
    })
}

/// What stages 3 to 5 leave for the vendor call: the caller, its stream slot, the body to send, what it asked for.
struct Admission {
    principal: crate::auth::Principal,
    permit: crate::limit::StreamPermit,
    body: Bytes,
    asked: Option<crate::usage::Asked>,
    want: Want,
    /// The request policy that allowed it, and what it rewrote.
    policy: Option<crate::policy::Applied>,
}

/// The one rewrite of the client's bytes: on an OpenAI route, ask for usage on the client's behalf when it did
/// not; then the relay hides the usage answer it did not ask for (true).
fn ask_for_usage(route: &Route, asked: Option<&crate::usage::Asked>, body: &mut Bytes) -> bool {
    let (UsageMode::Openai, Some(asked)) = (route.usage, asked) else {
        return false;
    };
    match crate::usage::ask_for_usage(body, asked) {
        Some(rewritten) => {
            *body = rewritten;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::upstream::VendorBody;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::account::Account;
use crate::auth::Authenticator;
use crate::body::{discard, read_body};
use crate::config::{Config, Route, UsageMode};
use crate::error::{RelayError, json_response, respond};
use crate::headers::head_len;
use crate::limit::{Admitted, Calendar, Limiter, Want};
use crate::metrics::RouteMeters;
use crate::record::Record;
use crate::resume::{Follow, Streams};
use crate::route::{Routed, route};
use crate::server::{ConnState, Handler};
use crate::stream_end::{Billing, StreamEnd};
use crate::tap::{AddedDelay, TapBody, TapParts, Timers};
use crate::trace::{RequestTrace, StreamSpans, TRACE_ID, new_trace_id, upstream_trace_id};
use crate::upstream::Upstream;
use relay_wire::sse::EventScanner;

/// What a refused request's unread body may cost before the answer: twice `max_request_body_bytes` (so a body up to
/// twice the limit still gets its 413), at most this many bytes, for at most [`DISCARD_TIME`].
const DISCARD_MAX: u64 = 16 << 20;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Body of every relay response: a tapped upstream body, a resumable answer's follower ([`crate::resume`]), or a
/// small complete one.
pub type RelayBody = Either<Either<TapBody<VendorBody, StreamEnd>, Follow>, Full<Bytes>>;

/// Shared, immutable state of the request path; one per worker thread ([`Relay::for_worker`]).
pub struct Relay {
    config: Arc<Config>,
    tls: crate::upstream::VendorTls,
    upstreams: Vec<Upstream>,
    route_names: Vec<Arc<str>>,
    meters: Vec<RouteMeters>,
    auth: Authenticator,
    limiter: Limiter,
    account: Arc<Account>,
    /// Resumable answers, in this process.
    streams: Arc<Streams>,
    drain: CancellationToken,
}

impl Handler for Relay {
    type Body = RelayBody;

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnState>,
    ) -> Response<RelayBody> {
        self.handle_request(req, conn).await
    }

    fn panicked(&self) -> Response<RelayBody> {
        complete(json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the relay failed to handle this request",
            &new_trace_id(),
        ))
    }
}

impl Relay {
    /// The relay with its limits in this process and client keys only (no JWTs). `tls`: the vendor TLS settings
    /// ([`crate::upstream::tls_config`]); `drain`: cancelled when the shutdown grace period is over, which ends
    /// every stream with a `shutdown` event.
    pub fn new(
        config: Arc<Config>,
        tls: crate::upstream::VendorTls,
        drain: CancellationToken,
    ) -> Self {
        let auth = Authenticator::with(config.clients.clone(), None);
        Self::with_store(config, tls, auth, drain, None)
    }

    /// The relay with its request rates counted in `store` (shared by replicas) when given, its callers checked by
    /// `auth` (the configured client keys and, with `[auth.jwt]`, the verifier startup built).
    pub fn with_store(
        config: Arc<Config>,
        tls: crate::upstream::VendorTls,
        auth: Authenticator,
        drain: CancellationToken,
        store: Option<Arc<crate::limit::store::RedisStore>>,
    ) -> Self {
        let limits = &config.limits;
        let streams = Arc::new(Streams::new(store.clone()));
        let limiter = Limiter::with_limits(
            limits.max_streams,
            limits.max_streams_per_tenant,
            tenant_limits(&config),
        )
        .with_store(store);
        let account = Arc::new(Account::new(limiter.clone(), config.tenants.clone()));
        Self::assemble(config, tls, auth, drain, (limiter, account, streams))
    }

    /// This relay after a reload to `config` (its vendor TLS and credentials built from it): new requests are
    /// served by the returned relay; the streams in flight finish on this one's. The limits' state (open streams,
    /// requests and tokens used, reservations) and the usage ledger carry over ([`Limiter::reloaded`]).
    pub fn reloaded(
        &self,
        config: Arc<Config>,
        tls: crate::upstream::VendorTls,
        auth: Authenticator,
    ) -> Self {
        let per_tenant = config.limits.max_streams_per_tenant;
        let limiter = self.limiter.reloaded(per_tenant, tenant_limits(&config));
        let account = Arc::new(
            self.account
                .reloaded(limiter.clone(), config.tenants.clone()),
        );
        let streams = self.streams.clone();
        Self::assemble(
            config,
            tls,
            auth,
            self.drain.clone(),
            (limiter, account, streams),
        )
    }

    /// The configuration this relay serves.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    fn assemble(
        config: Arc<Config>,
        tls: crate::upstream::VendorTls,
        auth: Authenticator,
        drain: CancellationToken,
        (limiter, account, streams): (Limiter, Arc<Account>, Arc<Streams>),
    ) -> Self {
        let upstreams = Upstream::for_routes(&config.routes, &tls);
        let route_names = config
            .routes
            .iter()
            .map(|r| Arc::from(r.path.as_str()))
            .collect();
        let meters = config
            .routes
            .iter()
            .map(|r| RouteMeters::new(&r.path, &config.tenants))
            .collect();
        Self {
            config,
            tls,
            upstreams,
            route_names,
            meters,
            auth,
            limiter,
            account,
            streams,
            drain,
        }
    }

    /// Where stream usage is charged and recorded (the admin listener reads it).
    pub fn account(&self) -> Arc<Account> {
        self.account.clone()
    }

    /// The same relay for another worker thread: same configuration, stream limits and drain token, but its own
    /// upstream connection pools, so that a stream's client and vendor connections are served by one thread.
    pub fn for_worker(&self) -> Self {
        Self {
            config: self.config.clone(),
            tls: self.tls.clone(),
            upstreams: Upstream::for_routes(&self.config.routes, &self.tls),
            route_names: self.route_names.clone(),
            meters: self.meters.clone(),
            auth: self.auth.clone(),
            limiter: self.limiter.clone(),
            account: self.account.clone(),
            streams: self.streams.clone(),
            drain: self.drain.clone(),
        }
    }

    /// The whole request path for one request (stages 1 to 7; stage 8 runs when the returned body ends).
    pub async fn handle_request<B>(
        &self,
        req: Request<B>,
        conn: Arc<ConnState>,
    ) -> Response<RelayBody>
    where
        B: Body + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, mut body) = req.into_parts();
        let routed = route(&parts.method, parts.uri.path(), &self.config.routes);
        let route_name = match routed {
            Ok(Routed::Route(index)) => Some(&*self.route_names[index]),
            _ => None,
        };
        let trace =
            RequestTrace::start(&parts.method, route_name, parts.uri.path(), &parts.headers);
        let span = trace.span.clone();
        let max_head = self.config.limits.max_header_bytes;
        let head_too_large = head_len(&parts.method, &parts.uri, &parts.headers) > max_head;
        async {
            let (mut tenant, mut rate) = (None, None);
            let (meters, result) = match routed {
                _ if head_too_large => (None, Err(RelayError::HeadTooLarge { limit: max_head })),
                Ok(Routed::Health) => return complete(json_ok()),
                Ok(Routed::Resume) => {
                    let resumed = self.resume(&parts, &trace, &mut tenant);
                    (None, resumed.await)
                }
                Ok(Routed::StopStream) => {
                    let stopped = self.stop_stream(&parts, &trace, &mut tenant);
                    (None, stopped.await)
                }
                Ok(Routed::Route(index)) => {
                    let who = (&mut tenant, &mut rate);
                    let forwarded =
                        self.forward(index, &parts.headers, &mut body, &trace, conn, who);
                    (Some(&self.meters[index]), forwarded.await)
                }
                Err(e) => (None, Err(e.into())),
            };
            let mut res = match result {
                Ok(res) => res,
                Err(e) => complete(self.refuse(&e, &trace.id, &mut body).await),
            };
            // Once the request was counted, every answer says what is left of the rate: the stream's, and a later
            // refusal's (body too large, vendor unreachable…) alike.
            if let Some(admitted) = &rate {
                crate::limit::admitted_headers(admitted, res.headers_mut());
            }
            let (tenant, status) = (tenant.as_deref().unwrap_or("none"), res.status().as_u16());
            trace.responded(status);
            match meters {
                Some(m) => m.request(tenant, status),
                None => crate::metrics::request("none", tenant, status),
            }
            res
        }
        .instrument(span)
        .await
    }

    /// The error answer. When the request body was not read to its end (refused before or while reading it), what
    /// is left of it is read and dropped first, bounded ([`discard`]), and the answer closes the connection: a
    /// client or proxy still sending gets the answer rather than a reset.
    async fn refuse<B>(&self, e: &RelayError, trace_id: &str, body: &mut B) -> Response<Full<Bytes>>
    where
        B: Body + Unpin,
    {
        let unread = !body.is_end_stream();
        if unread {
            let max = self
                .config
                .max_request_body_bytes
                .saturating_mul(2)
                .min(DISCARD_MAX);
            discard(body, max, DISCARD_TIME).await;
        }
        let mut res = respond(e, trace_id);
        if unread {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }

    async fn forward<B>(
        &self,
        index: usize,
        headers: &HeaderMap,
        body: &mut B,
        trace: &RequestTrace,
        conn: Arc<ConnState>,
        (tenant, rate_out): (&mut Option<Arc<str>>, &mut Option<Admitted>),
    ) -> Result<Response<RelayBody>, RelayError>
    where
        B: Body + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let route = &self.config.routes[index];
        let Admission {
            principal,
            permit,
            mut body,
            asked,
            want,
            policy,
        } = self
            .admit(index, headers, body, trace, started, (tenant, rate_out))
            .await?;
        let model = asked.as_ref().and_then(|a| a.model.clone());
        let path_model = path_model(route, model.as_deref())?;
        if route.dialect.spec().model_in_path
            && let Some(without) = crate::policy::without_member(&body, "model")
        {
            body = without;
        }
        let hide_usage = ask_for_usage(route, asked.as_ref(), &mut body);
        let system = &route.gen_ai_system;
        trace.gen_ai(system, model.as_deref());
        let name = self.route_names[index].clone();
        let mut record = Record::open(principal.tenant, name, trace.id.clone(), started);
        if let Some((policy, rewrites)) = policy {
            record.policy(policy, rewrites);
        }
        let vendor = trace.vendor_span(system, model.as_deref(), &route.targets[0].upstream);
        let mut extra = HeaderMap::new();
        if route.propagate_trace {
            trace.propagate(&vendor, &mut extra);
        }
        let deadline = started + route.first_byte_timeout;
        let meters = &self.meters[index];
        let called = Instant::now();
        meters
            .overhead
            .record(called.duration_since(started).as_secs_f64());
        let answer = self.upstreams[index]
            .call(
                route,
                meters,
                (headers, &extra),
                (body, path_model),
                deadline,
            )
            .instrument(vendor.clone())
            .await;
        let (upstream, attempts) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                RequestTrace::refused(&vendor, e.kind());
                record.refused();
                return Err(e.into());
            }
        };
        let status = upstream.status().as_u16();
        let vendor_id = upstream_trace_id(upstream.headers()).map(Arc::<str>::from);
        trace.answered(&vendor, status, attempts, vendor_id.as_deref());
        record.answered(status, attempts, vendor_id.clone());
        // The client sees the vendor's id when there is one: the id the vendor's support knows the stream by.
        let shown_id = vendor_id.unwrap_or_else(|| trace.id.clone());
        meters.in_flight.increment(1.0);
        let billing = upstream.status().is_success().then(|| Billing {
            account: self.account.clone(),
            route: self.route_names[index].clone(),
            model,
            prompt_estimate: want.prompt,
        });
        let on_end = StreamEnd {
            record,
            spans: StreamSpans::new(trace, vendor),
            conn,
            meters: meters.clone(),
            started,
            called,
            billing,
            permit,
            resume: None,
        };
        Ok(self.stream_back(route, upstream, started, shown_id, on_end, hide_usage))
    }

    /// Stages 3 to 5: the caller (auth), a relay-wide slot before the body is read, the body and the caller's
    /// request policy, then the tenant's limits (its size and `max_tokens` make the token reservation).
    async fn admit<B>(
        &self,
        index: usize,
        headers: &HeaderMap,
        body: &mut B,
        trace: &RequestTrace,
        started: Instant,
        (tenant, rate_out): (&mut Option<Arc<str>>, &mut Option<Admitted>),
    ) -> Result<Admission, RelayError>
    where
        B: Body + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let principal = self.auth.authenticate(headers)?;
        trace.tenant(&principal.tenant);
        *tenant = Some(principal.tenant.clone());
        let total = self.limiter.admit_total()?;
        let body = read_body(headers, body, self.config.max_request_body_bytes).await?;
        let (body, policy) = self.policy(index, &principal.tenant, body)?;
        let asked = crate::usage::asked(&body);
        // A model that cannot go in the vendor's path is refused before the tenant's limits count the request.
        path_model(
            &self.config.routes[index],
            asked.as_ref().and_then(|a| a.model.as_deref()),
        )?;
        let want = Want {
            prompt: crate::usage::estimate::request_tokens(&body),
            max_output: asked.as_ref().and_then(|a| a.max_output),
        };
        let (permit, admitted) = self
            .limiter
            .enter(&principal.tenant, total, want, started, Calendar::now())
            .await?;
        *rate_out = Some(admitted);
        Ok(Admission {
            principal,
            permit,
            body,
            asked,
            want,
            policy,
        })
    }

    /// Stage 4½: the tenant's request policy, else the route's ([`crate::policy`]): the body to send (as read, or
    /// rewritten), or the refusal naming its rule. No policy: nothing looked at.
    fn policy(
        &self,
        index: usize,
        tenant: &Arc<str>,
        body: Bytes,
    ) -> Result<(Bytes, Option<crate::policy::Applied>), RelayError> {
        let own = &self.config.tenant_policies;
        let own = if own.is_empty() {
            None
        } else {
            own.get(tenant)
        };
        let Some(policy) = own.or(self.config.routes[index].policy.as_ref()) else {
            return Ok((body, None));
        };
        match crate::policy::apply(policy, &body) {
            Ok(allowed) => {
                for rule in allowed.rewrites.names() {
                    crate::metrics::policy(tenant, &policy.name, rule, "rewritten");
                }
                let body = allowed.body.unwrap_or(body);
                Ok((body, Some((policy.name.clone(), allowed.rewrites))))
            }
            Err(error) => {
                crate::metrics::policy(tenant, &policy.name, error.rule(), "refused");
                Err(RelayError::Policy(crate::policy::Refused {
                    tenant: tenant.clone(),
                    route: self.route_names[index].clone(),
                    policy: policy.name.clone(),
                    error,
                }))
            }
        }
    }

    /// Stage 7: the vendor's status and allowed headers, and its body behind the tap.
    fn stream_back(
        &self,
        route: &Route,
        upstream: Response<VendorBody>,
        started: Instant,
        trace_id: Arc<str>,
        mut on_end: StreamEnd,
        hide_usage: bool,
    ) -> Response<RelayBody> {
        let (parts, body) = upstream.into_parts();
        let event_stream =
            parts.status.is_success() && crate::headers::is_event_stream(&parts.headers);
        let audit = self.config.audit;
        let log = route.resume.filter(|_| event_stream).map(|r| {
            let route_name = on_end.record.route_arc();
            let log = self.streams.open(on_end.record.tenant_arc(), r, route_name);
            on_end.resume = Some(log.clone());
            log
        });
        let tap = TapParts {
            timers: Timers::starting(
                started,
                route.first_byte_timeout,
                route.idle_timeout,
                route.total_timeout,
                route.keepalive_interval,
            ),
            scanner: event_stream
                .then(|| EventScanner::new(route.terminal_event.as_deref(), route.max_event_bytes)),
            text_max: audit.enabled.then_some(audit.max_text_bytes),
            drain: self.drain.clone(),
            trace_id: trace_id.clone(),
            error_shape: crate::tap::ErrorShape::for_dialect(route.dialect),
            usage: crate::usage::UsageScanner::new(match route.dialect.spec().usage {
                crate::config::UsageKeys::Tokens => crate::usage::Keys::Tokens,
                crate::config::UsageKeys::TokenCount => crate::usage::Keys::TokenCount,
            }),
            chunk_gap: on_end
                .meters
                .enabled
                .then(|| on_end.meters.chunk_gap.clone()),
            added_delay: on_end
                .meters
                .enabled
                .then(|| AddedDelay::new(on_end.conn.flushed(), on_end.meters.added_delay.clone())),
            hide_usage,
            on_end,
        };
        let tap = TapBody::new(body, tap);
        let stream_id = log
            .as_ref()
            .and_then(|l| HeaderValue::from_str(l.id()).ok());
        let body = match log {
            Some(log) => {
                use http_body_util::BodyExt;
                let streams = self.streams.clone();
                let follower = log.first_follower().driving(tap.boxed_unsync(), streams);
                Either::Right(Follow::Local(follower))
            }
            None => Either::Left(tap),
        };
        let mut res = Response::new(Either::Left(body));
        *res.status_mut() = parts.status;
        let headers = res.headers_mut();
        if let Some(id) = stream_id {
            headers.insert(crate::resume::STREAM_ID, id);
        }
        crate::headers::copy_response_headers(&parts.headers, headers);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        if let Ok(v) = HeaderValue::from_str(&trace_id) {
            headers.insert(TRACE_ID, v);
        }
        res
    }
}

impl Relay {
    /// Who asks about a stream (auth), named in the request's span and its metrics.
    fn caller(
        &self,
        parts: &http::request::Parts,
        trace: &RequestTrace,
        tenant: &mut Option<Arc<str>>,
    ) -> Result<crate::auth::Principal, RelayError> {
        let principal = self.auth.authenticate(&parts.headers)?;
        trace.tenant(&principal.tenant);
        *tenant = Some(principal.tenant.clone());
        Ok(principal)
    }

    /// `GET /v1/streams/{id}`: the caller (auth), then the answer it resumes, from where it asks
    /// ([`crate::resume`]).
    async fn resume(
        &self,
        parts: &http::request::Parts,
        trace: &RequestTrace,
        tenant: &mut Option<Arc<str>>,
    ) -> Result<Response<RelayBody>, RelayError> {
        let principal = self.caller(parts, trace, tenant)?;
        let path = parts.uri.path();
        let routes = &self.config.routes;
        // An answer from another replica names its route: its vendor's error shape, for an incomplete end.
        let shape_of = |route: &str| {
            let dialect = routes.iter().find(|r| r.path == route).map(|r| r.dialect);
            crate::tap::ErrorShape::for_dialect(dialect.unwrap_or_default())
        };
        let follower = self
            .streams
            .resume(
                &principal.tenant,
                (path, parts.uri.query()),
                &parts.headers,
                trace.id.clone(),
                shape_of,
            )
            .await?;
        crate::metrics::resumed();
        let from = match &follower {
            Follow::Local(_) => "this replica",
            Follow::Shared(_) => "the store",
        };
        tracing::info!(
            stream_id = %path.trim_start_matches(crate::resume::PATH_PREFIX),
            from,
            "stream resumed"
        );
        let mut res = Response::new(Either::Left(Either::Right(follower)));
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        if let Ok(v) = HeaderValue::from_str(path.trim_start_matches(crate::resume::PATH_PREFIX)) {
            headers.insert(crate::resume::STREAM_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&trace.id) {
            headers.insert(TRACE_ID, v);
        }
        Ok(res)
    }

    /// `DELETE /v1/streams/{id}`: the caller (auth), then the answer stopped → 204.
    async fn stop_stream(
        &self,
        parts: &http::request::Parts,
        trace: &RequestTrace,
        tenant: &mut Option<Arc<str>>,
    ) -> Result<Response<RelayBody>, RelayError> {
        let principal = self.caller(parts, trace, tenant)?;
        self.streams
            .stop(&principal.tenant, parts.uri.path())
            .await?;
        tracing::info!(path = parts.uri.path(), "stream stopped by its client");
        let mut res = complete(Response::new(Full::new(Bytes::new())));
        *res.status_mut() = StatusCode::NO_CONTENT;
        Ok(res)
    }
}

/// The model for a route whose vendor URL has `{model}` in its path (Azure deployments, Gemini): the request's,
/// checked to be a plain name (letters, digits, `.`, `_`, `-`; at most 128) so it cannot change the path.
fn path_model<'m>(route: &Route, model: Option<&'m str>) -> Result<Option<&'m str>, RelayError> {
    if !route.targets.iter().any(|t| t.model_in_path) {
        return Ok(None);
    }
    let model = model.ok_or(RelayError::BadModel(
        "this route needs the request to name its `model`",
    ))?;
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if model.is_empty() || model.len() > 128 || !model.chars().all(plain) {
        return Err(RelayError::BadModel(
            "`model` must be letters, digits, `.`, `_` or `-` (at most 128)",
        ));
    }
    Ok(Some(model))
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
