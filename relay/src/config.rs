//! Configuration: a TOML file plus `RELAY_*` environment overrides, loaded once into an immutable, validated
//! [`Config`]. Precedence: command line > environment > file.
//!
//! Loading has two steps. [`RawConfig`] is the file's shape (serde, `deny_unknown_fields`, errors carry the field
//! path via `serde_path_to_error`); [`Config::from_raw`] turns it into checked types (socket addresses, durations,
//! digests, header values) and reads the vendor secrets from the environment or files. Secrets never come from the
//! TOML itself and never print: [`Secret`]'s `Debug` is redacted.
//!
//! Environment overrides: `RELAY_<KEY>` sets a top-level key, `__` separates nesting (`RELAY_AUDIT__ENABLED=false`).
//! Values parse as TOML scalars, falling back to a string. The environment reaches this module only through the
//! [`Env`] trait, so tests never touch the process environment.
//!
//! Why not `figment`: it would do the same layering (it too splits nested keys on `__` and names the variable in
//! its errors) and replace `apply_env`'s forty lines, but it reads the process environment itself. Here the
//! environment comes through [`Env`], so a test hands the loader a map and runs in parallel with every other test;
//! with `figment` the tests would set real variables under `figment::Jail`, which serializes them (the style rules
//! out serial tests). Defaults are already per-field `#[serde(default = ...)]` functions, beside the field they
//! belong to. Durations are `_ms` integer fields throughout, one convention, each checked to lie between 1 ms and
//! a day.

mod jwt;
mod otel;
mod proxy;
mod route;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use crate::auth::ClientKey;
pub use jwt::{RawAuth, RawJwt};
pub use otel::{OtelConfig, RawOtel};
pub use proxy::{Egress, ProxyConfig};
pub use route::{
    RawRoute, RawTarget, Route, RouteTls, Secret, Target, TlsRoots, UpstreamAuth, UsageMode,
};
use route::{timeout, validate_route};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "RELAY_";

const MAX_BODY_LIMIT: u64 = 64 << 20;
const MAX_AUDIT_TEXT: usize = 1 << 20;
/// Most log lines queued for the writer (each up to `audit.max_text_bytes` plus a little).
const MAX_LOG_QUEUE: usize = 1 << 20;
/// More worker threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

/// Where environment values come from: the process in production, a map in tests.
pub trait Env {
    /// Every variable (name, value).
    fn vars(&self) -> Vec<(String, String)>;

    /// One variable.
    fn var(&self, name: &str) -> Option<String> {
        self.vars()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }

    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for Vec<(String, String)> {
    fn vars(&self) -> Vec<(String, String)> {
        self.clone()
    }
}

/// Why a configuration was rejected; `main` prints it and exits 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file{file} is not valid TOML")]
    Syntax {
        /// ` <path>`, or empty for text that came from no file.
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("config field `{field}`{origin}: {reason}")]
    Field {
        field: String,
        origin: String,
        reason: String,
    },
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        origin: String::new(),
        reason: reason.into(),
    }
}

/// Says where a field error's value came from, unless the error already does: the environment variable that set
/// the field (or the table it belongs to), else the file. `overridden`: (dotted field path, variable), from
/// [`apply_env`].
fn locate(e: ConfigError, overridden: &[(String, String)], file: Option<&Path>) -> ConfigError {
    let ConfigError::Field {
        field,
        origin,
        reason,
    } = e
    else {
        return e;
    };
    if !origin.is_empty() {
        return ConfigError::Field {
            field,
            origin,
            reason,
        };
    }
    // `a.b` is set by `a.b`, inside `a` (a whole table from one variable) or, for an error about table `a`, by
    // `a.b`. Array items (`routes[0]`) cannot come from the environment.
    let within = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with(['.', '[']))
    };
    let var = overridden
        .iter()
        .find(|(key, _)| within(&field, key) || within(key, &field));
    let origin = match (var, file) {
        (Some((_, var)), _) => format!(" (from environment variable {var})"),
        (None, Some(file)) => format!(" (in {})", file.display()),
        (None, None) => String::new(),
    };
    ConfigError::Field {
        field,
        origin,
        reason,
    }
}

