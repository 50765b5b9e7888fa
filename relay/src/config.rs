//! Configuration: a TOML file plus `RELAY_*` environment overrides, loaded once into an immutable, validated
//! [`Config`]. Precedence: command line > environment > file.
//!
//! Loading has two steps. [`RawConfig`] is the file's shape (serde, `deny_unknown_fields`, errors carry the field
//! path via `serde_path_to_error`); [`Config::from_raw`] turns it into checked types (socket addresses, durations,
//! digests, header values) and reads the vendor secrets from the environment or files. Secrets never come from the
//! TOML itself and never print: [`Secret`]'s `Debug` is redacted.
//!
//! The configuration is plain data: nothing here connects, verifies or spawns. The runtime objects made from it
//! (the Redis client, the JWT verifier, the vendor TLS settings) are built at startup ([`crate::startup`]), which
//! refuses what cannot be built with the same field-naming error. One file per concern:
//!
//! | file | keys |
//! |---|---|
//! | `config/server.rs` | listeners, workers, request and header limits, timeouts, stream counts, logs, audit, metrics |
//! | `config/route.rs`, `config/proxy.rs` | `[[routes]]`: vendors, failover, secrets, timeouts, TLS, egress proxy |
//! | `config/tenants.rs` | `[[clients]]`, `[[tenants]]`, `[tenant_defaults]`, `admin_key_sha256` |
//! | `config/policy.rs` | `[policies.<name>]`: request policies tenants and routes name |
//! | `config/jwt.rs` | `[auth.jwt]` |
//! | `config/store.rs` | `[store]` |
//! | `config/otel.rs` | `[otel]` and the standard `OTEL_*` variables |
//! | `config/env.rs` | `RELAY_*` environment overrides (environment layering) |
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

mod env;
mod error;
mod jwt;
mod otel;
pub mod policy;
mod proxy;
mod route;
mod server;
mod store;
mod tenants;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

pub use env::{ENV_PREFIX, Env, ProcessEnv};
use env::{apply_env, locate};
pub use error::ConfigError;
use error::field;
pub use jwt::{ALGORITHMS, JwtSettings, RawAuth, RawJwt};
pub use otel::{OtelConfig, RawOtel};
pub use policy::{Deny, Models, Policy, RawPolicy};
pub use proxy::{Egress, ProxyConfig};
pub use route::{
    Dialect, DialectSpec, MODEL_PLACEHOLDER, RawResume, RawRoute, RawTarget, Resume, Route,
    RouteTls, Secret, Target, TlsRoots, UpstreamAuth, UsageKeys, UsageMode,
};
pub use server::{AuditConfig, LogFormat, RawAudit, RawMetrics, ServerLimits, check_admin};
pub use store::{OnStoreError, RawStore, StoreServers, StoreSettings};
pub use tenants::{
    ClientKey, Limits, RawClient, RawTenant, RawTenantLimits, TokenLimits, parse_sha256,
};

