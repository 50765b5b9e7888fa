use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use testkit::idp::{self, Idp};

use super::*;

fn settings(idp: &Idp) -> Settings {
    Settings {
        jwks_file: idp.jwks_file(),
        algorithms: ALGORITHMS.iter().map(|(_, a)| *a).collect(),
        issuer: idp::ISSUER.into(),
        audience: idp::AUDIENCE.into(),
        leeway: Duration::from_secs(30),
        tenant_claim: "tenant".into(),
        jwks_check_interval: Duration::ZERO,
    }
}

fn tenants() -> Vec<Arc<str>> {
    vec![Arc::from("acme"), Arc::from("globex")]
}

fn verifier(idp: &Idp) -> Verifier {
    Verifier::load(settings(idp), &tenants()).unwrap()
}

/// The reason `token` is refused.
fn refused(v: &Verifier, token: &str) -> &'static str {
    match v.verify(token) {
        Ok(t) => panic!("accepted for {t}"),
        Err(e) => e.reason,
    }
}

#[test]
fn each_algorithm_verifies_and_names_the_tenant() {
    let idp = Idp::new().unwrap();
    let v = verifier(&idp);
    assert_eq!(v.key_count(), 3);
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let token = idp.sign(kid, &Idp::claims("globex")).unwrap();
        assert_eq!(&*v.verify(&token).unwrap(), "globex", "{kid}");
    }
}

#[test]
fn bad_tokens_are_refused_each_for_its_reason() {
    let idp = Idp::new().unwrap();
    let v = verifier(&idp);
    let now = idp::now();
    let with = |patch: serde_json::Value| {
        let mut c = Idp::claims("acme");
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = val.clone();
            }
        }
        idp.sign("ec-1", &c).unwrap()
    };
    let cases = [
        (with(json!({"exp": now - 31})), "token expired"),
        (with(json!({"nbf": now + 31})), "token not yet valid"),
        (with(json!({"iss": "https://other.test"})), "wrong issuer"),
        (with(json!({"aud": "someone-else"})), "wrong audience"),
        (with(json!({"exp": null})), "missing exp, iss or aud"),
        (with(json!({"tenant": null})), "no tenant claim"),
        (with(json!({"tenant": 7})), "no tenant claim"),
        (with(json!({"tenant": "initech"})), "tenant not configured"),
        (
            Idp::unsigned("ec-1", &Idp::claims("acme")),
            "malformed token",
        ),
        (
            idp.hmac_with_public_key("rsa-1", &Idp::claims("acme"))
                .unwrap(),
            "token algorithm not allowed",
        ),
        ("a.b.c".to_owned(), "malformed token"),
    ];
    for (token, reason) in &cases {
        assert_eq!(refused(&v, token), *reason, "{token}");
    }
    // Within the leeway both ways.
    assert!(
        v.verify(&with(json!({"exp": now - 20, "nbf": now + 20})))
            .is_ok()
    );
}

#[test]
fn a_token_cannot_pick_its_key_or_tamper_its_claims() {
    let mut idp = Idp::new().unwrap();
    let v = verifier(&idp);
    // Signed by a key that is not in the file, under a kid that is not either.
    idp.add_key("ec-2", Algorithm::ES256).unwrap();
    let stranger = idp.sign("ec-2", &Idp::claims("acme")).unwrap();
    assert_eq!(refused(&v, &stranger), "unknown kid");
    // A good token whose payload is swapped for another tenant's: the signature no longer matches.
    let good = idp.sign("rsa-1", &Idp::claims("acme")).unwrap();
    let other = idp.sign("rsa-1", &Idp::claims("globex")).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_eq!(refused(&v, &forged), "bad signature");
    // An ES256 token presented under the RSA key's kid.
    let ec = idp.sign("ec-1", &Idp::claims("acme")).unwrap();
    let header = jsonwebtoken::decode_header(&ec).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let mut swapped = jsonwebtoken::Header::new(Algorithm::ES256);
    swapped.kid = Some("rsa-1".into());
    let swapped_header = base64_json(&serde_json::to_value(&swapped).unwrap());
    let ec_parts: Vec<&str> = ec.split('.').collect();
    let token = format!("{swapped_header}.{}.{}", ec_parts[1], ec_parts[2]);
    assert_eq!(
        refused(&v, &token),
        "token algorithm does not match its key"
    );
}

fn base64_json(v: &serde_json::Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn only_allowed_algorithms_are_verified() {
    let idp = Idp::new().unwrap();
    let mut s = settings(&idp);
    s.algorithms = vec![Algorithm::ES256];
    let v = Verifier::load(s, &tenants()).unwrap();
    assert_eq!(v.key_count(), 1);
    let rsa = idp.sign("rsa-1", &Idp::claims("acme")).unwrap();
    assert_eq!(refused(&v, &rsa), "token algorithm not allowed");
    assert!(
        v.verify(&idp.sign("ec-1", &Idp::claims("acme")).unwrap())
            .is_ok()
    );
}

#[test]
fn the_jwks_file_is_reread_when_it_changes_and_a_broken_one_keeps_the_keys() {
    let mut idp = Idp::new().unwrap();
    let v = verifier(&idp);
    let old = idp.sign("ec-1", &Idp::claims("acme")).unwrap();
    idp.add_key("ec-2", Algorithm::ES256).unwrap();
    let new = idp.sign("ec-2", &Idp::claims("acme")).unwrap();
    assert_eq!(refused(&v, &new), "unknown kid");
    // Rotation: the new key published, the old one withdrawn.
    idp.publish(&["ec-2"]).unwrap();
    assert!(v.verify(&new).is_ok());
    assert_eq!(refused(&v, &old), "unknown kid");
    // A half-written or wrong file: the keys in use stay.
    std::fs::write(idp.jwks_file(), "{\"keys\": [").unwrap();
    assert!(v.verify(&new).is_ok());
    std::fs::write(
        idp.jwks_file(),
        "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"s\", \"k\": \"c2VjcmV0\"}]}",
    )
    .unwrap();
    assert!(v.verify(&new).is_ok());
}

#[test]
fn unusable_files_are_configuration_errors() {
    let idp = Idp::new().unwrap();
    let load = |text: &str| {
        std::fs::write(idp.jwks_file(), text).unwrap();
        Verifier::load(settings(&idp), &tenants())
            .unwrap_err()
            .to_string()
    };
    assert!(load("not json").contains("is not a JWKS document"));
    assert!(load(r#"{"keys": []}"#).contains("no key the relay can use"));
    assert!(
        load(r#"{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}"#)
            .contains("HMAC tokens are never accepted")
    );
    let mut s = settings(&idp);
    s.jwks_file = idp.jwks_file().with_extension("missing");
    let e = Verifier::load(s, &tenants()).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}