/// The file's shape, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`. Never route it through the public proxy.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Worker threads; 0 (the default) means one per CPU.
    #[serde(default)]
    pub workers: usize,
    /// Each worker serves its own connections start to end (nginx style) instead of sharing a work-stealing pool.
    #[serde(default)]
    pub pin_connections: bool,
    #[serde(default = "default_body_limit")]
    pub max_request_body_bytes: u64,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Formatted log lines waiting for the log writer thread; more are dropped and counted ([`crate::logs`]).
    #[serde(default = "default_log_queue_lines")]
    pub log_queue_lines: usize,
    #[serde(default = "default_header_read_ms")]
    pub header_read_timeout_ms: u64,
    #[serde(default = "default_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "default_write_ms")]
    pub write_timeout_ms: u64,
    #[serde(default = "default_grace_ms")]
    pub shutdown_grace_ms: u64,
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    #[serde(default = "default_max_tenant_streams")]
    pub max_streams_per_tenant: u32,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Traces (`config/otel.rs`): off unless this section or the standard `OTEL_*` variables name a collector.
    pub otel: Option<RawOtel>,
    /// SHA-256 (hex) of the bearer key that reads `GET /admin/usage` on the admin listener; absent: off.
    pub admin_key_sha256: Option<String>,
    /// Credentials besides `[[clients]]` keys: `[auth.jwt]`.
    #[serde(default)]
    pub auth: RawAuth,
    /// Tenants by name, with their limits (those of `[[clients]]` need no entry unless their limits differ from
    /// `[tenant_defaults]`).
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    /// Where limits shared by replicas live (`[store]`); absent: in the process.
    pub store: Option<RawStore>,
    /// Limits of every tenant that does not set its own.
    #[serde(default)]
    pub tenant_defaults: RawTenantLimits,
    #[serde(default)]
    pub clients: Vec<RawClient>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9464".into()
}
fn default_body_limit() -> u64 {
    1 << 20
}
fn default_log_queue_lines() -> usize {
    4096
}
fn default_header_read_ms() -> u64 {
    30_000
}
fn default_header_bytes() -> usize {
    64 << 10
}
fn default_write_ms() -> u64 {
    30_000
}
fn default_grace_ms() -> u64 {
    30_000
}
fn default_max_streams() -> u32 {
    10_000
}
fn default_max_tenant_streams() -> u32 {
    1_000
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_audit_text")]
    pub max_text_bytes: usize,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            enabled: true,
            max_text_bytes: default_audit_text(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_audit_text() -> usize {
    4096
}

/// `[metrics]`: whether the request path records metrics at all (the admin listener serves process metrics either
/// way). Off exists to measure what metrics cost: `perf.sh` runs a relay with each setting side by side.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self { enabled: true }
    }
}

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
}

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
    pub ca_file: Option<std::path::PathBuf>,
    /// Each store call's limit; then `on_store_error` applies.
    #[serde(default = "default_store_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_on_store_error")]
    pub on_store_error: crate::limit::store::OnStoreError,
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
fn default_on_store_error() -> crate::limit::store::OnStoreError {
    crate::limit::store::OnStoreError::Allow
}
fn default_key_prefix() -> String {
    "ssegate".into()
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

/// Audit log settings.
#[derive(Clone, Copy, Debug)]
pub struct AuditConfig {
    pub enabled: bool,
    pub max_text_bytes: usize,
}

/// Limits of the listener and of the whole process.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Time a client gets to send a complete request head (slowloris).
    pub header_read_timeout: Duration,
    /// Largest request head; larger ones get 431. Also hyper's per-connection buffer cap, which bounds what a
    /// client that stops reading can make the relay hold.
    pub max_header_bytes: usize,
    /// A client that accepts no bytes for this long is disconnected (its upstream cancelled).
    pub write_timeout: Duration,
    /// How long in-flight streams may run after SIGTERM before they get a `shutdown` error event.
    pub shutdown_grace: Duration,
    /// Concurrent streams in all (503 beyond) and per tenant (429 beyond).
    pub max_streams: u32,
    pub max_streams_per_tenant: u32,
}

