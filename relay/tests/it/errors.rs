//! Everything that ends a request before its stream: client errors, vendor errors, network failures.

use std::time::Duration;

use tokio::time::Instant;
use wiremock::matchers::{method, path};
use wiremock::{Mock as Wire, MockServer, ResponseTemplate};

use crate::support::*;

async fn json_error(res: reqwest::Response, status: u16, kind: &str) -> serde_json::Value {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/json");
    let trace_id = res.headers()["x-trace-id"].to_str().unwrap().to_owned();
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert_eq!(v["error"]["trace_id"], trace_id.as_str());
    v
}

#[tokio::test]
async fn wrong_or_missing_client_key_is_401_without_an_upstream_call() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "")).await;
    for key in [Some("wrong"), None, Some(VENDOR_KEY)] {
        let mut rb = client().post(relay.url("/v1/chat/completions")).body("{}");
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        let res = rb.send().await.unwrap();
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        json_error(res, 401, "unauthorized").await;
    }
    assert_eq!(mock.app.stats.counters().requests, 0);
}

#[tokio::test]
async fn health_needs_no_key_and_unknown_paths_are_404() {
    let relay = start_relay(config("127.0.0.1:9", "")).await;
    let res = client().get(relay.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = client().get(relay.url("/")).send().await.unwrap();
    json_error(res, 404, "not_found").await;
    let res = client()
        .post(relay.url("/v1/../admin"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    json_error(res, 404, "not_found").await;
    let res = client()
        .get(relay.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["allow"], "POST");
    json_error(res, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn oversized_bodies_are_413_before_any_upstream_call() {
    let mock = start_mock().await;
    let mut cfg = config(&mock.addr.to_string(), "");
    cfg.max_request_body_bytes = 1024;
    let relay = start_relay(cfg).await;
    let big = vec![b'x'; 4096];
    let res = chat(&relay, &[]).body(big.clone()).send().await.unwrap();
    json_error(res, 413, "payload_too_large").await;
    // Without a Content-Length (chunked), the limit applies while reading.
    let stream = futures_util::stream::iter(
        big.chunks(512)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let res = chat(&relay, &[])
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    json_error(res, 413, "payload_too_large").await;
    assert_eq!(mock.app.stats.counters().requests, 0);
}

#[tokio::test]
async fn vendor_errors_pass_through_with_status_and_body() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "")).await;
    for code in ["429", "500", "503", "400"] {
        let res = chat(&relay, &[("x-mock-status", code)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_str(), code);
        assert_eq!(res.headers()["content-type"], "application/json");
        if code == "429" {
            assert_eq!(res.headers()["retry-after"], "1");
        }
        let trace_id = res.headers()["x-trace-id"].to_str().unwrap().to_owned();
        assert!(trace_id.starts_with("mock-"));
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "mock_fault", "{v}");
    }
}

#[tokio::test]
async fn vendor_rejecting_our_key_or_redirecting_is_502() {
    let server = MockServer::start().await;
    Wire::given(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_string(format!("{{\"error\":\"bad key {VENDOR_KEY}\"}}")),
        )
        .mount(&server)
        .await;
    Wire::given(path("/api/send-message"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", "http://127.0.0.1:9/steal"),
        )
        .mount(&server)
        .await;
    let relay = start_relay(config(&server.address().to_string(), "")).await;
    let res = chat(&relay, &[]).send().await.unwrap();
    let v = json_error(res, 502, "upstream_credential").await;
    assert!(!v.to_string().contains(VENDOR_KEY));
    let res = client()
        .post(relay.url("/api/send-message"))
        .bearer_auth(CLIENT_KEY)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("location").is_none());
    json_error(res, 502, "upstream_redirect").await;
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        2,
        "redirect must not be followed"
    );
}

#[tokio::test]
async fn refused_connection_is_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let relay = start_relay(config(&addr.to_string(), "")).await;
    let res = chat(&relay, &[]).send().await.unwrap();
    let v = json_error(res, 502, "upstream_connect").await;
    assert!(
        !v.to_string().contains(&addr.to_string()),
        "the upstream address must not reach the client: {v}"
    );
}

#[tokio::test]
async fn silent_upstream_is_504_after_the_first_byte_timeout() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (s, _) = silent.accept().await.unwrap();
            conns.push(s);
        }
    });
    let relay = start_relay(config(&addr.to_string(), "first_byte_timeout_ms = 300")).await;
    let started = Instant::now();
    let res = chat(&relay, &[]).send().await.unwrap();
    let waited = started.elapsed();
    json_error(res, 504, "upstream_timeout").await;
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    held.abort();
}

#[tokio::test]
async fn wiremock_sees_no_request_for_unmatched_method() {
    let server = MockServer::start().await;
    Wire::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let relay = start_relay(config(&server.address().to_string(), "")).await;
    let res = client()
        .put(relay.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert!(server.received_requests().await.unwrap().is_empty());
}
