//! What can go wrong calling the vendor, classified so that [`crate::error`] can pick the status (502 or 504) and
//! failover can tell what may be retried. The underlying error stays reachable through `source()`.

use http::StatusCode;

/// What lies under an [`UpstreamError`]: a [`super::connect::ConnectError`], an [`super::exchange::ReadError`]
/// or the IO error that carried a TLS alert.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

use super::connect::TlsFailure;

/// Failures talking to the vendor, before its response head reached the relay (or because of what it said).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream connection failed")]
    Connect(#[source] Cause),
    #[error("upstream connect timed out")]
    ConnectTimeout(#[source] Cause),
    #[error("upstream TLS handshake failed ({})", .0.reason())]
    Tls(TlsFailure, #[source] Cause),
    #[error("upstream TLS handshake timed out")]
    TlsTimeout(#[source] Cause),
    #[error("egress proxy failed")]
    Proxy(#[source] Cause),
    #[error("egress proxy tunnel timed out")]
    ProxyTimeout(#[source] Cause),
    #[error("upstream sent no response head within the first-byte timeout")]
    FirstByteTimeout,
    #[error("upstream protocol error")]
    Protocol(#[source] Cause),
    #[error("upstream answered with a redirect ({0}), which is never followed")]
    Redirect(StatusCode),
    #[error("upstream rejected the relay's vendor credential ({0})")]
    Credential(StatusCode),
}

impl UpstreamError {
    /// A fixed name for metrics: `connect`, `tls`, `proxy`, `timeout`, `protocol`, `redirect`, `credential`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Tls(..) | UpstreamError::TlsTimeout(_) => "tls",
            UpstreamError::Proxy(_) | UpstreamError::ProxyTimeout(_) => "proxy",
            UpstreamError::ConnectTimeout(_) | UpstreamError::FirstByteTimeout => "timeout",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Redirect(_) => "redirect",
            UpstreamError::Credential(_) => "credential",
        }
    }

    /// Whether another endpoint may be tried: nothing reached the vendor's application, so nothing was paid for.
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_)
                | UpstreamError::ConnectTimeout(_)
                | UpstreamError::Tls(..)
                | UpstreamError::TlsTimeout(_)
                | UpstreamError::Proxy(_)
                | UpstreamError::ProxyTimeout(_)
        )
    }
}

/// Why the vendor connection cannot be set up at all (a startup error: exit 64).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("route `{route}` calls an https upstream, but {reason}")]
    NoRoots { route: String, reason: String },
    #[error("{field}: {path} {reason}")]
    File {
        field: String,
        path: String,
        reason: String,
    },
    #[error("cannot set up TLS")]
    Provider(#[source] rustls::Error),
}

/// `err` and its sources, joined with `: `, for one log line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let next = e.to_string();
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = e.source();
    }
    s
}
