//! Client authentication: `Authorization: Bearer <client key>` checked against configured SHA-256 digests.
//!
//! The presented key is hashed once, then compared with every configured digest in constant time
//! (`subtle::ConstantTimeEq` on equal-length digests), visiting all of them so timing does not reveal which tenant
//! matched or how many are configured. Every failure is the same [`AuthError`]: the caller cannot tell a missing
//! key from a wrong one. Routes that need no key (`/healthz`) are decided before, in [`crate::route`]; the
//! next stage is [`crate::limit`].

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::config::ClientKey;

/// The authenticated caller, passed down the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Arc<str>,
}

/// Missing, malformed or unknown client key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("missing or invalid client key")]
pub struct AuthError;

/// Checks the request's bearer key against `keys`.
pub fn authenticate(headers: &HeaderMap, keys: &[ClientKey]) -> Result<Principal, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(AuthError);
    };
    let token = value
        .as_bytes()
        .strip_prefix(b"Bearer ")
        .filter(|t| !t.is_empty() && !t.contains(&b' '))
        .ok_or(AuthError)?;
    let presented: [u8; 32] = Sha256::digest(token).into();
    let mut found: Option<&ClientKey> = None;
    for key in keys {
        let hit: Choice = key.sha256.ct_eq(&presented);
        if bool::from(hit) {
            found = Some(key);
        }
    }
    found
        .map(|k| Principal {
            tenant: k.tenant.clone(),
        })
        .ok_or(AuthError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn keys() -> Vec<ClientKey> {
        ["alpha-key", "beta-key"]
            .iter()
            .zip(["alpha", "beta"])
            .map(|(k, t)| ClientKey {
                tenant: Arc::from(t),
                sha256: Sha256::digest(k.as_bytes()).into(),
            })
            .collect()
    }

    fn with_auth(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::AUTHORIZATION, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn right_key_names_its_tenant() {
        let p = authenticate(&with_auth(&["Bearer beta-key"]), &keys()).unwrap();
        assert_eq!(&*p.tenant, "beta");
    }

    #[test]
    fn every_bad_form_is_the_same_error() {
        let cases: &[&[&'static str]] = &[
            &[],
            &[""],
            &["Bearer"],
            &["Bearer "],
            &["bearer alpha-key"],
            &["Basic alpha-key"],
            &["Bearer alpha-kez"],
            &["Bearer alpha-key "],
            &["Bearer  alpha-key"],
            &["Bearer alpha-key", "Bearer alpha-key"],
        ];
        for case in cases {
            assert_eq!(
                authenticate(&with_auth(case), &keys()),
                Err(AuthError),
                "{case:?}"
            );
        }
    }
}
