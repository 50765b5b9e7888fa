//! Route configuration: one inbound path, the vendor endpoints it may call (in failover order), how the vendor
//! wants its key, and the route's stream limits.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;

use super::{ConfigError, Env, field};

const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A `[[routes]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    /// The vendor's URL; `{model}` in its path is replaced by the request's model (Azure deployments, Gemini).
    pub upstream: String,
    /// The vendor's API: its credential header, path form, usage, end of answer and error event. Absent: OpenAI's
    /// (Anthropic's error event when `gen_ai_system = "anthropic"`), with no terminal line unless configured.
    pub dialect: Option<Dialect>,
    /// How the vendor wants its key; absent: the dialect's.
    pub auth: Option<UpstreamAuth>,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// More endpoints (or keys) tried in order before the first byte reaches the client.
    #[serde(default)]
    pub failover: Vec<RawTarget>,
    /// Attempts in all (first endpoint included); defaults to one per endpoint.
    pub max_attempts: Option<usize>,
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_first_byte_ms")]
    pub first_byte_timeout_ms: u64,
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_total_ms")]
    pub total_timeout_ms: u64,
    /// `: keep-alive` comment interval while the upstream is silent; 0 turns them off.
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_interval_ms: u64,
    /// The line that ends a complete answer (`data: [DONE]`); EOF without it is a truncation.
    pub terminal_event: Option<String>,
    #[serde(default = "default_max_event")]
    pub max_event_bytes: usize,
    /// Request headers to forward besides the defaults; a trailing `*` matches a prefix (`x-mock-*`).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Idle vendor connections kept per vendor host, per worker thread; more are closed as they come back.
    #[serde(default = "default_max_idle")]
    pub max_idle_connections: usize,
    /// How long an idle vendor connection is kept before it is closed.
    #[serde(default = "default_pool_idle_ms")]
    pub pool_idle_timeout_ms: u64,
    /// Send the vendor a W3C `traceparent` (and `tracestate`) naming the relay's span. Off by default: a
    /// third-party vendor has no use for your trace ids.
    #[serde(default)]
    pub propagate_trace: bool,
    /// The vendor's name in traces (`gen_ai.system`): `openai`, `anthropic`, `az.ai.openai`, ...; absent: the
    /// dialect's.
    pub gen_ai_system: Option<String>,
    /// CA certificates (PEM bundle) to trust for this route's `https` endpoints: a private CA, an internal gateway's.
    pub ca_file: Option<PathBuf>,
    /// Which CAs the route trusts: `native` (the system's), `ca_file`, or `both`. Default: `native`, or `both` when
    /// `ca_file` is set.
    pub tls_roots: Option<TlsRoots>,
    /// A client certificate chain and its private key (PEM), for mutual TLS to an internal gateway.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Egress proxy: `http://[user:password@]host:port`, or `"none"`. Default: `HTTPS_PROXY` / `HTTP_PROXY` /
    /// `ALL_PROXY` minus `NO_PROXY`.
    pub proxy: Option<String>,
    /// A file holding the proxy's `user:password` (instead of putting them in the URL).
    pub proxy_auth_file: Option<PathBuf>,
    /// `openai`: make every streaming request report its usage (`stream_options.include_usage`), so tokens are
    /// counted and charged; a client that did not ask does not get the usage-only chunk. `none` (the default): the
    /// request body goes as sent, and tokens are counted only when the vendor reports them anyway.
    #[serde(default)]
    pub usage: UsageMode,
    /// Resumable answers (`resume = { window_ms, max_bytes }`): off when absent.
    pub resume: Option<RawResume>,
    /// The request policy (`[policies.<name>]`) for tenants that name none; absent: none.
    pub policy: Option<String>,
}

/// `resume = { window_ms = 60000, max_bytes = 1048576 }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResume {
    pub window_ms: u64,
    pub max_bytes: usize,
}

/// A route's resumable answers ([`crate::resume`]): each answer is kept, and read on after its client leaves, until
/// no client has followed it for `window`; up to `max_bytes` of it (past that, the answer is no longer resumable and
/// a client that leaves cancels it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    pub window: Duration,
    pub max_bytes: usize,
}

/// The largest `resume.max_bytes`: one answer kept in memory.
const MAX_RESUME_BYTES: usize = 256 << 20;

/// How a route gets the vendor's token usage.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UsageMode {
    #[default]
    None,
    Openai,
}

/// The CA certificates a route trusts.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsRoots {
    Native,
    CaFile,
    Both,
}

