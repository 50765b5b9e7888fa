//! Forward: the call to the vendor. An HTTP/1.1 client of its own: connections set up by [`connect`] (TCP or an
//! egress proxy's tunnel, TLS via rustls), kept per endpoint in a pool (`upstream/pool.rs`), the request written and
//! the response read by [`exchange`] with the parser in [`h1`], in the stream's own task. Connect and response-head
//! timeouts, the vendor credential, header hygiene ([`crate::headers`]) and failover between a route's endpoints.
//!
//! The client cannot steer the call: the method is POST, the URL is the route's fixed `upstream` (the inbound path
//! and query are not used), redirects are never followed (a 3xx answer becomes [`UpstreamError::Redirect`]), and
//! only allow-listed request headers cross. The response body ([`VendorBody`]) yields slices of the connection's
//! read buffer, untouched; [`crate::tap`] wraps it.

pub mod connect;
mod error;
pub mod exchange;
pub use relay_wire::h1;
mod pool;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Response, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::Instant;

pub use connect::TlsFailure;
pub use error::{TlsError, UpstreamError, chain};

use crate::config::{Route, Target, TlsRoots};
use crate::metrics::RouteMeters;
use connect::{ConnectError, VendorConnector};
pub use exchange::VendorBody;
use exchange::{Conn, ReadError};
use pool::Pool;

/// One route's vendor calls: its connector (egress proxy, TLS, connect timeout) and one pool of idle connections
/// per endpoint.
pub struct Upstream {
    connector: VendorConnector,
    pools: Vec<Arc<Pool>>,
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
        let roots = route_roots(i, route, &mut native)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Provider)?
            .with_root_certificates(roots);
        let mut config = with_client_auth(i, builder, route.tls.client_auth.as_ref())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        configs.push(Arc::new(config));
    }
    Ok(VendorTls(configs))
}