/// The validated, immutable configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served ([`crate::admin`]).
    pub admin_listen: SocketAddr,
    /// Threads serving connections ([`crate::server::serve_workers`]).
    pub workers: usize,
    /// Whether each of them serves its own connections start to end, or they share one work-stealing scheduler.
    pub pin_connections: bool,
    pub max_request_body_bytes: u64,
    pub log_format: LogFormat,
    /// Log lines queued for the writer thread before more are dropped.
    pub log_queue_lines: usize,
    pub limits: ServerLimits,
    pub audit: AuditConfig,
    /// Whether the request path records metrics ([`crate::metrics`]).
    pub metrics: bool,
    /// Where spans are exported ([`crate::otel`]); `None`: traces off.
    pub otel: Option<OtelConfig>,
    pub clients: Vec<ClientKey>,
    /// JWT authentication (`[auth.jwt]`), its keys loaded.
    pub jwt: Option<Arc<crate::auth::jwt::Verifier>>,
    /// Every tenant: those of `[[tenants]]`, then those of `[[clients]]`, each once.
    pub tenants: Vec<Arc<str>>,
    /// Every tenant's limits (its own, else `[tenant_defaults]`'s; `max_streams` only when it sets its own).
    pub tenant_limits: HashMap<Arc<str>, crate::limit::Limits>,
    /// SHA-256 of the key that reads `/admin/usage` on the admin listener; `None`: that endpoint is off.
    pub admin_key: Option<[u8; 32]>,
    /// The shared limit store (`[store]`); `None`: limits in the process.
    pub store: Option<crate::limit::store::StoreConfig>,
    pub routes: Vec<Route>,
}

impl Config {
    /// Reads `path` and applies the environment. Every error names where the bad value came from: the file and
    /// the key in it, or the environment variable.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, env, Some(path))
    }

    /// Parses TOML text, applies `RELAY_*` overrides from `env`, validates, reads secrets.
    pub fn from_toml(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::parse(text, env, None)
    }

    fn parse(text: &str, env: &dyn Env, file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|source| ConfigError::Syntax {
            file: file
                .map(|f| format!(" {}", f.display()))
                .unwrap_or_default(),
            source,
        })?;
        let overridden = apply_env(&mut table, env)?;
        let located = |e: ConfigError| locate(e, &overridden, file);
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                located(ConfigError::Field {
                    field: e.path().to_string(),
                    origin: String::new(),
                    reason: e.into_inner().to_string(),
                })
            })?;
        Self::from_raw(raw, env).map_err(located)
    }

    /// Validates a parsed file and reads its secrets.
    pub fn from_raw(raw: RawConfig, env: &dyn Env) -> Result<Config, ConfigError> {
        let address = |name: &str, value: &str| {
            value
                .parse::<SocketAddr>()
                .map_err(|_| field(name, format!("`{value}` is not an IP:port address")))
        };
        let listen = address("listen", &raw.listen)?;
        let admin_listen = address("admin_listen", &raw.admin_listen)?;
        check_admin(listen, admin_listen)?;
        if raw.max_request_body_bytes == 0 || raw.max_request_body_bytes > MAX_BODY_LIMIT {
            return Err(field(
                "max_request_body_bytes",
                format!("must be from 1 to {MAX_BODY_LIMIT}"),
            ));
        }
        if raw.audit.max_text_bytes > MAX_AUDIT_TEXT {
            return Err(field(
                "audit.max_text_bytes",
                format!("must be at most {MAX_AUDIT_TEXT}"),
            ));
        }
        let audit = AuditConfig {
            enabled: raw.audit.enabled,
            max_text_bytes: raw.audit.max_text_bytes,
        };
        let clients = validate_clients(&raw.clients, raw.auth.jwt.is_some())?;
        let tenants = validate_tenants(&raw.tenants, &clients)?;
        let tenant_limits = tenant_limits(&raw, &tenants)?;
        let admin_key = raw
            .admin_key_sha256
            .as_deref()
            .map(|d| {
                parse_sha256(d).ok_or_else(|| {
                    field(
                        "admin_key_sha256",
                        "must be 64 lower-case hex digits (printf %s KEY | sha256sum)",
                    )
                })
            })
            .transpose()?;
        let store = raw.store.as_ref().map(validate_store).transpose()?;
        let jwt = jwt::validate(raw.auth.jwt.as_ref(), &tenants)?;
        if raw.routes.is_empty() {
            return Err(field("routes", "at least one [[routes]] entry is required"));
        }
        let mut paths = HashSet::new();
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.iter().enumerate() {
            let route = validate_route(i, r, env)?;
            if !paths.insert(route.path.clone()) {
                return Err(field(
                    format!("routes[{i}].path"),
                    format!("`{}` is used by another route", r.path),
                ));
            }
            routes.push(route);
        }
        if raw.workers > MAX_WORKERS {
            return Err(field(
                "workers",
                format!("must be from 0 (one per CPU) to {MAX_WORKERS}"),
            ));
        }
        if !(16..=MAX_LOG_QUEUE).contains(&raw.log_queue_lines) {
            return Err(field(
                "log_queue_lines",
                format!("must be from 16 to {MAX_LOG_QUEUE}"),
            ));
        }
        let workers = match raw.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        Ok(Config {
            listen,
            admin_listen,
            workers,
            pin_connections: raw.pin_connections,
            max_request_body_bytes: raw.max_request_body_bytes,
            log_format: raw.log_format,
            log_queue_lines: raw.log_queue_lines,
            limits: server_limits(&raw)?,
            audit,
            metrics: raw.metrics.enabled,
            otel: otel::validate(raw.otel.as_ref(), env)?,
            clients,
            jwt,
            tenants,
            tenant_limits,
            admin_key,
            store,
            routes,
        })
    }
}

