//! Who may call and how much: client keys (`[[clients]]`), tenants (`[[tenants]]`) with their limits and
//! `[tenant_defaults]`, and the admin key. All plain data: [`crate::auth`] checks keys against [`ClientKey`]s and
//! [`crate::limit`] counts against [`Limits`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;

use super::{ConfigError, field};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub tenant: String,
    /// Lower-case hex SHA-256 of the client's bearer key (`printf %s KEY | sha256sum`).
    pub key_sha256: String,
}

/// `[[tenants]]`: a tenant by name, and the limits it sets itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub name: String,
    /// As in [`RawTenantLimits`]; each absent one is `[tenant_defaults]`'s.
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub tokens_per_day: Option<u64>,
    pub tokens_per_month: Option<u64>,
    pub reserve_output_tokens: Option<u64>,
    /// This tenant's concurrent streams; absent: `max_streams_per_tenant`.
    pub max_streams: Option<u32>,
    /// The request policy (`[policies.<name>]`) on every route; absent: each route's own.
    pub policy: Option<String>,
}

/// A tenant's limits (`[tenant_defaults]`, or in its `[[tenants]]` entry); absent: no limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantLimits {
    /// Requests admitted per minute (a burst of all of them, then one per 60/N seconds).
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute (prompt + completion, as the vendor's usage reports them): a request goes while any are
    /// left, and its stream is charged what it used when it ends.
    pub tokens_per_minute: Option<u32>,
    /// Tokens per UTC day and per UTC month, charged the same way.
    pub tokens_per_day: Option<u64>,
    pub tokens_per_month: Option<u64>,
    /// With token limits: the answer's size a request reserves when it names no `max_tokens` (1024 when absent).
    pub reserve_output_tokens: Option<u64>,
}

/// A client key: who it belongs to and the SHA-256 of the key itself (`[[clients]]`).
#[derive(Clone, Debug)]
pub struct ClientKey {
    pub tenant: Arc<str>,
    pub sha256: [u8; 32],
}

/// One tenant's limits as configured; each `None` is no limit (`max_streams`: the relay's per-tenant default;
/// `reserve_output_tokens`: [`crate::limit::DEFAULT_RESERVE_OUTPUT`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens: TokenLimits,
    pub max_streams: Option<u32>,
    /// The answer's size a request reserves when it names no `max_tokens` (token limits only).
    pub reserve_output_tokens: Option<u64>,
}

/// A tenant's token limits; each `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenLimits {
    pub per_minute: Option<u32>,
    pub per_day: Option<u64>,
    pub per_month: Option<u64>,
}

pub(super) fn validate_clients(
    raw: &[RawClient],
    jwt: bool,
) -> Result<Vec<ClientKey>, ConfigError> {
    if raw.is_empty() && !jwt {
        return Err(field(
            "clients",
            "at least one [[clients]] entry (or [auth.jwt]) is required (no key, no access)",
        ));
    }
    let mut seen = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, c)| {
            if c.tenant.trim().is_empty() {
                return Err(field(format!("clients[{i}].tenant"), "must not be empty"));
            }
            let sha256 = parse_sha256(&c.key_sha256).ok_or_else(|| {
                field(
                    format!("clients[{i}].key_sha256"),
                    "must be 64 hex digits (the SHA-256 of the key)",
                )
            })?;
            if !seen.insert(sha256) {
                return Err(field(
                    format!("clients[{i}].key_sha256"),
                    "the same key is configured twice",
                ));
            }
            Ok(ClientKey {
                tenant: Arc::from(c.tenant.as_str()),
                sha256,
            })
        })
        .collect()
}

/// The tenants of `[[tenants]]` (each named once, not empty), then those only `[[clients]]` name.
pub(super) fn validate_tenants(
    raw: &[RawTenant],
    clients: &[ClientKey],
) -> Result<Vec<Arc<str>>, ConfigError> {
    let mut tenants: Vec<Arc<str>> = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        if t.name.trim().is_empty() {
            return Err(field(format!("tenants[{i}].name"), "must not be empty"));
        }
        if tenants.iter().any(|known| **known == *t.name) {
            return Err(field(
                format!("tenants[{i}].name"),
                format!("`{}` is configured twice", t.name),
            ));
        }
        tenants.push(Arc::from(t.name.as_str()));
    }
    for c in clients {
        if !tenants.contains(&c.tenant) {
            tenants.push(c.tenant.clone());
        }
    }
    Ok(tenants)
}