/// The CA roots route `i` checks its vendors with: the system's (loaded once, into `native`), its `ca_file`'s, or
/// both. An `https` route with none is refused; plain-http routes need none (no certificate will be checked).
fn route_roots(
    i: usize,
    route: &Route,
    native: &mut Option<Result<Vec<CertificateDer<'static>>, String>>,
) -> Result<rustls::RootCertStore, TlsError> {
    let tls = &route.tls;
    let mut roots = rustls::RootCertStore::empty();
    let wants_native = matches!(tls.roots, TlsRoots::Native | TlsRoots::Both);
    if wants_native && let Ok(certs) = native.get_or_insert_with(load_native) {
        roots.add_parsable_certificates(certs.iter().cloned());
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
    let https = route
        .targets
        .iter()
        .any(|t| t.upstream.scheme_str() == Some("https"));
    if https && roots.is_empty() {
        let reason = match native {
            Some(Err(why)) if wants_native => why.clone(),
            _ => "no CA certificate to check the vendor's with".into(),
        };
        return Err(TlsError::NoRoots {
            route: route.path.clone(),
            reason,
        });
    }
    Ok(roots)
}

/// Route `i`'s client certificate and key (`client_cert`, `client_key`), when it presents one to its vendors.
fn with_client_auth(
    i: usize,
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    client_auth: Option<&(PathBuf, PathBuf)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let Some((cert, key)) = client_auth else {
        return Ok(builder.with_no_client_auth());
    };
    let field = format!("routes[{i}].client_cert");
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&read(&field, cert)?)
        .filter_map(Result::ok)
        .collect();
    let key_field = format!("routes[{i}].client_key");
    let key_der =
        PrivateKeyDer::from_pem_slice(&read(&key_field, key)?).map_err(|e| TlsError::File {
            field: key_field,
            path: key.display().to_string(),
            reason: format!("holds no private key (PEM): {e}"),
        })?;
    builder
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| TlsError::File {
            field,
            path: cert.display().to_string(),
            reason: format!("not a usable certificate and key: {e}"),
        })
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
        // Bounded both ways: at most `max_idle_connections` idle connections per endpoint (more are closed as
        // they come back), each closed after `pool_idle_timeout`.
        let pools = route
            .targets
            .iter()
            .map(|_| {
                Arc::new(Pool::new(
                    route.max_idle_connections,
                    route.pool_idle_timeout,
                ))
            })
            .collect();
        Self { connector, pools }
    }

    /// One client (one set of connection pools) per route, in route order.
    pub fn for_routes(routes: &[Route], tls: &VendorTls) -> Vec<Upstream> {
        routes
            .iter()
            .zip(&tls.0)
            .map(|(r, tls)| Upstream::new(r, tls.clone()))
            .collect()
    }

    /// Sends the request to endpoint `target` and waits, until `deadline` (the route's first-byte deadline), for
    /// the response head.
    async fn send(
        &self,
        target: &Target,
        index: usize,
        head: &[u8],
        body: &[u8],
        deadline: Instant,
    ) -> Result<Response<VendorBody>, UpstreamError> {
        match tokio::time::timeout_at(deadline, self.exchange(target, index, head, body)).await {
            Err(_) => Err(UpstreamError::FirstByteTimeout),
            Ok(answer) => answer,
        }
    }

    async fn exchange(
        &self,
        target: &Target,
        index: usize,
        head: &[u8],
        body: &[u8],
    ) -> Result<Response<VendorBody>, UpstreamError> {
        let pool = &self.pools[index];
        let mut conn = match pool.take() {
            Some(mut idle) => match idle.send(head, body).await {
                Ok(()) => {
                    tracing::trace!(
                        endpoint = index,
                        "vendor request sent on a pooled connection"
                    );
                    idle
                }
                // It passed the check and then could not take the request: it was closing as it was taken, and
                // nothing reached the vendor. A new connection, as if there had been no idle one.
                Err(e) => {
                    let why = "pooled vendor connection closed on reuse; connecting";
                    tracing::debug!(endpoint = index, error = %e, "{why}");
                    self.connected(target, head, body).await?
                }
            },
            None => self.connected(target, head, body).await?,
        };
        let answer = conn.read_head().await.map_err(|e| match e {
            ReadError::Io(io) if TlsFailure::client_certificate_refused(&io) => {
                UpstreamError::Tls(TlsFailure::ClientCertificate, Box::new(io))
            }
            e => UpstreamError::Protocol(Box::new(e)),
        })?;
        tracing::trace!(
            status = answer.status.as_u16(),
            framing = ?answer.framing,
            keep_alive = answer.keep_alive,
            "vendor response head"
        );
        Ok(exchange::response(conn, answer, Some(pool.clone())))
    }

    /// A new connection to `target` with the request written to it.
    async fn connected(
        &self,
        target: &Target,
        head: &[u8],
        body: &[u8],
    ) -> Result<Conn, UpstreamError> {
        let io = self
            .connector
            .connect(&target.upstream)
            .await
            .map_err(connect_failed)?;
        let mut conn = Conn::new(io);
        conn.send(head, body).await.map_err(|e| {
            if TlsFailure::client_certificate_refused(&e) {
                UpstreamError::Tls(TlsFailure::ClientCertificate, Box::new(e))
            } else {
                UpstreamError::Protocol(Box::new(ReadError::Io(e)))
            }
        })?;
        tracing::trace!("vendor request sent on a new connection");
        Ok(conn)
    }

    /// Calls the route's endpoints in order until one answers with something other than a connect error, 429 or
    /// 5xx, or the attempts run out (the last answer is then passed on). A head timeout is not retried: that vendor
    /// may still be generating, and a second call would be paid twice. Returns the answer and the attempts it took.
    /// `trace`: the trace context headers the route sends (empty unless `propagate_trace`).
    pub async fn call(
        &self,
        route: &Route,
        meters: &RouteMeters,
        (inbound, trace): (&HeaderMap, &HeaderMap),
        (body, model): (Bytes, Option<&str>),
        deadline: Instant,
    ) -> Result<(Response<VendorBody>, usize), UpstreamError> {
        let mut attempt = 0;
        loop {
            let index = attempt;
            let target = &route.targets[index];
            attempt += 1;
            let last = attempt >= route.max_attempts;
            let head = request_head(route, (target, model), inbound, trace, body.len());
            match self.send(target, index, &head, &body, deadline).await {
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

/// Vendor answers the client must not see as they are: our key rejected (401/403), redirects.
fn check_status(res: Response<VendorBody>) -> Result<Response<VendorBody>, UpstreamError> {
    let status = res.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        // The vendor key is ours: the client cannot fix this, the operator must.
        return Err(UpstreamError::Credential(status));
    }
    if status.is_redirection() {
        return Err(UpstreamError::Redirect(status));
    }
    Ok(res)
}

/// Names a failed connection set-up by the step that failed ([`ConnectError`]).
fn connect_failed(e: ConnectError) -> UpstreamError {
    match e {
        ConnectError::Tls(failure, _) => UpstreamError::Tls(failure, Box::new(e)),
        ConnectError::TlsTimeout(_) => UpstreamError::TlsTimeout(Box::new(e)),
        ConnectError::TcpTimeout(_) => UpstreamError::ConnectTimeout(Box::new(e)),
        ConnectError::Proxy { .. } => UpstreamError::Proxy(Box::new(e)),
        ConnectError::ProxyTimeout { .. } => UpstreamError::ProxyTimeout(Box::new(e)),
        _ if caused_by_timeout(&e) => UpstreamError::ConnectTimeout(Box::new(e)),
        _ => UpstreamError::Connect(Box::new(e)),
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

/// The upstream request head, as it goes on the wire: `POST` to the endpoint's URL (with `model`, checked by the
/// stack, in place of its `{model}`), allow-listed headers ([`crate::headers::forwarded`]), the trace headers the
/// route sends, the vendor secret, `Accept-Encoding: identity` and the body's length.
fn request_head(
    route: &Route,
    (target, model): (&Target, Option<&str>),
    inbound: &HeaderMap,
    trace: &HeaderMap,
    body_len: usize,
) -> Vec<u8> {
    let url = &target.upstream;
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let host = url.authority().map_or("", |a| a.as_str());
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"POST ");
    match (target.model_in_path, model) {
        (true, Some(model)) => {
            let path = path.replacen(crate::config::MODEL_PLACEHOLDER, model, 1);
            head.extend_from_slice(path.as_bytes());
        }
        _ => head.extend_from_slice(path.as_bytes()),
    }
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(host.as_bytes());
    head.extend_from_slice(b"\r\n");
    let secret = target.secret.header();
    let fields = crate::headers::forwarded(inbound, &route.forward_headers)
        .chain(trace.iter())
        .chain([secret]);
    for (name, value) in fields {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"accept-encoding: identity\r\ncontent-length: ");
    head.extend_from_slice(body_len.to_string().as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    head
}
