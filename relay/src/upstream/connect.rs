//! Setting up a vendor connection: TCP (to the vendor, or to the egress proxy and then an HTTP `CONNECT` tunnel
//! through it), then TLS for `https` (inside the tunnel), the whole set-up bounded by the route's connect timeout,
//! and each failure named by the step that failed ([`ConnectError`]), so that a certificate problem or a proxy's
//! refusal is reported as one ([`TlsFailure`], [`ProxyFailure`]) rather than as a generic connect error.
//!
//! Which proxy, if any: [`EgressProxy`], from the route's `proxy` or the environment (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`, `NO_PROXY`; hyper-util's matcher). Every vendor connection is a tunnel, `https` and `http` alike, so
//! the proxy sees only the vendor's host and port; credentials go in `Proxy-Authorization` and are never logged
//! (errors name the proxy by host and port).
//!
//! hyper-rustls's connector (which the relay used before it had its own client) does the same two steps but bounds
//! only the TCP connect (a vendor, or anything on the way, that accepts and then never finishes the handshake held
//! the request until the first-byte timeout) and folds a handshake failure into an opaque `io::Error`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{Egress, ProxyConfig};

/// What a vendor connection is: plain, or TLS over TCP.
pub enum VendorStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for VendorStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            VendorStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            VendorStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for VendorStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            VendorStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            VendorStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            VendorStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            VendorStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            VendorStream::Plain(s) => s.is_write_vectored(),
            VendorStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            VendorStream::Plain(s) => Pin::new(s).poll_flush(cx),
            VendorStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            VendorStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            VendorStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

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
    #[error("egress proxy {proxy}: {failure}")]
    Proxy {
        proxy: String,
        failure: ProxyFailure,
    },
    #[error("egress proxy {proxy}: tunnel not set up within {timeout:?}")]
    ProxyTimeout { proxy: String, timeout: Duration },
}

/// What went wrong with the egress proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyFailure {
    #[error("cannot connect")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// It answered `CONNECT` with this status (407: credentials missing or wrong, 403: not allowed, 502: it could
    /// not reach the vendor).
    #[error("refused the tunnel ({0})")]
    Refused(u16),
    #[error("broke off the tunnel set-up")]
    Broken(#[source] std::io::Error),
    #[error("answered CONNECT with something that is not HTTP")]
    Garbled,
}

/// A route's egress proxy: which proxy a vendor URL goes through, with which credentials.
pub struct EgressProxy {
    matcher: Matcher,
    /// From `proxy_auth_file`; otherwise the proxy URL's user info is used.
    auth: Option<HeaderValue>,
}

impl EgressProxy {
    /// `None` when the route never uses a proxy.
    pub fn new(egress: &Egress) -> Option<Self> {
        if egress.proxy.is_direct() {
            return None;
        }
        let builder = match &egress.proxy {
            ProxyConfig::Off => return None,
            ProxyConfig::Route { url } => Matcher::builder().all(url.clone()),
            ProxyConfig::Env {
                http,
                https,
                all,
                no_proxy,
            } => Matcher::builder()
                .http(http.clone())
                .https(https.clone())
                .all(all.clone())
                .no(no_proxy.clone()),
        };
        let auth = egress.auth.as_deref().map(|user_password| {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(user_password);
            let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            value.set_sensitive(true);
            value
        });
        Some(Self {
            matcher: builder.build(),
            auth,
        })
    }

    /// The proxy for `dst` (`None`: straight to the vendor) and the `Proxy-Authorization` to send it.
    fn route(&self, dst: &Uri) -> Option<(Uri, Option<HeaderValue>)> {
        let hop = self.matcher.intercept(dst)?;
        let auth = self.auth.clone().or_else(|| hop.basic_auth().cloned());
        Some((hop.uri().clone(), auth))
    }
}

