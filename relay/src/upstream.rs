//! The call to the vendor: pooled HTTP/1.1 client (TLS via rustls), connect and response-head timeouts, header
//! hygiene in both directions, and vendor credential injection.
//!
//! The client cannot steer the call: the method is POST, the URL is the route's fixed `upstream` (the inbound path
//! and query are not used), redirects are never followed (hyper's client has no redirect support, and a 3xx answer
//! becomes a 502 in [`crate::stack`]), and only allow-listed request headers cross. The response body is returned
//! untouched ([`hyper::body::Incoming`]); [`crate::tap`] wraps it.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{Route, Target};
use crate::error::UpstreamError;

/// Request headers forwarded when present (plus a route's `forward_headers`). Everything else is dropped:
/// hop-by-hop headers, `Host`, cookies and the client's own `Authorization` never reach the vendor.
pub const DEFAULT_FORWARD: &[&str] = &[
    "content-type",
    "accept",
    "accept-language",
    "user-agent",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "anthropic-version",
    "anthropic-beta",
];

/// Headers no configuration may forward: hop-by-hop (RFC 9110 §7.6.1), framing, credentials, routing.
pub const NEVER_FORWARD: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "cookie",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Upstream response headers passed to the client (besides the ones [`crate::stack`] sets itself).
const RESPONSE_ALLOW: &[&str] = &[
    "content-type",
    "retry-after",
    "x-request-id",
    "openai-processing-ms",
];
/// Upstream response header prefixes passed to the client (rate-limit information helps clients back off).
const RESPONSE_ALLOW_PREFIX: &[&str] = &["x-ratelimit-", "anthropic-ratelimit-"];

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Upstream connection buffer cap: bounds what a stalled client can make the relay read ahead from the vendor.
const UPSTREAM_BUF: usize = 32 << 10;

/// One pooled client per route (the connect timeout is a connector setting); shared by the route's endpoints.
pub struct Upstream {
    client: HttpsClient,
}

/// Builds the TLS settings once: the system's CA certificates, or none (https upstreams then fail) with a warning.
pub fn tls_config() -> rustls::ClientConfig {
    use hyper_rustls::ConfigBuilderExt;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
    };
    let native = builder()
        .map_err(|e| e.to_string())
        .and_then(|b| b.with_native_roots().map_err(|e| e.to_string()));
    match native {
        Ok(config) => config.with_no_client_auth(),
        Err(e) => {
            tracing::warn!(error = %e, "no system CA certificates: https upstreams will fail TLS verification");
            match builder() {
                Ok(b) => b
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                Err(_) => rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
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
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http1_max_buf_size(UPSTREAM_BUF)
            .build(https);
        Self { client }
    }

    /// Sends the request and waits, until `deadline` (the route's first-byte deadline), for the response head.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::FirstByteTimeout),
            Ok(Ok(res)) => Ok(res),
            Ok(Err(e)) if e.is_connect() && caused_by_timeout(&e) => {
                Err(UpstreamError::ConnectTimeout)
            }
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Protocol(error_chain(&e))),
        }
    }
}

/// One client (one connection pool) per route, in route order.
pub fn clients(routes: &[Route], tls: &rustls::ClientConfig) -> Vec<Upstream> {
    routes
        .iter()
        .map(|r| Upstream::new(r, tls.clone()))
        .collect()
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

fn error_chain(e: &hyper_util::client::legacy::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

/// True when `name` may be forwarded upstream under `extra` (the route's `forward_headers`; `x-foo-*` patterns).
fn forwardable(name: &HeaderName, extra: &[String]) -> bool {
    let n = name.as_str();
    DEFAULT_FORWARD.contains(&n)
        || extra.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => n.starts_with(prefix),
            None => n == p,
        })
}

/// Names listed in `Connection` are hop-by-hop for this message and are dropped too.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The upstream request: fixed method and URL, allow-listed headers, the vendor secret, `Accept-Encoding: identity`.
pub fn build_request(
    route: &Route,
    target: &Target,
    inbound: &HeaderMap,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let listed = connection_listed(inbound);
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = target.upstream.clone();
    let headers = req.headers_mut();
    for (name, value) in inbound {
        if forwardable(name, &route.forward_headers) && !listed.iter().any(|l| l == name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    let (name, value) = target.secret.header();
    headers.insert(name.clone(), value.clone());
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    req
}

/// Copies the allow-listed upstream response headers (never hop-by-hop ones, `Set-Cookie` or `Server`).
pub fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let n = name.as_str();
        if RESPONSE_ALLOW.contains(&n) || RESPONSE_ALLOW_PREFIX.iter().any(|p| n.starts_with(p)) {
            to.append(name.clone(), value.clone());
        }
    }
}
