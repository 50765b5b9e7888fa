//! JWT client authentication through the running relay: a good token streams for the tenant it names; every bad
//! one is the same 401 and never reaches the vendor.

use serde_json::json;
use testkit::client::chat;
use testkit::idp::{self, Idp};

use crate::support::*;

#[tokio::test]
async fn a_valid_token_streams_and_every_bad_one_is_401_without_a_vendor_call() {
    let mock = start_mock().await;
    let mut idp = Idp::new().unwrap();
    let top = format!("{}[[tenants]]\nname = \"globex\"\n", idp.config_section(""));
    let relay = start_relay(config_with(&mock.addr.to_string(), &top, "")).await;
    let base = relay.url("");

    let good = idp.sign("ed-1", &Idp::claims("globex")).unwrap();
    let res = chat(&base, &good, &[]).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    // The client key still works beside JWTs.
    assert_eq!(
        chat(&base, CLIENT_KEY, &[]).send().await.unwrap().status(),
        200
    );
    let before = mock.app.stats.counters().requests;
    assert_eq!(before, 2);

    idp.add_key("rsa-2", jsonwebtoken::Algorithm::RS256)
        .unwrap();
    let now = idp::now();
    let claims = |patch: serde_json::Value| {
        let mut c = Idp::claims("globex");
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let tampered = {
        let t = idp.sign("rsa-1", &Idp::claims("globex")).unwrap();
        let other = idp.sign("rsa-1", &Idp::claims("acme")).unwrap();
        let p: Vec<&str> = t.split('.').collect();
        format!("{}.{}.{}", p[0], other.split('.').nth(1).unwrap(), p[2])
    };
    let bad = [
        (
            "expired",
            idp.sign("ec-1", &claims(json!({"exp": now - 120})))
                .unwrap(),
        ),
        (
            "not yet valid",
            idp.sign("ec-1", &claims(json!({"nbf": now + 120})))
                .unwrap(),
        ),
        (
            "wrong issuer",
            idp.sign("ec-1", &claims(json!({"iss": "https://evil.test"})))
                .unwrap(),
        ),
        (
            "wrong audience",
            idp.sign("ec-1", &claims(json!({"aud": "another-api"})))
                .unwrap(),
        ),
        (
            "unknown kid",
            idp.sign("rsa-2", &Idp::claims("globex")).unwrap(),
        ),
        ("tampered", tampered),
        ("alg none", Idp::unsigned("ec-1", &Idp::claims("globex"))),
        (
            "HMAC with the public key",
            idp.hmac_with_public_key("rsa-1", &Idp::claims("globex"))
                .unwrap(),
        ),
        (
            "unknown tenant",
            idp.sign("ec-1", &Idp::claims("initech")).unwrap(),
        ),
    ];
    for (what, token) in &bad {
        let res = chat(&base, token, &[]).send().await.unwrap();
        assert_eq!(res.status(), 401, "{what}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer", "{what}");
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["error"]["type"], "unauthorized", "{what}: {v}");
    }
    assert_eq!(
        mock.app.stats.counters().requests,
        before,
        "a refused token reached the vendor"
    );
}