/// A route's TLS settings, checked for consistency; the files are read when the TLS configuration is built
/// ([`crate::upstream::tls_config`]), at startup.
#[derive(Clone, Debug)]
pub struct RouteTls {
    pub roots: TlsRoots,
    pub ca_file: Option<PathBuf>,
    /// Certificate chain and private key files.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// A `[[routes.failover]]` entry: another endpoint, with its own key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub upstream: String,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
}

fn default_connect_ms() -> u64 {
    5_000
}
fn default_first_byte_ms() -> u64 {
    60_000
}
fn default_idle_ms() -> u64 {
    120_000
}
fn default_total_ms() -> u64 {
    30 * 60_000
}
fn default_keepalive_ms() -> u64 {
    15_000
}
fn default_max_idle() -> usize {
    32
}
fn default_pool_idle_ms() -> u64 {
    60_000
}
fn default_max_event() -> usize {
    8 << 20
}

/// How the vendor expects its secret.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    /// `Authorization: Bearer <secret>` (OpenAI and most vendors).
    Bearer,
    /// `x-api-key: <secret>` (the blog post's vendor, Anthropic).
    XApiKey,
    /// `api-key: <secret>` (Azure OpenAI).
    ApiKey,
    /// `x-goog-api-key: <secret>` (Google Gemini).
    XGoogApiKey,
}

impl UpstreamAuth {
    fn header(self) -> HeaderName {
        match self {
            UpstreamAuth::Bearer => http::header::AUTHORIZATION,
            UpstreamAuth::XApiKey => HeaderName::from_static("x-api-key"),
            UpstreamAuth::ApiKey => HeaderName::from_static("api-key"),
            UpstreamAuth::XGoogApiKey => HeaderName::from_static("x-goog-api-key"),
        }
    }
}

/// A vendor's API family, as data ([`DialectSpec`]): a route names one and gets its credential header, path form,
/// usage keys, end of answer and error event.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    #[default]
    Openai,
    Anthropic,
    AzureOpenai,
    Gemini,
}

/// Where a vendor's usage is in its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageKeys {
    /// `prompt_tokens`/`completion_tokens`, `input_tokens`/`output_tokens` (the last of each wins: Anthropic's
    /// cumulative `message_delta` ends at the answer's count).
    Tokens,
    /// Gemini's running `usageMetadata` totals (`promptTokenCount`, `candidatesTokenCount`, `thoughtsTokenCount`).
    TokenCount,
}

/// What a dialect is, as data.
#[derive(Debug, PartialEq, Eq)]
pub struct DialectSpec {
    pub name: &'static str,
    pub auth: UpstreamAuth,
    /// The line that ends a complete answer; `None`: the end is in the data (Gemini: `finishReason`).
    pub terminal_event: Option<&'static str>,
    pub usage: UsageKeys,
    /// The vendor's name in traces (OpenTelemetry's `gen_ai.system` values).
    pub gen_ai_system: &'static str,
    /// The request body must not name the model (it is in the path): the relay moves it there.
    pub model_in_path: bool,
    /// A query parameter the upstream URL must have (`api-version`, `alt=sse`), and why.
    pub required_query: Option<(&'static str, &'static str)>,
}

const DIALECTS: [DialectSpec; 4] = [
    DialectSpec {
        name: "openai",
        auth: UpstreamAuth::Bearer,
        terminal_event: Some("data: [DONE]"),
        usage: UsageKeys::Tokens,
        gen_ai_system: "openai",
        model_in_path: false,
        required_query: None,
    },
    DialectSpec {
        name: "anthropic",
        auth: UpstreamAuth::XApiKey,
        terminal_event: Some("event: message_stop"),
        usage: UsageKeys::Tokens,
        gen_ai_system: "anthropic",
        model_in_path: false,
        required_query: None,
    },
    DialectSpec {
        name: "azure-openai",
        auth: UpstreamAuth::ApiKey,
        terminal_event: Some("data: [DONE]"),
        usage: UsageKeys::Tokens,
        gen_ai_system: "az.ai.openai",
        model_in_path: false,
        required_query: Some(("api-version=", "Azure OpenAI needs `?api-version=…`")),
    },
    DialectSpec {
        name: "gemini",
        auth: UpstreamAuth::XGoogApiKey,
        terminal_event: None,
        usage: UsageKeys::TokenCount,
        gen_ai_system: "gcp.gemini",
        model_in_path: true,
        required_query: Some((
            "alt=sse",
            "Gemini streams SSE only with `?alt=sse` (without it, one JSON array)",
        )),
    },
];

impl Dialect {
    pub fn spec(self) -> &'static DialectSpec {
        &DIALECTS[self as usize]
    }
}

