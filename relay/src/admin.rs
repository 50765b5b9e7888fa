//! The admin listener, beside the request path and never behind the public proxy: `GET /metrics` (Prometheus text
//! format, [`crate::metrics`]), `GET /healthz` (the process is up), `GET /readyz` (it takes new streams: 200
//! until shutdown begins, then 503 while in-flight streams drain, so a load balancer stops sending first), and
//! `GET /admin/usage` (token usage, [`crate::account`]) and `POST /admin/reload` (re-read the config file, as
//! `SIGHUP` does).
//!
//! `/admin/usage?tenant=T&from=YYYY-MM-DD&to=YYYY-MM-DD` needs `Authorization: Bearer <admin key>`, the key whose
//! SHA-256 is `admin_key_sha256` (401 otherwise; 404 when none is configured). Every parameter is optional: all
//! tenants, today (UTC). Days are UTC, both ends included, at most [`MAX_DAYS`]. The answer is JSON: one row per
//! tenant, route and model, summed over the days, and the total. With `[store]` it reports every replica's streams.
//!
//! It runs on the main thread's runtime, not on the relay's workers, so a saturated relay still answers scrapes. It
//! also folds histogram samples into buckets every few seconds, so memory stays bounded without scrapes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::account::{Account, Row};
use crate::error::json;
use crate::limit::Calendar;
use crate::metrics::Registry;
use crate::usage::Totals;

/// The usage endpoint: where usage is read, and the SHA-256 of its key.
#[derive(Clone)]
pub struct UsageAccess {
    pub account: std::sync::Arc<Account>,
    pub key_sha256: Option<[u8; 32]>,
}

/// What the admin endpoints ask of the relay serving now (a reload replaces it, and with it the account and the
/// admin key).
pub trait Control: Send + Sync + 'static {
    /// Where usage is read, and the admin key's SHA-256.
    fn usage(&self) -> UsageAccess;
    /// Re-reads the config file (`POST /admin/reload`): what now serves, or why the old config still does.
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// The longest report, in days.
pub const MAX_DAYS: u64 = 400;

const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// A scrape or probe gets this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoints until `done`; `stop` (shutdown has begun) turns `/readyz` to 503.
pub async fn serve(
    listener: TcpListener,
    registry: &'static Registry,
    control: Arc<dyn Control>,
    stop: CancellationToken,
    done: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    loop {
        let stream = tokio::select! {
            () = done.cancelled() => break,
            _ = upkeep.tick() => {
                registry.upkeep();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let stop = stop.clone();
        let control = control.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let ready = !stop.is_cancelled();
                let control = control.clone();
                async move {
                    let res = match (req.method(), req.uri().path()) {
                        (&Method::GET, "/admin/usage") => {
                            usage_report(&req, &control.usage()).await
                        }
                        (&Method::POST, "/admin/reload") => reload(&req, &*control).await,
                        (_, "/admin/reload") => text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n"),
                        _ => answer(&req, registry, ready),
                    };
                    Ok::<_, Infallible>(res)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
}

fn answer<B>(req: &Request<B>, registry: &Registry, ready: bool) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut res = Response::new(Full::new(Bytes::from(registry.render())));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            res
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The admin key's check: the refusal to answer, if any (404 when no admin key is configured, 401 without it).
fn refused<B>(req: &Request<B>, key: Option<[u8; 32]>) -> Option<Response<Full<Bytes>>> {
    let path = req.uri().path();
    let Some(key) = key else {
        return Some(json(
            StatusCode::NOT_FOUND,
            &error("not_found", "set admin_key_sha256 to use this endpoint"),
        ));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| <[u8; 32]>::from(Sha256::digest(k.trim().as_bytes())));
    if presented.is_some_and(|p| bool::from(p.ct_eq(&key))) {
        return None;
    }
    tracing::info!(path, "admin request rejected: no or wrong admin key");
    let mut res = json(
        StatusCode::UNAUTHORIZED,
        &error("unauthorized", "needs the admin key"),
    );
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(res)
}

/// `POST /admin/reload`: 200 with what now serves, or 422 with why the old config still does.
async fn reload<B>(req: &Request<B>, control: &dyn Control) -> Response<Full<Bytes>> {
    if let Some(refusal) = refused(req, control.usage().key_sha256) {
        return refusal;
    }
    match control.reload().await {
        Ok(loaded) => json(
            StatusCode::OK,
            &serde_json::json!({"reloaded": true, "config": loaded}),
        ),
        Err(why) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &error(
                "config_refused",
                &format!("{why}; the previous config keeps serving"),
            ),
        ),
    }
}

/// `GET /admin/usage`.
pub async fn usage_report<B>(req: &Request<B>, access: &UsageAccess) -> Response<Full<Bytes>> {
    if let Some(refusal) = refused(req, access.key_sha256) {
        return refusal;
    }
    let query = match UsageQuery::parse(req.uri().query().unwrap_or(""), access.account.tenants()) {
        Ok(q) => q,
        Err(reason) => return json(StatusCode::BAD_REQUEST, &error("bad_request", &reason)),
    };
    match access
        .account
        .usage(&query.tenants, query.from, query.to)
        .await
    {
        Ok(rows) => {
            let mut total = Totals::default();
            rows.iter().for_each(|r: &Row| total.add(&r.totals));
            let body = serde_json::json!({
                "from": Calendar::date(query.from),
                "to": Calendar::date(query.to),
                "tenant": query.tenant,
                "rows": rows,
                "total": total,
            });
            json(StatusCode::OK, &body)
        }
        Err(e) => {
            tracing::warn!(error = %e, "usage report failed: the store did not answer");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &error("store_unavailable", "the usage store did not answer"),
            )
        }
    }
}

/// A usage report's parameters.
#[derive(Debug, PartialEq, Eq)]
struct UsageQuery {
    tenant: Option<String>,
    tenants: Vec<std::sync::Arc<str>>,
    from: u64,
    to: u64,
}

impl UsageQuery {
    fn parse(query: &str, known: &[std::sync::Arc<str>]) -> Result<Self, String> {
        let today = Calendar::now().day();
        let (mut tenant, mut from, mut to) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)
                .ok_or_else(|| format!("`{name}` is not valid percent-encoded UTF-8"))?;
            let day = |v: &str| {
                Calendar::parse_date(v)
                    .ok_or_else(|| format!("`{name}` must be a date, YYYY-MM-DD (UTC)"))
            };
            match name {
                "tenant" => tenant = Some(value),
                "from" => from = Some(day(&value)?),
                "to" => to = Some(day(&value)?),
                other => return Err(format!("unknown parameter `{other}` (tenant, from, to)")),
            }
        }
        let (from, to) = (from.unwrap_or(today), to.unwrap_or(today));
        if from > to || to - from >= MAX_DAYS {
            return Err(format!(
                "`from` must not be after `to`, and at most {MAX_DAYS} days apart"
            ));
        }
        let tenants = match &tenant {
            None => known.to_vec(),
            Some(t) => match known.iter().find(|k| ***k == **t) {
                Some(k) => vec![k.clone()],
                None => return Err(format!("no tenant `{t}` is configured")),
            },
        };
        Ok(Self {
            tenant,
            tenants,
            from,
            to,
        })
    }
}

