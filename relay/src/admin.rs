//! The admin listener, beside the request path and never behind the public proxy: `GET /metrics` (Prometheus text
//! format, [`crate::metrics`]), `GET /healthz` (the process is up) and `GET /readyz` (it takes new streams: 200
//! until shutdown begins, then 503 while in-flight streams drain, so a load balancer stops sending first).
//!
//! It runs on the main thread's runtime, not on the relay's workers, so a saturated relay still answers scrapes. It
//! also folds histogram samples into buckets every few seconds, so memory stays bounded without scrapes.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Registry;

const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// A scrape or probe gets this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoints until `done`; `stop` (shutdown has begun) turns `/readyz` to 503.
pub async fn serve(
    listener: TcpListener,
    registry: &'static Registry,
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
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let ready = !stop.is_cancelled();
                async move { Ok::<_, Infallible>(answer(&req, registry, ready)) }
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

    #[tokio::test]
    async fn metrics_are_prometheus_text_with_process_metrics() {
        let (status, kind, body) = get("/metrics", true).await;
        assert_eq!(status, 200);
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        assert!(body.contains("process_resident_memory_bytes"), "{body}");
    }
}