/// The file's shape, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default = "server::default_listen")]
    pub listen: String,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`. Never route it through the public proxy.
    #[serde(default = "server::default_admin_listen")]
    pub admin_listen: String,
    /// Worker threads; 0 (the default) means one per CPU.
    #[serde(default)]
    pub workers: usize,
    /// Each worker serves its own connections start to end (nginx style) instead of sharing a work-stealing pool.
    #[serde(default)]
    pub pin_connections: bool,
    #[serde(default = "server::default_body_limit")]
    pub max_request_body_bytes: u64,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Formatted log lines waiting for the log writer thread; more are dropped and counted ([`crate::logs`]).
    #[serde(default = "server::default_log_queue_lines")]
    pub log_queue_lines: usize,
    #[serde(default = "server::default_header_read_ms")]
    pub header_read_timeout_ms: u64,
    #[serde(default = "server::default_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "server::default_write_ms")]
    pub write_timeout_ms: u64,
    #[serde(default = "server::default_grace_ms")]
    pub shutdown_grace_ms: u64,
    #[serde(default = "server::default_max_streams")]
    pub max_streams: u32,
    #[serde(default = "server::default_max_tenant_streams")]
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
    /// Request policies by name (`[policies.<name>]`), for tenants and routes to name.
    #[serde(default)]
    pub policies: HashMap<String, RawPolicy>,
    /// Limits of every tenant that does not set its own.
    #[serde(default)]
    pub tenant_defaults: RawTenantLimits,
    #[serde(default)]
    pub clients: Vec<RawClient>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
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
    /// JWT authentication (`[auth.jwt]`); its JWKS file is read at startup.
    pub jwt: Option<JwtSettings>,
    /// Every tenant: those of `[[tenants]]`, then those of `[[clients]]`, each once.
    pub tenants: Vec<Arc<str>>,
    /// Every tenant's limits (its own, else `[tenant_defaults]`'s; `max_streams` only when it sets its own).
    pub tenant_limits: HashMap<Arc<str>, Limits>,
    /// The request policy of each tenant that names one ([`crate::policy`]); it wins over the route's.
    pub tenant_policies: HashMap<Arc<str>, Arc<Policy>>,
    /// SHA-256 of the key that reads `/admin/usage` on the admin listener; `None`: that endpoint is off.
    pub admin_key: Option<[u8; 32]>,
    /// The shared limit store (`[store]`); `None`: limits in the process.
    pub store: Option<StoreSettings>,
    pub routes: Vec<Route>,
    /// SHA-256 of the file's text, when the configuration came from a file ([`Config::load`]): which version of
    /// it is serving (`ssegate_config_info{sha256}`).
    pub file_sha256: Option<[u8; 32]>,
}

impl Config {
    /// Reads `path` and applies the environment. Every error names where the bad value came from: the file and
    /// the key in it, or the environment variable.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, env, Some(path))?;
        config.file_sha256 = Some(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()).into());
        Ok(config)
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

    /// Validates a parsed file and reads its secrets, concern by concern.
    pub fn from_raw(raw: RawConfig, env: &dyn Env) -> Result<Config, ConfigError> {
        let server = server::validate(&raw)?;
        let clients = tenants::validate_clients(&raw.clients, raw.auth.jwt.is_some())?;
        let tenants = tenants::validate_tenants(&raw.tenants, &clients)?;
        let tenant_limits = tenants::tenant_limits(&raw.tenants, &raw.tenant_defaults, &tenants)?;
        let admin_key = tenants::admin_key(raw.admin_key_sha256.as_deref())?;
        let store = raw.store.as_ref().map(store::validate).transpose()?;
        let jwt = jwt::validate(raw.auth.jwt.as_ref(), &tenants)?;
        let policies = policy::validate_policies(&raw.policies)?;
        let tenant_policies = tenants::tenant_policies(&raw.tenants, &policies)?;
        let routes = route::validate_routes(&raw.routes, env, &policies)?;
        Ok(Config {
            listen: server.listen,
            admin_listen: server.admin_listen,
            workers: server.workers,
            pin_connections: raw.pin_connections,
            max_request_body_bytes: server.max_request_body_bytes,
            log_format: raw.log_format,
            log_queue_lines: server.log_queue_lines,
            limits: server.limits,
            audit: server.audit,
            metrics: raw.metrics.enabled,
            otel: otel::validate(raw.otel.as_ref(), env)?,
            clients,
            jwt,
            tenants,
            tenant_limits,
            tenant_policies,
            admin_key,
            store,
            routes,
            file_sha256: None,
        })
    }

    /// The settings that differ in `next` but cannot change while the relay runs (a reload that changes one is
    /// refused, naming it): the listeners and their limits, the worker threads, logging, metrics, traces and the
    /// limit store. Everything else (tenants, keys, limits, routes, vendor secrets, timeouts) takes effect at once.
    pub fn needs_restart(&self, next: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.limits, &next.limits);
        [
            ("listen", self.listen != next.listen),
            ("admin_listen", self.admin_listen != next.admin_listen),
            ("workers", self.workers != next.workers),
            (
                "pin_connections",
                self.pin_connections != next.pin_connections,
            ),
            ("log_format", self.log_format != next.log_format),
            (
                "log_queue_lines",
                self.log_queue_lines != next.log_queue_lines,
            ),
            (
                "header_read_timeout_ms",
                a.header_read_timeout != b.header_read_timeout,
            ),
            ("max_header_bytes", a.max_header_bytes != b.max_header_bytes),
            ("write_timeout_ms", a.write_timeout != b.write_timeout),
            ("shutdown_grace_ms", a.shutdown_grace != b.shutdown_grace),
            ("max_streams", a.max_streams != b.max_streams),
            ("metrics", self.metrics != next.metrics),
            ("otel", self.otel != next.otel),
            ("store", self.store != next.store),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

#[cfg(test)]
mod tests;
