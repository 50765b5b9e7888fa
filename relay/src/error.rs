//! Errors that end a request before its stream starts, and the one function that turns them into responses.
//!
//! Classified by source, as pingora does: client errors are 4xx, upstream failures 502 (connect, protocol) or 504
//! (timeout), our own faults 500 with a generic body. Bodies are JSON: `{"error":{"type","message","trace_id"}}`,
//! where `type` is the fixed [`RelayError::kind`] string (safe for metric labels). The message never names the
//! upstream host or carries a secret. Each error is logged once, here.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::auth::AuthError;
use crate::rate_limit::RateLimitError;

/// Why a request failed before any upstream byte reached the client.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error(transparent)]
    RateLimited(#[from] RateLimitError),
    #[error("no route for this path")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("cannot read request body")]
    BadBody,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Failures talking to the vendor.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream connection failed: {0}")]
    Connect(String),
    #[error("upstream connect timed out")]
    ConnectTimeout,
    #[error("upstream sent no response head within the first-byte timeout")]
    FirstByteTimeout,
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream answered with a redirect ({0}), which is never followed")]
    Redirect(StatusCode),
    #[error("upstream rejected the relay's vendor credential ({0})")]
    Credential(StatusCode),
}

impl RelayError {
    /// A fixed, low-cardinality name for logs, metrics and the JSON `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            RelayError::Unauthorized(_) => "unauthorized",
            RelayError::RateLimited(RateLimitError::Total) => "overloaded",
            RelayError::RateLimited(RateLimitError::Tenant) => "rate_limited",
            RelayError::NotFound => "not_found",
            RelayError::MethodNotAllowed => "method_not_allowed",
            RelayError::PayloadTooLarge { .. } => "payload_too_large",
            RelayError::BadBody => "bad_request_body",
            RelayError::Upstream(UpstreamError::Connect(_)) => "upstream_connect",
            RelayError::Upstream(
                UpstreamError::ConnectTimeout | UpstreamError::FirstByteTimeout,
            ) => "upstream_timeout",
            RelayError::Upstream(UpstreamError::Protocol(_)) => "upstream_protocol",
            RelayError::Upstream(UpstreamError::Redirect(_)) => "upstream_redirect",
            RelayError::Upstream(UpstreamError::Credential(_)) => "upstream_credential",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            RelayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RelayError::RateLimited(RateLimitError::Total) => StatusCode::SERVICE_UNAVAILABLE,
            RelayError::RateLimited(RateLimitError::Tenant) => StatusCode::TOO_MANY_REQUESTS,
            RelayError::NotFound => StatusCode::NOT_FOUND,
            RelayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RelayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RelayError::BadBody => StatusCode::BAD_REQUEST,
            RelayError::Upstream(
                UpstreamError::ConnectTimeout | UpstreamError::FirstByteTimeout,
            ) => StatusCode::GATEWAY_TIMEOUT,
            RelayError::Upstream(_) => StatusCode::BAD_GATEWAY,
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
    if status.is_server_error() {
        tracing::warn!(error.kind = err.kind(), status = status.as_u16(), error = %err, "request failed");
    } else {
        tracing::info!(
            error.kind = err.kind(),
            status = status.as_u16(),
            "request rejected"
        );
    }
    let mut res = json_response(status, err.kind(), &err.public_message(), trace_id);
    if matches!(err, RelayError::Unauthorized(_)) {
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if matches!(err, RelayError::RateLimited(_)) {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if matches!(err, RelayError::MethodNotAllowed) {
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
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
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(trace_id) {
        res.headers_mut().insert(crate::stack::TRACE_ID, v);
    }
    res
}
