//! JWT client authentication (`[auth.jwt]`): a bearer token signed by the platform's identity provider, checked
//! against the public keys of a JWKS file.
//!
//! A token is accepted only when all of this holds, in this order (the first that fails is the log's `reason`; the
//! client sees the same 401 for every one):
//!
//! 1. it is a compact JWS whose header names an allowed algorithm (RS256, ES256 or EdDSA; `none` and the HMAC
//!    family are not algorithms the relay knows, so a token using them is malformed) and a `kid`;
//! 2. the JWKS has a key with that `kid`, made for that algorithm (an RSA key verifies RS256 only, a P-256 key ES256,
//!    an Ed25519 key EdDSA: a token cannot pick the algorithm a key is used with);
//! 3. the signature verifies;
//! 4. `exp` is present and not past, `nbf` (when present) is not in the future, both with `leeway`;
//! 5. `iss` and `aud` are the configured ones (`aud` may be a list that contains it);
//! 6. the tenant claim is a string naming a tenant of the configuration.
//!
//! The JWKS file is re-read when its modification time or size changes, checked at most once per
//! `jwks_check_interval` and only by a request that finds the check due (no task, no timer). A file that no longer
//! parses keeps the previous keys and logs a warning once per change. Symmetric (`oct`) keys in the file are
//! refused: HMAC would let anyone holding the "public" key set mint tokens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::time::Instant;

use super::AuthError;
pub use crate::config::{ALGORITHMS, JwtSettings as Settings};

/// A JWKS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a JWKS document: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },
}

/// The keys of one version of the file, by `kid`.
struct KeySet {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
}

/// When the file was last looked at, and what it looked like.
struct Stamp {
    next_check: Instant,
    seen: Option<(SystemTime, u64)>,
}

/// Verifies tokens against the current keys; shared by every worker.
pub struct Verifier {
    settings: Settings,
    /// One prepared validation per allowed algorithm (issuer, audience, leeway, required claims).
    validations: Vec<(Algorithm, Validation)>,
    /// The configured tenants, to hand out the configuration's own `Arc<str>`.
    tenants: HashMap<String, Arc<str>>,
    keys: RwLock<Arc<KeySet>>,
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Reads the JWKS file once (an error is a configuration error) and prepares the checks.
    pub fn load(settings: Settings, tenants: &[Arc<str>]) -> Result<Self, JwksError> {
        let seen = file_stamp(&settings.jwks_file);
        let keys = read_keys(&settings.jwks_file, &settings.algorithms)?;
        let validations = settings
            .algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = settings.leeway.as_secs();
                v.validate_nbf = true;
                v.set_issuer(&[&settings.issuer]);
                v.set_audience(&[&settings.audience]);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                (alg, v)
            })
            .collect();
        Ok(Self {
            validations,
            tenants: tenants.iter().map(|t| (t.to_string(), t.clone())).collect(),
            keys: RwLock::new(Arc::new(keys)),
            stamp: Mutex::new(Stamp {
                next_check: Instant::now() + settings.jwks_check_interval,
                seen,
            }),
            settings,
        })
    }

    /// How many keys are in use (for the startup summary).
    pub fn key_count(&self) -> usize {
        self.current().keys.len()
    }

    /// The tenant `token` was issued for, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Arc<str>, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError::new("malformed token"))?;
        let Some((alg, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg)
        else {
            return Err(AuthError::new("token algorithm not allowed"));
        };
        let kid = header.kid.ok_or(AuthError::new("token has no kid"))?;
        self.reload_if_changed();
        let keys = self.current();
        let (key_alg, key) = keys.keys.get(&kid).ok_or(AuthError::new("unknown kid"))?;
        if key_alg != alg {
            return Err(AuthError::new("token algorithm does not match its key"));
        }
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token, key, validation,
        )
        .map_err(|e| AuthError::new(refusal(e.kind())))?
        .claims;
        let tenant = claims
            .get(&self.settings.tenant_claim)
            .and_then(serde_json::Value::as_str)
            .ok_or(AuthError::new("no tenant claim"))?;
        self.tenants
            .get(tenant)
            .cloned()
            .ok_or(AuthError::new("tenant not configured"))
    }

    fn current(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the file when the check is due and it changed. A request that finds another one checking goes on
    /// with the current keys.
    fn reload_if_changed(&self) {
        let Ok(mut stamp) = self.stamp.try_lock() else {
            return;
        };
        let now = Instant::now();
        if now < stamp.next_check {
            return;
        }
        stamp.next_check = now + self.settings.jwks_check_interval;
        let seen = file_stamp(&self.settings.jwks_file);
        if seen == stamp.seen {
            return;
        }
        stamp.seen = seen;
        match read_keys(&self.settings.jwks_file, &self.settings.algorithms) {
            Ok(keys) => {
                tracing::info!(keys = keys.keys.len(), "JWKS file changed: keys reloaded");
                let keys = Arc::new(keys);
                match self.keys.write() {
                    Ok(mut k) => *k = keys,
                    Err(poisoned) => *poisoned.into_inner() = keys,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS file changed but cannot be used: keeping the previous keys");
            }
        }
    }
}

/// The log's reason for a token `jsonwebtoken` refused.
fn refusal(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::MissingRequiredClaim(_) => "missing exp, iss or aud",
        ErrorKind::InvalidAlgorithm => "token algorithm not allowed",
        _ => "malformed token",
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The usable keys of the file: each needs a `kid` and must be an RSA, P-256 or Ed25519 public key whose algorithm
/// is allowed (keys for other algorithms are skipped, so an identity provider's full key set can be used as it is).
fn read_keys(path: &Path, allowed: &[Algorithm]) -> Result<KeySet, JwksError> {
    let text = std::fs::read_to_string(path).map_err(|error| JwksError::Read {
        path: path.to_owned(),
        error,
    })?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| JwksError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let bad = |reason: String| JwksError::Key {
        path: path.to_owned(),
        reason,
    };
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| bad(format!("key {i} has no `kid`")))?;
        let Some(alg) =
            key_algorithm(jwk).map_err(|reason| bad(format!("key `{kid}`: {reason}")))?
        else {
            continue;
        };
        if !allowed.contains(&alg) {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("key `{kid}`: {e}")))?;
        if keys.insert(kid.clone(), (alg, key)).is_some() {
            return Err(bad(format!("`kid` `{kid}` is used by two keys")));
        }
    }
    if keys.is_empty() {
        return Err(bad(
            "no key the relay can use (RSA, P-256 or Ed25519, with a `kid`, for an allowed algorithm)".into(),
        ));
    }
    Ok(KeySet { keys })
}

/// The one algorithm a key verifies: `None` for a key type, curve or `alg` the relay does not use (an RSA key
/// marked `RS384`, say); an error for a symmetric key.
fn key_algorithm(jwk: &Jwk) -> Result<Option<Algorithm>, String> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (`oct`) key: HMAC tokens are never accepted".into());
        }
        _ => None,
    };
    let Some(by_type) = by_type else {
        return Ok(None);
    };
    match jwk.common.key_algorithm.map(Algorithm::try_from) {
        None => Ok(Some(by_type)),
        Some(Ok(named)) if named == by_type => Ok(Some(by_type)),
        // An RSA key for RS384, PS256…: not one the relay verifies.
        Some(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests;
