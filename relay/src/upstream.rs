//! Forward: the call to the vendor. A pooled HTTP/1.1 client (TLS via rustls), connect and response-head
//! timeouts, the vendor credential, header hygiene ([`crate::headers`]) and failover between a route's endpoints.
//!
//! The client cannot steer the call: the method is POST, the URL is the route's fixed `upstream` (the inbound path
//! and query are not used), redirects are never followed (hyper's client has no redirect support, and a 3xx answer
//! becomes [`UpstreamError::Redirect`]), and only allow-listed request headers cross. The response body is
//! returned untouched ([`hyper::body::Incoming`]); [`crate::tap`] wraps it.

mod error;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

pub use error::{TlsError, UpstreamError, chain};

use crate::config::{Route, Target};
use crate::metrics::RouteMeters;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Upstream connection buffer cap: bounds what a stalled client can make the relay read ahead from the vendor.
const UPSTREAM_BUF: usize = 32 << 10;

/// One pooled client per route (the connect timeout is a connector setting); shared by the route's endpoints.
pub struct Upstream {
    client: HttpsClient,
}

/// The TLS settings for every vendor connection: the system's CA certificates. A route with an `https` upstream
/// and no CA certificate to check it with is refused here, at startup, rather than failing every request later.
pub fn tls_config(routes: &[Route]) -> Result<rustls::ClientConfig, TlsError> {
    use hyper_rustls::ConfigBuilderExt;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Provider)
    };
    match builder()?.with_native_roots() {
        Ok(b) => Ok(b.with_no_client_auth()),
        Err(source) => {
            let https = routes.iter().find(|r| {
                r.targets
                    .iter()
                    .any(|t| t.upstream.scheme_str() == Some("https"))
            });
            match https {
                Some(r) => Err(TlsError::NoRoots {
                    route: r.path.clone(),
                    source,
                }),
                // Plain-http routes only: no certificate will ever be checked.
                None => Ok(builder()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()),
            }
        }
    }
}

impl Upstream {
    pub fn new(route: &Route, tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(route.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // Bounded both ways: at most `max_idle_connections` idle connections per vendor host (more are closed as
        // they come back), each closed after `pool_idle_timeout`.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(route.pool_idle_timeout)
            .pool_max_idle_per_host(route.max_idle_connections)
            .http1_max_buf_size(UPSTREAM_BUF)
            .build(https);
        Self { client }
    }

    /// One client (one connection pool) per route, in route order.
    pub fn for_routes(routes: &[Route], tls: &rustls::ClientConfig) -> Vec<Upstream> {
        routes
            .iter()
            .map(|r| Upstream::new(r, tls.clone()))
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
            Ok(Err(e)) if e.is_connect() && caused_by_timeout(&e) => {
                Err(UpstreamError::ConnectTimeout(e))
            }
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(e)),
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