/// A limit of 0 is refused (leave it out for the default).
fn positive<T: Copy + Default + PartialEq>(
    name: &str,
    limit: Option<T>,
) -> Result<Option<T>, ConfigError> {
    match limit {
        Some(n) if n == T::default() => Err(field(
            name,
            "must be at least 1 (leave it out for the default)",
        )),
        other => Ok(other),
    }
}

/// The limits written at `at` (`tenant_defaults`, `tenants[2]`), each checked.
fn checked(at: &str, l: &RawTenantLimits, streams: Option<u32>) -> Result<Limits, ConfigError> {
    let name = |f: &str| format!("{at}.{f}");
    Ok(Limits {
        requests_per_minute: positive(&name("requests_per_minute"), l.requests_per_minute)?,
        tokens: TokenLimits {
            per_minute: positive(&name("tokens_per_minute"), l.tokens_per_minute)?,
            per_day: positive(&name("tokens_per_day"), l.tokens_per_day)?,
            per_month: positive(&name("tokens_per_month"), l.tokens_per_month)?,
        },
        max_streams: positive(&name("max_streams"), streams)?,
        reserve_output_tokens: positive(&name("reserve_output_tokens"), l.reserve_output_tokens)?,
    })
}

/// Each limit the tenant sets, else the default's (`max_streams` has no default here: the relay's applies).
fn merged(own: Limits, defaults: Limits) -> Limits {
    Limits {
        requests_per_minute: own.requests_per_minute.or(defaults.requests_per_minute),
        tokens: TokenLimits {
            per_minute: own.tokens.per_minute.or(defaults.tokens.per_minute),
            per_day: own.tokens.per_day.or(defaults.tokens.per_day),
            per_month: own.tokens.per_month.or(defaults.tokens.per_month),
        },
        max_streams: own.max_streams,
        reserve_output_tokens: own.reserve_output_tokens.or(defaults.reserve_output_tokens),
    }
}

/// Each tenant's limits: its own, else `[tenant_defaults]`'s, one by one. `tenants` is [`validate_tenants`]'s
/// list: the `[[tenants]]` entries first, in order, then the tenants only `[[clients]]` name.
pub(super) fn tenant_limits(
    raw: &[RawTenant],
    defaults: &RawTenantLimits,
    tenants: &[Arc<str>],
) -> Result<HashMap<Arc<str>, Limits>, ConfigError> {
    let defaults = checked("tenant_defaults", defaults, None)?;
    let mut out = HashMap::new();
    for (i, (t, name)) in raw.iter().zip(tenants).enumerate() {
        let own = RawTenantLimits {
            requests_per_minute: t.requests_per_minute,
            tokens_per_minute: t.tokens_per_minute,
            tokens_per_day: t.tokens_per_day,
            tokens_per_month: t.tokens_per_month,
            reserve_output_tokens: t.reserve_output_tokens,
        };
        let own = checked(&format!("tenants[{i}]"), &own, t.max_streams)?;
        out.insert(name.clone(), merged(own, defaults));
    }
    for name in &tenants[raw.len()..] {
        out.insert(name.clone(), defaults);
    }
    Ok(out)
}

/// The policy of each `[[tenants]]` entry that names one.
pub(super) fn tenant_policies(
    raw: &[RawTenant],
    policies: &HashMap<String, Arc<super::Policy>>,
) -> Result<HashMap<Arc<str>, Arc<super::Policy>>, ConfigError> {
    let mut out = HashMap::new();
    for (i, t) in raw.iter().enumerate() {
        let at = format!("tenants[{i}].policy");
        if let Some(p) = super::policy::named(&at, t.policy.as_deref(), policies)? {
            out.insert(Arc::from(t.name.as_str()), p);
        }
    }
    Ok(out)
}

/// `admin_key_sha256`, when set.
pub(super) fn admin_key(raw: Option<&str>) -> Result<Option<[u8; 32]>, ConfigError> {
    raw.map(|d| {
        parse_sha256(d).ok_or_else(|| {
            field(
                "admin_key_sha256",
                "must be 64 lower-case hex digits (printf %s KEY | sha256sum)",
            )
        })
    })
    .transpose()
}

/// 64 hex digits → 32 bytes.
pub fn parse_sha256(digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(digest, &mut out).ok()?;
    Some(out)
}