/// The admin listener must not share the public one's address (port 0, "any free port", is two ports).
pub fn check_admin(listen: SocketAddr, admin: SocketAddr) -> Result<(), ConfigError> {
    if listen == admin && listen.port() != 0 {
        return Err(field(
            "admin_listen",
            format!("`{admin}` is also `listen`: the admin listener needs its own address"),
        ));
    }
    Ok(())
}

fn server_limits(raw: &RawConfig) -> Result<ServerLimits, ConfigError> {
    if !(8192..=1 << 20).contains(&raw.max_header_bytes) {
        return Err(field("max_header_bytes", "must be from 8192 to 1048576"));
    }
    for (name, value) in [
        ("max_streams", raw.max_streams),
        ("max_streams_per_tenant", raw.max_streams_per_tenant),
    ] {
        if value == 0 {
            return Err(field(name, "must be at least 1"));
        }
    }
    Ok(ServerLimits {
        header_read_timeout: timeout("header_read_timeout_ms", raw.header_read_timeout_ms)?,
        max_header_bytes: raw.max_header_bytes,
        write_timeout: timeout("write_timeout_ms", raw.write_timeout_ms)?,
        shutdown_grace: timeout("shutdown_grace_ms", raw.shutdown_grace_ms)?,
        max_streams: raw.max_streams,
        max_streams_per_tenant: raw.max_streams_per_tenant,
    })
}

/// Sets `RELAY_*` variables into the table; returns (field path, variable) for error messages.
fn apply_env(table: &mut toml::Table, env: &dyn Env) -> Result<Vec<(String, String)>, ConfigError> {
    let mut applied = Vec::new();
    for (var, value) in env.vars() {
        let Some(key) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
        if parts.iter().any(String::is_empty) {
            return Err(field(var, "malformed override name"));
        }
        let value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let mut node = &mut *table;
        for part in &parts[..parts.len() - 1] {
            let entry = node
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().ok_or_else(|| {
                field(
                    parts.join("."),
                    format!("{var} cannot override a non-table value"),
                )
            })?;
        }
        if let Some(last) = parts.last() {
            node.insert(last.clone(), value);
        }
        applied.push((parts.join("."), var));
    }
    Ok(applied)
}