/// A vendor credential, ready to send. Prints as `[REDACTED]`.
#[derive(Clone)]
pub struct Secret {
    header: HeaderName,
    value: HeaderValue,
}

impl Secret {
    /// The header that carries the secret and its value (marked sensitive, so hyper never logs it).
    pub fn header(&self) -> (&HeaderName, &HeaderValue) {
        (&self.header, &self.value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}: [REDACTED])", self.header)
    }
}

/// One vendor endpoint and the key it takes.
#[derive(Clone, Debug)]
pub struct Target {
    pub upstream: Uri,
    pub secret: Secret,
    /// Its path has `{model}`, replaced by the request's model on each call.
    pub model_in_path: bool,
}

/// The placeholder in an upstream URL's path that the request's model replaces.
pub const MODEL_PLACEHOLDER: &str = "{model}";

/// One inbound path and everything about calling its vendor.
#[derive(Clone, Debug)]
pub struct Route {
    pub path: String,
    /// In failover order; never empty.
    pub targets: Vec<Target>,
    pub max_attempts: usize,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub total_timeout: Duration,
    pub keepalive_interval: Option<Duration>,
    pub terminal_event: Option<String>,
    pub max_event_bytes: usize,
    /// Lower-case extra header names or `prefix*` patterns allowed upstream.
    pub forward_headers: Vec<String>,
    /// Idle vendor connections kept per host and worker, and for how long.
    pub max_idle_connections: usize,
    pub pool_idle_timeout: Duration,
    /// Whether the vendor request carries `traceparent`/`tracestate`.
    pub propagate_trace: bool,
    pub gen_ai_system: String,
    /// The vendor's API ([`DialectSpec`]).
    pub dialect: Dialect,
    pub tls: RouteTls,
    pub egress: super::Egress,
    pub usage: UsageMode,
    pub resume: Option<Resume>,
    /// The request policy of tenants that name none ([`crate::policy`]).
    pub policy: Option<std::sync::Arc<super::Policy>>,
}

/// Every `[[routes]]` entry, each path used once; at least one.
pub(super) fn validate_routes(
    raw: &[RawRoute],
    env: &dyn Env,
    policies: &std::collections::HashMap<String, std::sync::Arc<super::Policy>>,
) -> Result<Vec<Route>, ConfigError> {
    if raw.is_empty() {
        return Err(field("routes", "at least one [[routes]] entry is required"));
    }
    let mut paths = std::collections::HashSet::new();
    let mut routes = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let mut route = validate_route(i, r, env)?;
        let at = format!("routes[{i}].policy");
        route.policy = super::policy::named(&at, r.policy.as_deref(), policies)?;
        if !paths.insert(route.path.clone()) {
            return Err(field(
                format!("routes[{i}].path"),
                format!("`{}` is used by another route", r.path),
            ));
        }
        routes.push(route);
    }
    Ok(routes)
}

fn validate_route(i: usize, r: &RawRoute, env: &dyn Env) -> Result<Route, ConfigError> {
    let at = |name: &str| format!("routes[{i}].{name}");
    let reserved = r.path == "/" || r.path == "/healthz";
    if !r.path.starts_with('/') || reserved || r.path.contains(['?', '#']) {
        return Err(field(
            at("path"),
            "must start with `/`, have no query, and not be `/` or `/healthz`",
        ));
    }
    let dialect = r.dialect.unwrap_or(match r.gen_ai_system.as_deref() {
        Some(s) if s.eq_ignore_ascii_case("anthropic") => Dialect::Anthropic,
        _ => Dialect::Openai,
    });
    let (targets, max_attempts) = targets(&at, r, dialect, env)?;
    if r.usage == UsageMode::Openai && !matches!(dialect, Dialect::Openai | Dialect::AzureOpenai) {
        return Err(field(
            at("usage"),
            "\"openai\" asks an OpenAI-style vendor for usage; this route's dialect reports usage by itself",
        ));
    }
    let (idle_timeout, keepalive_interval) = idle(&at, r)?;
    check_names(&at, r)?;
    if r.max_event_bytes < 1024 {
        return Err(field(at("max_event_bytes"), "must be at least 1024"));
    }
    Ok(Route {
        path: r.path.clone(),
        targets,
        max_attempts,
        connect_timeout: timeout(&at("connect_timeout_ms"), r.connect_timeout_ms)?,
        first_byte_timeout: timeout(&at("first_byte_timeout_ms"), r.first_byte_timeout_ms)?,
        idle_timeout,
        total_timeout: timeout(&at("total_timeout_ms"), r.total_timeout_ms)?,
        keepalive_interval,
        // The dialect's terminal line only when the dialect is named: a route without one keeps its old meaning.
        terminal_event: r.terminal_event.clone().or_else(|| {
            r.dialect
                .and_then(|d| d.spec().terminal_event.map(str::to_owned))
        }),
        max_event_bytes: r.max_event_bytes,
        forward_headers: validate_forward(&at("forward_headers"), &r.forward_headers)?,
        max_idle_connections: r.max_idle_connections,
        pool_idle_timeout: timeout(&at("pool_idle_timeout_ms"), r.pool_idle_timeout_ms)?,
        propagate_trace: r.propagate_trace,
        gen_ai_system: r
            .gen_ai_system
            .clone()
            .unwrap_or_else(|| dialect.spec().gen_ai_system.to_owned()),
        dialect,
        tls: route_tls(&at, r)?,
        egress: super::proxy::egress(&at, r.proxy.as_deref(), r.proxy_auth_file.as_deref(), env)?,
        usage: r.usage,
        resume: r.resume.as_ref().map(|x| resume(&at, x)).transpose()?,
        policy: None,
    })
}