/// Asks the proxy on `conn` for a tunnel to `host:port`; the connection is the tunnel once it answers 200.
async fn tunnel(
    conn: &mut TcpStream,
    host: &str,
    port: u16,
    auth: Option<&HeaderValue>,
) -> Result<(), ProxyFailure> {
    // IPv6 literals keep their brackets in the request target.
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(auth) = auth {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    conn.write_all(&head).await.map_err(ProxyFailure::Broken)?;
    // The answer's head, read whole before anything else is sent (the proxy sends nothing after it until the
    // client speaks). Its body, if a refusal has one, is never read: the connection is dropped.
    let mut buf = vec![0u8; 8 << 10];
    let mut len = 0;
    loop {
        let n = conn
            .read(&mut buf[len..])
            .await
            .map_err(ProxyFailure::Broken)?;
        if n == 0 {
            return Err(ProxyFailure::Broken(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        match res.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                return match res.code {
                    Some(code) if (200..300).contains(&code) => Ok(()),
                    Some(code) => Err(ProxyFailure::Refused(code)),
                    None => Err(ProxyFailure::Garbled),
                };
            }
            Ok(httparse::Status::Partial) if len < buf.len() => {}
            _ => return Err(ProxyFailure::Garbled),
        }
    }
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
    /// The vendor refused the relay's client certificate (or its absence). Under TLS 1.3 the client's handshake
    /// is done before the server has checked it, so this arrives as an alert when the answer is read.
    ClientCertificate,
}

impl TlsFailure {
    /// The name in the log line.
    pub fn reason(self) -> &'static str {
        match self {
            TlsFailure::UnknownCa => "unknown_ca",
            TlsFailure::Expired => "certificate_expired",
            TlsFailure::WrongHost => "certificate_host_mismatch",
            TlsFailure::Handshake => "handshake_failed",
            TlsFailure::ClientCertificate => "client_certificate_rejected",
        }
    }

    /// Whether `err` (any error in its chain) is the vendor's alert refusing the relay's client certificate.
    pub fn client_certificate_refused(err: &(dyn std::error::Error + 'static)) -> bool {
        use rustls::AlertDescription as A;
        let mut cur = Some(err);
        while let Some(e) = cur {
            let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
                e.downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            });
            if let Some(rustls::Error::AlertReceived(
                A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::CertificateUnknown,
            )) = tls
            {
                return true;
            }
            cur = e.source();
        }
        false
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
    /// For TCP connect, proxy tunnel and TLS handshake together.
    timeout: Duration,
    proxy: Option<Arc<EgressProxy>>,
}

impl VendorConnector {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
        proxy: Option<EgressProxy>,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        Self {
            http,
            tls: tokio_rustls::TlsConnector::from(tls),
            timeout,
            proxy: proxy.map(Arc::new),
        }
    }
}

impl VendorConnector {
    /// A new connection to `dst`'s host and port (through the egress proxy if one applies), TLS for `https`.
    pub async fn connect(&self, dst: &Uri) -> Result<VendorStream, ConnectError> {
        let https = dst.scheme_str() == Some("https");
        let host = dst.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let port = dst.port_u16().unwrap_or(if https { 443 } else { 80 });
        let hop = self.proxy.as_ref().and_then(|p| p.route(dst));
        let mut http = self.http.clone();
        let connecting = tower_service::Service::call(
            &mut http,
            hop.as_ref()
                .map_or_else(|| dst.clone(), |(proxy, _)| proxy.clone()),
        );
        // The proxy by host and port only: its URL's user info never reaches an error.
        let via = hop.map(|(proxy, auth)| {
            let name = proxy
                .authority()
                .map_or_else(String::new, ToString::to_string);
            (name, auth)
        });
        let (tls, timeout) = (&self.tls, self.timeout);
        let deadline = Instant::now() + timeout;
        let connected = tokio::time::timeout_at(deadline, connecting).await;
        let tcp = match (via, connected) {
            (None, Err(_)) => return Err(ConnectError::TcpTimeout(timeout)),
            (None, Ok(Err(e))) => return Err(ConnectError::Tcp(Box::new(e))),
            (None, Ok(Ok(tcp))) => tcp.into_inner(),
            (Some((proxy, _)), Err(_)) => {
                return Err(ConnectError::ProxyTimeout { proxy, timeout });
            }
            (Some((proxy, _)), Ok(Err(e))) => {
                let failure = ProxyFailure::Unreachable(Box::new(e));
                return Err(ConnectError::Proxy { proxy, failure });
            }
            (Some((proxy, auth)), Ok(Ok(tcp))) => {
                let mut stream = tcp.into_inner();
                let tunnelled = tokio::time::timeout_at(
                    deadline,
                    tunnel(&mut stream, &host, port, auth.as_ref()),
                );
                match tunnelled.await {
                    Err(_) => return Err(ConnectError::ProxyTimeout { proxy, timeout }),
                    Ok(Err(failure)) => return Err(ConnectError::Proxy { proxy, failure }),
                    Ok(Ok(())) => stream,
                }
            }
        };
        if !https {
            return Ok(VendorStream::Plain(tcp));
        }
        let name = ServerName::try_from(host).map_err(ConnectError::ServerName)?;
        let handshake = tls.connect(name, tcp);
        match tokio::time::timeout_at(deadline, handshake).await {
            Err(_) => Err(ConnectError::TlsTimeout(timeout)),
            Ok(Err(e)) => Err(ConnectError::Tls(TlsFailure::of(&e), e)),
            Ok(Ok(stream)) => Ok(VendorStream::Tls(Box::new(stream))),
        }
    }
}