fn validate_clients(raw: &[RawClient], jwt: bool) -> Result<Vec<ClientKey>, ConfigError> {
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
fn validate_tenants(
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

/// Each tenant's limits: its own, else `[tenant_defaults]`'s, one by one. A limit of 0 is refused (leave it out
/// for the default). `tenants` is [`validate_tenants`]'s list: the `[[tenants]]` entries first, in order, then the
/// tenants only `[[clients]]` name.
fn tenant_limits(
    raw: &RawConfig,
    tenants: &[Arc<str>],
) -> Result<HashMap<Arc<str>, crate::limit::Limits>, ConfigError> {
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
    let limits = |at: &str, l: &RawTenantLimits, streams: Option<u32>| {
        let name = |f: &str| format!("{at}.{f}");
        Ok::<_, ConfigError>(crate::limit::Limits {
            requests_per_minute: positive(&name("requests_per_minute"), l.requests_per_minute)?,
            tokens: crate::limit::TokenLimits {
                per_minute: positive(&name("tokens_per_minute"), l.tokens_per_minute)?,
                per_day: positive(&name("tokens_per_day"), l.tokens_per_day)?,
                per_month: positive(&name("tokens_per_month"), l.tokens_per_month)?,
            },
            max_streams: positive(&name("max_streams"), streams)?,
            reserve_output_tokens: positive(
                &name("reserve_output_tokens"),
                l.reserve_output_tokens,
            )?,
        })
    };
    let defaults = limits("tenant_defaults", &raw.tenant_defaults, None)?;
    let mut out = HashMap::new();
    for (i, (t, name)) in raw.tenants.iter().zip(tenants).enumerate() {
        let own = RawTenantLimits {
            requests_per_minute: t.requests_per_minute,
            tokens_per_minute: t.tokens_per_minute,
            tokens_per_day: t.tokens_per_day,
            tokens_per_month: t.tokens_per_month,
            reserve_output_tokens: t.reserve_output_tokens,
        };
        let own = limits(&format!("tenants[{i}]"), &own, t.max_streams)?;
        let merged = crate::limit::Limits {
            requests_per_minute: own.requests_per_minute.or(defaults.requests_per_minute),
            tokens: crate::limit::TokenLimits {
                per_minute: own.tokens.per_minute.or(defaults.tokens.per_minute),
                per_day: own.tokens.per_day.or(defaults.tokens.per_day),
                per_month: own.tokens.per_month.or(defaults.tokens.per_month),
            },
            max_streams: own.max_streams,
            reserve_output_tokens: own.reserve_output_tokens.or(defaults.reserve_output_tokens),
        };
        out.insert(name.clone(), merged);
    }
    for name in &tenants[raw.tenants.len()..] {
        out.insert(name.clone(), defaults);
    }
    Ok(out)
}

fn validate_store(raw: &RawStore) -> Result<crate::limit::store::StoreConfig, ConfigError> {
    use crate::limit::store::StoreClient;
    let urls: Vec<&str> = raw
        .url
        .iter()
        .chain(&raw.cluster_nodes)
        .map(String::as_str)
        .collect();
    let tls = urls.iter().any(|u| u.starts_with("rediss://"));
    let certs = match &raw.ca_file {
        None => None,
        Some(_) if !tls => {
            return Err(field("store.ca_file", "is for rediss:// URLs only"));
        }
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                field(
                    "store.ca_file",
                    format!("cannot read `{}`: {e}", path.display()),
                )
            })?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(field(
                    "store.ca_file",
                    format!("`{}` holds no PEM certificate", path.display()),
                ));
            }
            Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            })
        }
    };
    let client = match (&raw.url, raw.cluster_nodes.as_slice()) {
        (Some(url), []) => {
            let opened = match &certs {
                Some(certs) => redis::Client::build_with_tls(url.as_str(), certs.clone()),
                None => redis::Client::open(url.as_str()),
            };
            StoreClient::Single(Box::new(opened.map_err(|e| {
                field(
                    "store.url",
                    format!("not a Redis URL (redis://, rediss:// or unix://): {e}"),
                )
            })?))
        }
        (None, nodes) if !nodes.is_empty() => {
            for (i, node) in nodes.iter().enumerate() {
                redis::Client::open(node.as_str()).map_err(|e| {
                    field(
                        format!("store.cluster_nodes[{i}]"),
                        format!("not a Redis URL (redis:// or rediss://): {e}"),
                    )
                })?;
            }
            let mut builder =
                redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str));
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder
                .build()
                .map_err(|e| field("store.cluster_nodes", e.to_string()))?;
            StoreClient::Cluster(Box::new(client))
        }
        _ => {
            return Err(field(
                "store.url",
                "set exactly one of `url` (one Redis) and `cluster_nodes` (a Redis Cluster's seed nodes)",
            ));
        }
    };
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
    Ok(crate::limit::store::StoreConfig {
        client,
        timeout: Duration::from_millis(raw.timeout_ms),
        on_error: raw.on_store_error,
        key_prefix: raw.key_prefix.clone(),
        stream_lease: Duration::from_millis(raw.stream_lease_ms),
    })
}

/// 64 hex digits → 32 bytes.
pub fn parse_sha256(digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(digest, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests;