/// `resume`: a window from 1 ms to a day, and from 1 KiB to [`MAX_RESUME_BYTES`] kept.
fn resume(at: &dyn Fn(&str) -> String, r: &RawResume) -> Result<Resume, ConfigError> {
    let window = timeout(&at("resume.window_ms"), r.window_ms)?;
    if !(1024..=MAX_RESUME_BYTES).contains(&r.max_bytes) {
        return Err(field(
            at("resume.max_bytes"),
            format!("must be from 1024 to {MAX_RESUME_BYTES}"),
        ));
    }
    Ok(Resume {
        window,
        max_bytes: r.max_bytes,
    })
}

/// The endpoints in failover order (the route's own first), and how many of them a request may try.
fn targets(
    at: &dyn Fn(&str) -> String,
    r: &RawRoute,
    dialect: Dialect,
    env: &dyn Env,
) -> Result<(Vec<Target>, usize), ConfigError> {
    let auth = r.auth.unwrap_or(dialect.spec().auth);
    let first = RawTarget {
        upstream: r.upstream.clone(),
        secret_env: r.secret_env.clone(),
        secret_file: r.secret_file.clone(),
    };
    let mut targets = vec![target(&at(""), &first, (auth, dialect), env)?];
    for (j, t) in r.failover.iter().enumerate() {
        let prefix = at(&format!("failover[{j}]."));
        targets.push(target(&prefix, t, (auth, dialect), env)?);
    }
    let max_attempts = r.max_attempts.unwrap_or(targets.len());
    if max_attempts == 0 || max_attempts > targets.len() {
        return Err(field(
            at("max_attempts"),
            format!("must be from 1 to {} (one per endpoint)", targets.len()),
        ));
    }
    Ok((targets, max_attempts))
}

/// The idle timeout, and the keepalive interval that must come before it (0: no keepalives).
fn idle(
    at: &dyn Fn(&str) -> String,
    r: &RawRoute,
) -> Result<(Duration, Option<Duration>), ConfigError> {
    let idle_timeout = timeout(&at("idle_timeout_ms"), r.idle_timeout_ms)?;
    let keepalive_interval = match r.keepalive_interval_ms {
        0 => None,
        ms => Some(timeout(&at("keepalive_interval_ms"), ms)?),
    };
    if keepalive_interval.is_some_and(|k| k >= idle_timeout) {
        return Err(field(
            at("keepalive_interval_ms"),
            "must be shorter than idle_timeout_ms (pings keep idle proxies open)",
        ));
    }
    Ok((idle_timeout, keepalive_interval))
}

/// `terminal_event` (one short line) and `gen_ai_system` (a short name).
fn check_names(at: &dyn Fn(&str) -> String, r: &RawRoute) -> Result<(), ConfigError> {
    if let Some(t) = &r.terminal_event {
        let bad = t.is_empty()
            || t.len() > relay_wire::sse::MAX_TERMINAL_LINE
            || t.contains(['\r', '\n']);
        if bad {
            return Err(field(
                at("terminal_event"),
                "must be one line of 1 to 64 bytes",
            ));
        }
    }
    let Some(system) = &r.gen_ai_system else {
        return Ok(());
    };
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if system.is_empty() || system.len() > 64 || !system.chars().all(name_char) {
        return Err(field(
            at("gen_ai_system"),
            "must be 1 to 64 letters, digits, `.`, `_` or `-` (`openai`, `anthropic`, ...)",
        ));
    }
    Ok(())
}

