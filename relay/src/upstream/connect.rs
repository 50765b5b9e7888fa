//! Setting up a vendor connection: TCP, then TLS for `https`, the whole set-up bounded by the route's connect
//! timeout, and each failure named by the step that failed ([`ConnectError`]), so that a certificate problem is
//! reported as one ([`TlsFailure`]) rather than as a generic connect error.
//!
//! hyper-rustls's connector does the same two steps but bounds only the TCP connect (a vendor, or anything on the
//! way, that accepts and then never finishes the handshake held the request until the first-byte timeout) and
//! folds a handshake failure into an opaque `io::Error`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What a vendor connection is: plain, or TLS over TCP.
pub type VendorStream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Why a vendor connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect failed")]
    Tcp(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("connect timed out ({0:?})")]
    TcpTimeout(Duration),
    #[error("TLS handshake failed ({})", .0.reason())]
    Tls(TlsFailure, #[source] std::io::Error),
    #[error("TLS handshake timed out ({0:?} for connect and handshake)")]
    TlsTimeout(Duration),
    #[error("the upstream host is not a valid TLS server name")]
    ServerName(#[source] rustls::pki_types::InvalidDnsNameError),
}

/// A failed TLS handshake, by cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate is not signed by a CA the route trusts.
    UnknownCa,
    Expired,
    /// The certificate is not valid for the upstream's host name.
    WrongHost,
    /// Anything else: a protocol alert, no shared cipher suite, a certificate refused for another reason.
    Handshake,
}

impl TlsFailure {
    /// The name in the log line.
    pub fn reason(self) -> &'static str {
        match self {
            TlsFailure::UnknownCa => "unknown_ca",
            TlsFailure::Expired => "certificate_expired",
            TlsFailure::WrongHost => "certificate_host_mismatch",
            TlsFailure::Handshake => "handshake_failed",
        }
    }

    fn of(err: &std::io::Error) -> Self {
        use rustls::CertificateError as C;
        let rustls_err = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        match rustls_err {
            Some(rustls::Error::InvalidCertificate(c)) => match c {
                C::UnknownIssuer => TlsFailure::UnknownCa,
                C::Expired | C::ExpiredContext { .. } => TlsFailure::Expired,
                C::NotValidForName | C::NotValidForNameContext { .. } => TlsFailure::WrongHost,
                _ => TlsFailure::Handshake,
            },
            _ => TlsFailure::Handshake,
        }
    }
}

/// The connector of one route's client.
#[derive(Clone)]
pub struct VendorConnector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
    /// For TCP connect and TLS handshake together.
    timeout: Duration,
}

impl VendorConnector {
    pub fn new(tls: Arc<rustls::ClientConfig>, timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        Self {
            http,
            tls: tokio_rustls::TlsConnector::from(tls),
            timeout,
        }
    }
}

impl tower_service::Service<Uri> for VendorConnector {
    type Response = VendorStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<VendorStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.http
            .poll_ready(cx)
            .map_err(|e| ConnectError::Tcp(Box::new(e)))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let https = dst.scheme_str() == Some("https");
        let host = dst.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let connecting = self.http.call(dst);
        let (tls, timeout) = (self.tls.clone(), self.timeout);
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let tcp = match tokio::time::timeout_at(deadline, connecting).await {
                Err(_) => return Err(ConnectError::TcpTimeout(timeout)),
                Ok(Err(e)) => return Err(ConnectError::Tcp(Box::new(e))),
                Ok(Ok(tcp)) => tcp,
            };
            if !https {
                return Ok(MaybeHttpsStream::Http(tcp));
            }
            let name = ServerName::try_from(host).map_err(ConnectError::ServerName)?;
            let handshake = tls.connect(name, TokioIo::new(tcp));
            match tokio::time::timeout_at(deadline, handshake).await {
                Err(_) => Err(ConnectError::TlsTimeout(timeout)),
                Ok(Err(e)) => Err(ConnectError::Tls(TlsFailure::of(&e), e)),
                Ok(Ok(stream)) => Ok(MaybeHttpsStream::Https(TokioIo::new(stream))),
            }
        })
    }
}
