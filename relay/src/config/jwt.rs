//! `[auth.jwt]`: JWT client authentication beside the hashed keys, as plain data: the JWKS file is read, and the
//! verifier built, at startup ([`crate::auth::jwt::Verifier::load`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::{ConfigError, field};

/// The algorithms the relay verifies, by their JOSE names.
pub const ALGORITHMS: [(&str, Algorithm); 3] = [
    ("RS256", Algorithm::RS256),
    ("ES256", Algorithm::ES256),
    ("EdDSA", Algorithm::EdDSA),
];

/// Everything `[auth.jwt]` says, validated.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub jwks_file: PathBuf,
    pub algorithms: Vec<Algorithm>,
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    pub tenant_claim: String,
    pub jwks_check_interval: Duration,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub jwt: Option<RawJwt>,
}

/// `[auth.jwt]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// The identity provider's public keys (a JWKS document: `{"keys": [...]}`), re-read when it changes.
    pub jwks_file: PathBuf,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// `iss` every token must carry.
    pub issuer: String,
    /// A value `aud` must be (or contain).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// The claim naming the caller's tenant; it must be a configured tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// How often a request may look whether the JWKS file changed.
    #[serde(default = "default_check_ms")]
    pub jwks_check_interval_ms: u64,
}

fn default_algorithms() -> Vec<String> {
    ALGORITHMS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect()
}
fn default_leeway() -> u64 {
    30
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_check_ms() -> u64 {
    1000
}

/// The longest leeway accepted: more would let a token live on long after it expired.
const MAX_LEEWAY_SECS: u64 = 300;

/// Validates `[auth.jwt]` (its JWKS file is read at startup, where an unreadable or unusable one is refused as
/// `auth.jwt.jwks_file`).
pub fn validate(
    raw: Option<&RawJwt>,
    tenants: &[Arc<str>],
) -> Result<Option<JwtSettings>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.algorithms.is_empty() {
        return Err(field(
            "auth.jwt.algorithms",
            "must name at least one algorithm",
        ));
    }
    let mut algorithms = Vec::new();
    for name in &raw.algorithms {
        let Some((_, alg)) = ALGORITHMS.iter().find(|(n, _)| n == name) else {
            let known: Vec<&str> = ALGORITHMS.iter().map(|(n, _)| *n).collect();
            return Err(field(
                "auth.jwt.algorithms",
                format!(
                    "`{name}` is not one of {} (HMAC and `none` are never accepted)",
                    known.join(", ")
                ),
            ));
        };
        if !algorithms.contains(alg) {
            algorithms.push(*alg);
        }
    }
    if raw.issuer.trim().is_empty() {
        return Err(field("auth.jwt.issuer", "must not be empty"));
    }
    if raw.audience.trim().is_empty() {
        return Err(field("auth.jwt.audience", "must not be empty"));
    }
    if raw.leeway_secs > MAX_LEEWAY_SECS {
        return Err(field(
            "auth.jwt.leeway_secs",
            format!("must be at most {MAX_LEEWAY_SECS}"),
        ));
    }
    if raw.tenant_claim.trim().is_empty() {
        return Err(field("auth.jwt.tenant_claim", "must not be empty"));
    }
    if tenants.is_empty() {
        return Err(field(
            "tenants",
            "JWTs name their tenant, so at least one tenant must be configured ([[tenants]] or [[clients]])",
        ));
    }
    Ok(Some(JwtSettings {
        jwks_file: raw.jwks_file.clone(),
        algorithms,
        issuer: raw.issuer.clone(),
        audience: raw.audience.clone(),
        leeway: Duration::from_secs(raw.leeway_secs),
        tenant_claim: raw.tenant_claim.clone(),
        jwks_check_interval: Duration::from_millis(raw.jwks_check_interval_ms),
    }))
}
