//! What crosses the relay: only allow-listed headers go up, only allow-listed headers come down, and neither the
//! client's key nor the vendor's key ever reaches the other side.

use wiremock::matchers::path;
use wiremock::{Mock as Wire, MockServer, ResponseTemplate};

use crate::support::*;

#[tokio::test]
async fn request_headers_are_allow_listed_and_the_credential_replaced() {
    let server = MockServer::start().await;
    Wire::given(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/json")
                .insert_header("set-cookie", "vendor=1")
                .insert_header("server", "vendor-edge")
                .insert_header("x-ratelimit-remaining-requests", "99")
                .insert_header("x-internal-host", "10.0.0.7")
                .set_body_string("{\"ok\":true}"),
        )
        .mount(&server)
        .await;
    let relay = start_relay(config(&server.address().to_string(), "")).await;
    let res = client()
        .post(relay.url("/v1/chat/completions?upstream=http://evil"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .header("cookie", "session=abc")
        .header("connection", "keep-alive, x-mock-drop")
        .header("x-mock-drop", "1")
        .header("x-mock-keep", "1")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-unknown", "1")
        .header("te", "trailers")
        .body("{\"stream\":false}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let down = res.headers().clone();
    assert_eq!(down["x-ratelimit-remaining-requests"], "99");
    for gone in ["set-cookie", "server", "x-internal-host"] {
        assert!(down.get(gone).is_none(), "{gone} reached the client");
    }
    assert_eq!(res.text().await.unwrap(), "{\"ok\":true}");

    let seen = server.received_requests().await.unwrap();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(up.url.path(), "/v1/chat/completions");
    assert_eq!(
        up.url.query(),
        None,
        "the client's query must not reach the vendor"
    );
    assert_eq!(
        up.headers["authorization"],
        format!("Bearer {VENDOR_KEY}").as_str()
    );
    assert_eq!(up.headers.get_all("authorization").iter().count(), 1);
    assert_eq!(up.headers["accept-encoding"], "identity");
    assert_eq!(up.headers["content-type"], "application/json");
    assert_eq!(up.headers["x-mock-keep"], "1");
    for gone in [
        "cookie",
        "x-mock-drop",
        "x-forwarded-for",
        "x-unknown",
        "te",
    ] {
        assert!(up.headers.get(gone).is_none(), "{gone} reached the vendor");
    }
    assert_eq!(up.body, b"{\"stream\":false}");
}

#[tokio::test]
async fn the_vendor_key_never_reaches_the_client() {
    let mock = start_mock().await;
    let relay = start_relay(config(&mock.addr.to_string(), "")).await;
    for scenario in [
        &[("x-mock-chunks", "3")][..],
        &[("x-mock-status", "500")][..],
        &[("x-mock-reset-after", "1")][..],
    ] {
        let res = chat(&relay, scenario).send().await.unwrap();
        let head = format!("{:?}", res.headers());
        let body = res.bytes().await.unwrap_or_default();
        assert!(!head.contains(VENDOR_KEY));
        assert!(!String::from_utf8_lossy(&body).contains(VENDOR_KEY));
    }
}
