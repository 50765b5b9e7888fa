//! Client authentication: `Authorization: Bearer <credential>`, where the credential is a client key (checked
//! against configured SHA-256 digests) or, with `[auth.jwt]`, a JWT from the platform's identity provider
//! ([`jwt`]).
//!
//! The presented key is hashed once, then compared with every configured digest in constant time
//! (`subtle::ConstantTimeEq` on equal-length digests), visiting all of them so timing does not reveal which tenant
//! matched or how many are configured. A credential that is no configured key is tried as a JWT when JWTs are
//! configured. Every failure is the same 401 for the caller, who cannot tell a missing key from a wrong one or an
//! expired token from a forged one; [`AuthError::reason`] says which for the log line. Routes that need no key
//! (`/healthz`) are decided before, in [`crate::route`]; the next stage is [`crate::limit`].

pub mod jwt;

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// The authenticated caller, passed down the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Arc<str>,
}

pub use crate::config::ClientKey;

/// Missing, malformed, unknown or refused credential. The client is told only the `Display` text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("missing or invalid client key")]
pub struct AuthError {
    /// Why, for the operator's log line: fixed text, never the credential.
    pub reason: &'static str,
}

impl AuthError {
    pub const fn new(reason: &'static str) -> Self {
        Self { reason }
    }
}

/// The configured credentials: client keys, and JWTs when `[auth.jwt]` is set.
#[derive(Clone, Debug)]
pub struct Authenticator {
    keys: Vec<ClientKey>,
    jwt: Option<Arc<jwt::Verifier>>,
}

impl Authenticator {
    pub fn with(keys: Vec<ClientKey>, jwt: Option<Arc<jwt::Verifier>>) -> Self {
        Self { keys, jwt }
    }

    /// The caller of a request with these headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(AuthError::new("no single Authorization header"));
        };
        let token = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .filter(|t| !t.is_empty() && !t.contains(&b' '))
            .ok_or(AuthError::new("not a bearer credential"))?;
        if let Some(tenant) = key_tenant(token, &self.keys) {
            return Ok(Principal { tenant });
        }
        match (&self.jwt, std::str::from_utf8(token)) {
            // A JWT is three base64url parts: anything else is a key, and not a configured one.
            (Some(jwt), Ok(token)) if token.bytes().filter(|&b| b == b'.').count() == 2 => {
                jwt.verify(token).map(|tenant| Principal { tenant })
            }
            _ => Err(AuthError::new("unknown client key")),
        }
    }
}

/// The tenant whose key `token` is, comparing with every digest in constant time.
fn key_tenant(token: &[u8], keys: &[ClientKey]) -> Option<Arc<str>> {
    let presented: [u8; 32] = Sha256::digest(token).into();
    let mut found: Option<&ClientKey> = None;
    for key in keys {
        let hit: Choice = key.sha256.ct_eq(&presented);
        if bool::from(hit) {
            found = Some(key);
        }
    }
    found.map(|k| k.tenant.clone())
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

    fn authenticate(headers: &HeaderMap, keys: &[ClientKey]) -> Result<Principal, AuthError> {
        Authenticator::with(keys.to_vec(), None).authenticate(headers)
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
            assert!(authenticate(&with_auth(case), &keys()).is_err(), "{case:?}");
        }
    }
}
