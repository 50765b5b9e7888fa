//! Forward: the call to the vendor. A pooled HTTP/1.1 client (TLS via rustls, set up by [`connect`]), connect and
//! response-head timeouts, the vendor credential, header hygiene ([`crate::headers`]) and failover between a
//! route's endpoints.
//!
//! The client cannot steer the call: the method is POST, the URL is the route's fixed `upstream` (the inbound path
//! and query are not used), redirects are never followed (hyper's client has no redirect support, and a 3xx answer
//! becomes [`UpstreamError::Redirect`]), and only allow-listed request headers cross. The response body is
//! returned untouched ([`hyper::body::Incoming`]); [`crate::tap`] wraps it.

pub mod connect;
mod error;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::Instant;

pub use connect::TlsFailure;
pub use error::{TlsError, UpstreamError, chain};

use crate::config::{Route, Target, TlsRoots};
use crate::metrics::RouteMeters;
use connect::{ConnectError, VendorConnector};

type VendorClient = Client<VendorConnector, Full<Bytes>>;

/// Upstream connection buffer cap: bounds what a stalled client can make the relay read ahead from the vendor.
const UPSTREAM_BUF: usize = 32 << 10;

/// One pooled client per route (the connect timeout is a connector setting); shared by the route's endpoints.
pub struct Upstream {
    client: VendorClient,
}

/// Every route's TLS client settings, in route order, built (and their files read) once at startup.
#[derive(Clone)]
pub struct VendorTls(Vec<Arc<rustls::ClientConfig>>);

/// Builds each route's TLS settings: the CAs it trusts (`tls_roots`: the system's, its `ca_file`, or both), its
/// client certificate if any, ALPN `http/1.1`. A route that cannot check an `https` vendor's certificate (no system
/// CAs found, an unreadable or empty `ca_file`) or whose client certificate cannot be loaded is refused here, at
/// startup, rather than failing every request later.
pub fn tls_config(routes: &[Route]) -> Result<VendorTls, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut native: Option<Result<Vec<CertificateDer<'static>>, String>> = None;
    let mut configs = Vec::with_capacity(routes.len());
    for (i, route) in routes.iter().enumerate() {
        let tls = &route.tls;
        let https = route
            .targets
            .iter()
            .any(|t| t.upstream.scheme_str() == Some("https"));
        let mut roots = rustls::RootCertStore::empty();
        let wants_native = matches!(tls.roots, TlsRoots::Native | TlsRoots::Both);
        if wants_native {
            if let Ok(certs) = native.get_or_insert_with(load_native) {
                roots.add_parsable_certificates(certs.iter().cloned());
            }
        }
        if let Some(path) = &tls.ca_file {
            let field = format!("routes[{i}].ca_file");
            let pem = read(&field, path)?;
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::File {
                    field,
                    path: path.display().to_string(),
                    reason: "holds no CA certificate (PEM)".into(),
                });
            }
        }
        // Plain-http routes need none: no certificate will ever be checked.
        if https && roots.is_empty() {
            let reason = match &native {
                Some(Err(why)) if wants_native => why.clone(),
                _ => "no CA certificate to check the vendor's with".into(),
            };
            return Err(TlsError::NoRoots {
                route: route.path.clone(),
                reason,
            });
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Provider)?
            .with_root_certificates(roots);
        let mut config = match &tls.client_auth {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let field = format!("routes[{i}].client_cert");
                let chain: Vec<_> = CertificateDer::pem_slice_iter(&read(&field, cert)?)
                    .filter_map(Result::ok)
                    .collect();
                let key_field = format!("routes[{i}].client_key");
                let key_der =
                    PrivateKeyDer::from_pem_slice(&read(&key_field, key)?).map_err(|e| {
                        TlsError::File {
                            field: key_field,
                            path: key.display().to_string(),
                            reason: format!("holds no private key (PEM): {e}"),
                        }
                    })?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| TlsError::File {
                        field,
                        path: cert.display().to_string(),
                        reason: format!("not a usable certificate and key: {e}"),
                    })?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        configs.push(Arc::new(config));
    }
    Ok(VendorTls(configs))
}

/// The system's CA certificates, or why there are none.
fn load_native() -> Result<Vec<CertificateDer<'static>>, String> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "no CA certificates were found (install the system's CA bundle, e.g. the ca-certificates package){}",
            if errors.is_empty() {
                String::new()
            } else {
                format!(": {}", errors.join("; "))
            }
        ));
    }
    Ok(found.certs)
}

fn read(field: &str, path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        field: field.to_owned(),
        path: path.display().to_string(),
        reason: format!("cannot be read: {e}"),
    })
}

impl Upstream {
    pub fn new(route: &Route, tls: Arc<rustls::ClientConfig>) -> Self {
        let proxy = connect::EgressProxy::new(&route.egress);
        let connector = VendorConnector::new(tls, route.connect_timeout, proxy);
        // Bounded both ways: at most `max_idle_connections` idle connections per vendor host (more are closed as
        // they come back), each closed after `pool_idle_timeout`.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(route.pool_idle_timeout)
            .pool_max_idle_per_host(route.max_idle_connections)
            .http1_max_buf_size(UPSTREAM_BUF)
            .build(connector);
        Self { client }
    }

