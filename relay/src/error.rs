//! Errors that end a request before its stream starts, and the one function that turns them into responses.
//!
//! Each stage has its own error type beside its code ([`RouteError`], [`AuthError`], [`LimitError`],
//! [`BodyError`], [`UpstreamError`]); [`RelayError`] only gathers them. Classified by source, as pingora does:
//! client errors are 4xx, upstream failures 502 (connect, protocol) or 504 (timeout), our own faults 500 with a
//! generic body. Bodies are JSON: `{"error":{"type","message","trace_id"}}`, where `type` is the fixed
//! [`RelayError::kind`] string (safe for metric labels). The message never names the upstream host or carries a
//! secret. Each error is logged once, here, with its whole `source()` chain.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::auth::AuthError;
use crate::body::BodyError;
use crate::limit::{LimitError, RateOf};
use crate::policy::Refused;
use crate::resume::ResumeError;
use crate::route::RouteError;
use crate::trace::TRACE_ID;
use crate::upstream::{UpstreamError, chain};

/// Errors a relayed body may end with (only on bodies that are not event streams), and of request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request failed before any upstream byte reached the client.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A request head larger than `max_header_bytes` that arrived in one read (hyper refuses the others itself).
    #[error("request head exceeds {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error(transparent)]
    Limited(#[from] LimitError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// The route puts the model in the vendor's path and the request names none, or one that cannot go in a path.
    #[error("{0}")]
    BadModel(&'static str),
    /// The caller's request policy refused the request ([`crate::policy`]).
    #[error(transparent)]
    Policy(#[from] Refused),
}

impl RelayError {
    /// A fixed, low-cardinality name for logs, metrics and the JSON `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            RelayError::HeadTooLarge { .. } => "headers_too_large",
            RelayError::Route(RouteError::NotFound) => "not_found",
            RelayError::Route(RouteError::MethodNotAllowed) => "method_not_allowed",
            RelayError::Unauthorized(_) => "unauthorized",
            RelayError::Limited(LimitError::Total) => "overloaded",
            RelayError::Limited(LimitError::StoreUnavailable) => "store_unavailable",
            RelayError::Limited(
                LimitError::Tenant | LimitError::Requests(_) | LimitError::Tokens(_),
            ) => "rate_limited",
            RelayError::Limited(LimitError::Quota(_)) => "quota_exceeded",
            RelayError::Body(BodyError::TooLarge { .. }) => "payload_too_large",
            RelayError::Body(BodyError::Unreadable(_)) => "bad_request_body",
            RelayError::Upstream(UpstreamError::Connect(_)) => "upstream_connect",
            RelayError::Upstream(UpstreamError::Tls(..) | UpstreamError::TlsTimeout(_)) => {
                "upstream_tls"
            }
            RelayError::Upstream(UpstreamError::Proxy(_) | UpstreamError::ProxyTimeout(_)) => {
                "upstream_proxy"
            }
            RelayError::Upstream(
                UpstreamError::ConnectTimeout(_) | UpstreamError::FirstByteTimeout,
            ) => "upstream_timeout",
            RelayError::Upstream(UpstreamError::Protocol(_)) => "upstream_protocol",
            RelayError::Upstream(UpstreamError::Redirect(_)) => "upstream_redirect",
            RelayError::Upstream(UpstreamError::Credential(_)) => "upstream_credential",
            RelayError::Resume(ResumeError::NotFound) => "stream_not_found",
            RelayError::Resume(ResumeError::Gone) => "stream_gone",
            RelayError::Resume(ResumeError::BadRequest(_)) => "bad_resume",
            RelayError::Resume(ResumeError::StoreUnavailable) => "store_unavailable",
            RelayError::Policy(_) => "policy_refused",
            RelayError::BadModel(_) => "bad_model",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            RelayError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RelayError::Route(RouteError::NotFound) => StatusCode::NOT_FOUND,
            RelayError::Route(RouteError::MethodNotAllowed) => StatusCode::METHOD_NOT_ALLOWED,
            RelayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RelayError::Limited(LimitError::Total | LimitError::StoreUnavailable) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RelayError::Limited(
                LimitError::Tenant
                | LimitError::Requests(_)
                | LimitError::Tokens(_)
                | LimitError::Quota(_),
            ) => StatusCode::TOO_MANY_REQUESTS,
            RelayError::Body(BodyError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            RelayError::Body(BodyError::Unreadable(_)) => StatusCode::BAD_REQUEST,
            RelayError::Upstream(
                UpstreamError::ConnectTimeout(_)
                | UpstreamError::FirstByteTimeout
                | UpstreamError::TlsTimeout(_)
                | UpstreamError::ProxyTimeout(_),
            ) => StatusCode::GATEWAY_TIMEOUT,
            RelayError::Upstream(_) => StatusCode::BAD_GATEWAY,
            RelayError::Resume(ResumeError::NotFound) => StatusCode::NOT_FOUND,
            RelayError::Resume(ResumeError::Gone) => StatusCode::GONE,
            RelayError::Resume(ResumeError::BadRequest(_)) => StatusCode::BAD_REQUEST,
            RelayError::Resume(ResumeError::StoreUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            RelayError::Policy(p) => p.error.status(),
            RelayError::BadModel(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// What the client is told. Upstream details stay in the log.
    fn public_message(&self) -> String {
        match self {
            RelayError::Upstream(UpstreamError::Connect(_)) => {
                "could not connect to the upstream".into()
            }
            RelayError::Upstream(UpstreamError::Protocol(_)) => {
                "the upstream answered with an invalid response".into()
            }
            // Which certificate check failed is for the operator (the log line), not for the client.
            RelayError::Upstream(UpstreamError::Tls(..)) => {
                "could not set up a trusted TLS connection to the upstream".into()
            }
            RelayError::Upstream(UpstreamError::Proxy(_)) => {
                "the egress proxy did not connect the relay to the upstream".into()
            }
            RelayError::Upstream(UpstreamError::Credential(_)) => {
                "the upstream rejected the relay's credential; the operator has been told".into()
            }
            other => other.to_string(),
        }
    }
}

/// The one error → response function. Logs the error once.
pub fn respond(err: &RelayError, trace_id: &str) -> Response<Full<Bytes>> {
    let status = err.status();
    if !matches!(err, RelayError::Upstream(_)) {
        crate::metrics::rejected(err.kind());
    }
    if status.is_server_error() {
        tracing::warn!(error.kind = err.kind(), status = status.as_u16(), error = %chain(err), "request failed");
    } else if let RelayError::Policy(p) = err {
        // The request's record (audit target, like a stream's): who, which policy, which rule.
        tracing::info!(
            target: "ssegate::audit",
            tenant = %p.tenant,
            route = %p.route,
            trace_id,
            status = status.as_u16(),
            outcome = err.kind(),
            policy = %p.policy,
            rule = p.error.rule(),
            error = %p.error,
            "request refused by policy"
        );
    } else if let RelayError::Unauthorized(e) = err {
        // Which check failed is for the operator only: the client gets the same 401 for every one.
        tracing::info!(
            error.kind = err.kind(),
            status = status.as_u16(),
            reason = e.reason,
            "request rejected"
        );
    } else {
        tracing::info!(
            error.kind = err.kind(),
            status = status.as_u16(),
            "request rejected"
        );
    }
    let mut res = match err {
        // OpenAI's error shape: the SDKs raise on `type`/`code`/`param` (a `BadRequestError` naming the rule).
        RelayError::Policy(p) => {
            let body = serde_json::json!({"error": {
                "type": err.kind(),
                "code": p.error.rule(),
                "param": p.error.param(),
                "message": p.error.to_string(),
                "trace_id": trace_id,
            }});
            with_trace_id(json(status, &body), trace_id)
        }
        _ => json_response(status, err.kind(), &err.public_message(), trace_id),
    };
    let extra = match err {
        RelayError::Unauthorized(_) => Some((header::WWW_AUTHENTICATE, "Bearer")),
        RelayError::Limited(_) => Some((header::RETRY_AFTER, "1")),
        RelayError::Route(RouteError::MethodNotAllowed) => Some((header::ALLOW, "POST")),
        _ => None,
    };
    if let Some((name, value)) = extra {
        res.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    // When a request will be admitted again, in whole seconds, rounded up; and the refused rate's headers.
    let retry = match err {
        RelayError::Limited(LimitError::Requests(r)) => {
            crate::limit::rate_headers(RateOf::Requests, &r.state, res.headers_mut());
            Some(r.retry_after)
        }
        RelayError::Limited(LimitError::Tokens(r)) => {
            crate::limit::rate_headers(RateOf::Tokens, &r.state, res.headers_mut());
            Some(r.retry_after)
        }
        RelayError::Limited(LimitError::Quota(q)) => Some(q.retry_after),
        _ => None,
    };
    if let Some(after) = retry {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    res
}

/// A JSON body that is not to be cached (the relay's own answers: errors, the admin listener's reports).
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A JSON error body with the trace id header set.
pub fn json_response(
    status: StatusCode,
    kind: &str,
    message: &str,
    trace_id: &str,
) -> Response<Full<Bytes>> {
    let body =
        serde_json::json!({"error": {"type": kind, "message": message, "trace_id": trace_id}});
    with_trace_id(json(status, &body), trace_id)
}

fn with_trace_id(mut res: Response<Full<Bytes>>, trace_id: &str) -> Response<Full<Bytes>> {
    if let Ok(v) = HeaderValue::from_str(trace_id) {
        res.headers_mut().insert(TRACE_ID, v);
    }
    res
}