/// `%XX` and `+` decoded; `None` when that is not UTF-8 or a `%` is not followed by two hex digits.
fn percent_decode(v: &str) -> Option<String> {
    let mut out = Vec::with_capacity(v.len());
    let mut bytes = v.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn error(kind: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"type": kind, "message": message}})
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn get(path: &str, ready: bool) -> (u16, String, String) {
        let registry = crate::metrics::install().unwrap();
        let req = Request::get(path).body(()).unwrap();
        let res = answer(&req, registry, ready);
        let status = res.status().as_u16();
        let kind = res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, kind, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_turns_to_503_when_shutdown_begins_and_liveness_does_not() {
        assert_eq!(get("/readyz", true).await.0, 200);
        assert_eq!(get("/readyz", false).await.0, 503);
        assert_eq!(get("/healthz", false).await.0, 200);
        assert_eq!(get("/nothing", true).await.0, 404);
    }

    #[test]
    fn usage_queries_default_to_today_and_name_what_is_wrong() {
        let known: Vec<std::sync::Arc<str>> = vec!["a b".into(), "c".into()];
        let today = Calendar::now().day();
        let q = UsageQuery::parse("", &known).unwrap();
        assert_eq!((q.from, q.to, q.tenants.len()), (today, today, 2));
        let q = UsageQuery::parse("tenant=a+b&from=2026-11-01&to=2026-11-28", &known).unwrap();
        assert_eq!(q.tenants, vec![known[0].clone()]);
        assert_eq!(q.to - q.from, 27);
        assert_eq!(
            UsageQuery::parse("tenant=a%20b", &known)
                .unwrap()
                .tenants
                .len(),
            1
        );
        for (bad, says) in [
            ("tenant=zz", "no tenant"),
            ("from=2026-13-01", "`from` must be a date"),
            ("from=2026-11-02&to=2026-11-01", "must not be after"),
            ("from=2024-01-01&to=2026-01-01", "at most 400"),
            ("x=1", "unknown parameter"),
            ("tenant=%zz", "percent-encoded"),
        ] {
            let e = UsageQuery::parse(bad, &known).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_with_process_metrics() {
        let (status, kind, body) = get("/metrics", true).await;
        assert_eq!(status, 200);
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        assert!(body.contains("process_resident_memory_bytes"), "{body}");
    }
}
