//! `[store]`: the Redis that replicas share their limits through, as plain data. The URLs are checked here; the
//! client (and its CA certificates, read from `ca_file`) is built at startup ([`crate::startup`]).

use std::path::PathBuf;
use std::time::Duration;

use redis::IntoConnectionInfo;
use serde::Deserialize;

use super::proxy::redacted;
use super::{ConfigError, field};

/// `[store]`: Redis for limits shared by replicas.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `redis://host:port/db`, `rediss://…` (TLS) or `unix:///path/to/redis.sock`.
    pub url: Option<String>,
    /// Instead of `url`: a Redis Cluster's seed nodes (`redis://host:port`, `rediss://…`).
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// CA certificates (PEM) to trust for `rediss://` instead of the system's: a private CA's.
    pub ca_file: Option<PathBuf>,
    /// Each store call's limit; then `on_store_error` applies.
    #[serde(default = "default_store_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Prefix of every key, so that several relay deployments can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// A stream's tenant slot expires this long after the last renewal by the replica holding it (renewed every
    /// third of it): how long a dead replica's slots stay taken.
    #[serde(default = "default_stream_lease_ms")]
    pub stream_lease_ms: u64,
}

fn default_stream_lease_ms() -> u64 {
    10_000
}
fn default_store_timeout_ms() -> u64 {
    50
}
fn default_key_prefix() -> String {
    "ssegate".into()
}

/// What a request does when the store cannot answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Goes on without the limits the store keeps (the default: Redis down must not take the relay down).
    #[default]
    Allow,
    /// Is refused with 503.
    Deny,
}

/// Which Redis: one server (or a primary behind a failover proxy), or a Redis Cluster's seed nodes.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreServers {
    One(String),
    Cluster(Vec<String>),
}

impl StoreServers {
    /// Every URL, to see whether any is `rediss://`.
    pub fn urls(&self) -> &[String] {
        match self {
            Self::One(url) => std::slice::from_ref(url),
            Self::Cluster(nodes) => nodes,
        }
    }
}

/// URLs may carry a password: never printed.
impl std::fmt::Debug for StoreServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls().iter().map(|u| redacted(u)).collect();
        match self {
            Self::One(_) => f.debug_tuple("One").field(&urls[0]).finish(),
            Self::Cluster(_) => f.debug_tuple("Cluster").field(&urls).finish(),
        }
    }
}

/// `[store]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    pub servers: StoreServers,
    /// CA certificates for `rediss://` (only set with such a URL); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub on_error: OnStoreError,
    pub key_prefix: String,
    /// How long a stream's slot outlives the last renewal of the replica holding it.
    pub stream_lease: Duration,
}

pub(super) fn validate(raw: &RawStore) -> Result<StoreSettings, ConfigError> {
    let servers = servers(raw)?;
    let tls = servers.urls().iter().any(|u| u.starts_with("rediss://"));
    if raw.ca_file.is_some() && !tls {
        return Err(field("store.ca_file", "is for rediss:// URLs only"));
    }
    if !(1..=5000).contains(&raw.timeout_ms) {
        return Err(field("store.timeout_ms", "must be from 1 to 5000"));
    }
    if raw.key_prefix.is_empty() || raw.key_prefix.contains(['{', '}']) {
        return Err(field(
            "store.key_prefix",
            "must not be empty nor contain braces (they are the keys' hash tags)",
        ));
    }
    // Renewed every third of the lease, each renewal within the timeout: a lease must outlast a late renewal.
    if raw.stream_lease_ms < 300 || raw.stream_lease_ms < raw.timeout_ms * 6 {
        return Err(field(
            "store.stream_lease_ms",
            "must be at least 300 and at least six times timeout_ms",
        ));
    }
    Ok(StoreSettings {
        servers,
        ca_file: raw.ca_file.clone(),
        timeout: Duration::from_millis(raw.timeout_ms),
        on_error: raw.on_store_error,
        key_prefix: raw.key_prefix.clone(),
        stream_lease: Duration::from_millis(raw.stream_lease_ms),
    })
}

/// Exactly one of `url` and `cluster_nodes`, each a URL the Redis client takes.
fn servers(raw: &RawStore) -> Result<StoreServers, ConfigError> {
    let parses = |name: String, url: &str, schemes: &str| {
        url.into_connection_info()
            .map(drop)
            .map_err(|e| field(name, format!("not a Redis URL ({schemes}): {e}")))
    };
    match (&raw.url, raw.cluster_nodes.as_slice()) {
        (Some(url), []) => {
            parses("store.url".into(), url, "redis://, rediss:// or unix://")?;
            Ok(StoreServers::One(url.clone()))
        }
        (None, nodes) if !nodes.is_empty() => {
            for (i, node) in nodes.iter().enumerate() {
                parses(
                    format!("store.cluster_nodes[{i}]"),
                    node,
                    "redis:// or rediss://",
                )?;
            }
            Ok(StoreServers::Cluster(nodes.to_vec()))
        }
        _ => Err(field(
            "store.url",
            "set exactly one of `url` (one Redis) and `cluster_nodes` (a Redis Cluster's seed nodes)",
        )),
    }
}
