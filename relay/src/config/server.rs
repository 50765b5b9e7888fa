//! The listeners and the process: addresses, worker threads, request and header limits, timeouts, stream counts,
//! logs, audit lines and metrics (the top-level keys of the file).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::route::timeout;
use super::{ConfigError, RawConfig, field};

const MAX_BODY_LIMIT: u64 = 64 << 20;
const MAX_AUDIT_TEXT: usize = 1 << 20;
/// Most log lines queued for the writer (each up to `audit.max_text_bytes` plus a little).
const MAX_LOG_QUEUE: usize = 1 << 20;
/// More worker threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

pub(super) fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
pub(super) fn default_admin_listen() -> String {
    "127.0.0.1:9464".into()
}
pub(super) fn default_body_limit() -> u64 {
    1 << 20
}
pub(super) fn default_log_queue_lines() -> usize {
    4096
}
pub(super) fn default_header_read_ms() -> u64 {
    30_000
}
pub(super) fn default_header_bytes() -> usize {
    64 << 10
}
pub(super) fn default_write_ms() -> u64 {
    30_000
}
pub(super) fn default_grace_ms() -> u64 {
    30_000
}
pub(super) fn default_max_streams() -> u32 {
    10_000
}
pub(super) fn default_max_tenant_streams() -> u32 {
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

/// The server's part of [`super::Config`], validated.
pub(super) struct Server {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub workers: usize,
    pub max_request_body_bytes: u64,
    pub log_queue_lines: usize,
    pub limits: ServerLimits,
    pub audit: AuditConfig,
}

/// Checks the top-level keys; `workers = 0` becomes the number of CPUs.
pub(super) fn validate(raw: &RawConfig) -> Result<Server, ConfigError> {
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
    Ok(Server {
        listen,
        admin_listen,
        workers: match raw.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        },
        max_request_body_bytes: raw.max_request_body_bytes,
        log_queue_lines: raw.log_queue_lines,
        limits: server_limits(raw)?,
        audit: AuditConfig {
            enabled: raw.audit.enabled,
            max_text_bytes: raw.audit.max_text_bytes,
        },
    })
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