/// Which roots verify the vendor (a `ca_file` alone adds to the system's), and the client certificate, if any.
fn route_tls(at: &dyn Fn(&str) -> String, r: &RawRoute) -> Result<RouteTls, ConfigError> {
    let roots = match (r.tls_roots, &r.ca_file) {
        (Some(TlsRoots::CaFile | TlsRoots::Both), None) => {
            return Err(field(at("tls_roots"), "needs `ca_file`"));
        }
        (Some(roots), _) => roots,
        (None, Some(_)) => TlsRoots::Both,
        (None, None) => TlsRoots::Native,
    };
    let client_auth = match (&r.client_cert, &r.client_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => {
            return Err(field(
                at("client_cert"),
                "set both `client_cert` and `client_key`, or neither",
            ));
        }
    };
    Ok(RouteTls {
        roots,
        ca_file: r.ca_file.clone(),
        client_auth,
    })
}

/// `prefix` is `routes[i].` or `routes[i].failover[j].`.
fn target(
    prefix: &str,
    t: &RawTarget,
    (auth, dialect): (UpstreamAuth, Dialect),
    env: &dyn Env,
) -> Result<Target, ConfigError> {
    let upstream: Uri = t
        .upstream
        .parse()
        .map_err(|_| field(format!("{prefix}upstream"), "not a valid URL"))?;
    let scheme_ok = matches!(upstream.scheme_str(), Some("http" | "https"));
    let authority = upstream.authority().map(|a| a.as_str()).unwrap_or("");
    if !scheme_ok || authority.is_empty() || authority.contains('@') {
        return Err(field(
            format!("{prefix}upstream"),
            "must be an absolute http:// or https:// URL without user info",
        ));
    }
    let query = upstream.query().unwrap_or("");
    let path = upstream.path();
    if let Some((param, why)) = dialect.spec().required_query {
        // Gemini's non-streaming `:generateContent` answers JSON and needs no `alt=sse`.
        let applies = dialect != Dialect::Gemini || path.ends_with(":streamGenerateContent");
        let has = query.split('&').any(|p| p.starts_with(param));
        if applies && !has {
            return Err(field(format!("{prefix}upstream"), why));
        }
    }
    let model_in_path = path.contains(MODEL_PLACEHOLDER);
    if path.replacen(MODEL_PLACEHOLDER, "", 1).contains(['{', '}']) {
        return Err(field(
            format!("{prefix}upstream"),
            "the only placeholder is one `{model}` in the path",
        ));
    }
    let secret = read_secret(t, env).map_err(|reason| field(format!("{prefix}secret"), reason))?;
    let value = match auth {
        UpstreamAuth::Bearer => format!("Bearer {secret}"),
        UpstreamAuth::XApiKey | UpstreamAuth::ApiKey | UpstreamAuth::XGoogApiKey => secret,
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        field(
            format!("{prefix}secret"),
            "contains characters not allowed in an HTTP header",
        )
    })?;
    value.set_sensitive(true);
    Ok(Target {
        upstream,
        secret: Secret {
            header: auth.header(),
            value,
        },
        model_in_path,
    })
}

fn validate_forward(name: &str, raw: &[String]) -> Result<Vec<String>, ConfigError> {
    raw.iter()
        .map(|h| {
            let h = h.trim().to_ascii_lowercase();
            let bare = h.strip_suffix('*').unwrap_or(&h);
            let invalid = bare.is_empty() || HeaderName::from_bytes(bare.as_bytes()).is_err();
            if invalid || crate::headers::refused_pattern(&h) {
                return Err(field(
                    name,
                    format!("`{h}` is not a header that may be forwarded"),
                ));
            }
            Ok(h)
        })
        .collect()
}

/// Milliseconds from the file, checked to be from 1 ms to a day.
pub(super) fn timeout(name: &str, ms: u64) -> Result<Duration, ConfigError> {
    let d = Duration::from_millis(ms);
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(field(
            name,
            format!("must be from 1 to {} milliseconds", MAX_TIMEOUT.as_millis()),
        ));
    }
    Ok(d)
}

/// Reads a target's secret from exactly one of `secret_env` / `secret_file`. Errors never contain the secret.
fn read_secret(t: &RawTarget, env: &dyn Env) -> Result<String, String> {
    let secret = match (&t.secret_env, &t.secret_file) {
        (Some(var), None) => env
            .var(var)
            .ok_or_else(|| format!("environment variable {var} is not set"))?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secret_file {}: {e}", path.display()))?,
        _ => return Err("set exactly one of secret_env and secret_file".into()),
    };
    let secret = secret.trim().to_owned();
    if secret.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(secret)
}