    /// One client (one connection pool) per route, in route order.
    pub fn for_routes(routes: &[Route], tls: &VendorTls) -> Vec<Upstream> {
        routes
            .iter()
            .zip(&tls.0)
            .map(|(r, tls)| Upstream::new(r, tls.clone()))
            .collect()
    }

    /// Sends the request and waits, until `deadline` (the route's first-byte deadline), for the response head.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::FirstByteTimeout),
            Ok(Ok(res)) => Ok(res),
            Ok(Err(e)) if e.is_connect() => Err(connect_failed(e)),
            Ok(Err(e)) if TlsFailure::client_certificate_refused(&e) => {
                Err(UpstreamError::Tls(TlsFailure::ClientCertificate, e))
            }
            Ok(Err(e)) => Err(UpstreamError::Protocol(e)),
        }
    }

    /// Calls the route's endpoints in order until one answers with something other than a connect error, 429 or
    /// 5xx, or the attempts run out (the last answer is then passed on). A head timeout is not retried: that vendor
    /// may still be generating, and a second call would be paid twice. Returns the answer and the attempts it took.
    /// `trace`: the trace context headers the route sends (empty unless `propagate_trace`).
    pub async fn call(
        &self,
        route: &Route,
        meters: &RouteMeters,
        inbound: &HeaderMap,
        trace: &HeaderMap,
        body: Bytes,
        deadline: Instant,
    ) -> Result<(Response<Incoming>, usize), UpstreamError> {
        let mut attempt = 0;
        loop {
            let target = &route.targets[attempt];
            attempt += 1;
            let last = attempt >= route.max_attempts;
            let mut req = build_request(route, target, inbound, body.clone());
            for (name, value) in trace {
                req.headers_mut().insert(name.clone(), value.clone());
            }
            match self.send(req, deadline).await {
                Ok(res) => {
                    let status = res.status();
                    let class = match status.as_u16() {
                        400..=499 => Some("status_4xx"),
                        500..=599 => Some("status_5xx"),
                        _ => None,
                    };
                    let retryable =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if retryable && !last {
                        meters.upstream_error(class.unwrap_or("status_5xx"));
                        meters.failover.increment(1);
                        tracing::warn!(
                            attempt,
                            status = status.as_u16(),
                            "upstream answered an error; trying the next endpoint"
                        );
                        continue;
                    }
                    let checked = check_status(res);
                    match (&checked, class) {
                        (Err(e), _) => meters.upstream_error(e.kind()),
                        (Ok(_), Some(class)) => meters.upstream_error(class),
                        (Ok(_), None) => {}
                    }
                    return checked.map(|r| (r, attempt));
                }
                Err(e) if e.unreachable() && !last => {
                    meters.upstream_error(e.kind());
                    meters.failover.increment(1);
                    tracing::warn!(attempt, error = %chain(&e), "upstream unreachable; trying the next endpoint");
                }
                Err(e) => {
                    meters.upstream_error(e.kind());
                    return Err(e);
                }
            }
        }
    }
}

/// Vendor answers the client must not see as they are: our key rejected (401/403), redirects, 1xx.
fn check_status(res: Response<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
    let status = res.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        // The vendor key is ours: the client cannot fix this, the operator must.
        return Err(UpstreamError::Credential(status));
    }
    if status.is_redirection() || status.is_informational() {
        return Err(UpstreamError::Redirect(status));
    }
    Ok(res)
}

/// Names a failed connection set-up by the step that failed ([`ConnectError`]).
fn connect_failed(e: hyper_util::client::legacy::Error) -> UpstreamError {
    let step = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<ConnectError>());
    match step {
        Some(ConnectError::Tls(failure, _)) => UpstreamError::Tls(*failure, e),
        Some(ConnectError::TlsTimeout(_)) => UpstreamError::TlsTimeout(e),
        Some(ConnectError::TcpTimeout(_)) => UpstreamError::ConnectTimeout(e),
        Some(ConnectError::Proxy { .. }) => UpstreamError::Proxy(e),
        Some(ConnectError::ProxyTimeout { .. }) => UpstreamError::ProxyTimeout(e),
        _ if caused_by_timeout(&e) => UpstreamError::ConnectTimeout(e),
        _ => UpstreamError::Connect(e),
    }
}

fn caused_by_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The upstream request: fixed method and URL, allow-listed headers, the vendor secret, `Accept-Encoding: identity`.
pub fn build_request(
    route: &Route,
    target: &Target,
    inbound: &HeaderMap,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = target.upstream.clone();
    let headers = req.headers_mut();
    for (name, value) in crate::headers::forwarded(inbound, &route.forward_headers) {
        headers.append(name.clone(), value.clone());
    }
    let (name, value) = target.secret.header();
    headers.insert(name.clone(), value.clone());
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    req
}
