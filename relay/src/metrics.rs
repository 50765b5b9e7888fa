//! Metrics: every name, its labels and its unit, in one place (the dashboards' contract), and the Prometheus
//! recorder that renders them for the admin listener ([`crate::admin`]).
//!
//! Built on the `metrics` facade with `metrics-exporter-prometheus` (no HTTP feature: the admin listener serves the
//! text) and `metrics-process` for the process's own CPU, memory and file descriptors. Chosen over
//! `prometheus-client` for the hot path: a `metrics` counter is one atomic add and a histogram sample one lock-free
//! push into an atomic bucket, where `prometheus-client`'s histogram takes a lock per observation. Handles are
//! looked up once (per route at startup, [`RouteMeters`]; per stream for tenant-labelled series), never per chunk.
//! The exporter's histograms (one sample per stream) are folded into buckets at each scrape and by a periodic
//! upkeep; the two per-frame histograms are fixed-bucket atomics of our own ([`buckets`]), constant memory and a
//! few relaxed adds per frame, rendered after the exporter's text.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `ssegate_streams_in_flight` | gauge | route | streams whose body is still being relayed |
//! | `ssegate_max_streams` | gauge | | the configured `max_streams` (alerts compare in-flight streams with it) |
//! | `ssegate_requests_total` | counter | route, tenant, status_class | every answered request (`route="none"` when no route matched, `tenant="none"` before authentication) |
//! | `ssegate_stream_outcomes_total` | counter | route, outcome | how streams ended: `complete`, `upstream_*`, `stream_total_timeout`, `shutdown`, `client_cancelled_*`, `client_write_timeout` |
//! | `ssegate_rejections_total` | counter | reason | requests refused before the vendor call: `headers_too_large`, `unauthorized`, `payload_too_large`, `overloaded`, `rate_limited`, `not_found`, `method_not_allowed`, `bad_request_body`, `policy_refused`, `bad_model`, resume's `stream_not_found`, `stream_gone`, `bad_resume` |
//! | `ssegate_upstream_errors_total` | counter | route, kind | vendor trouble: `connect`, `tls`, `proxy`, `timeout`, `protocol`, `redirect`, `credential`, `status_4xx`, `status_5xx` (every attempt) |
//! | `ssegate_failover_attempts_total` | counter | route | calls to a route's next endpoint |
//! | `ssegate_store_errors_total` | counter | | limit store (Redis) calls that failed or timed out; `on_store_error` applied ([`crate::limit::store`]) |
//! | `ssegate_store_leases_restored_total` | counter | | stream slots of live streams the store no longer had (it restarted empty) and this replica's renewal put back |
//! | `ssegate_relayed_bytes_total` | counter | route | body bytes handed to clients |
//! | `ssegate_relayed_events_total` | counter | route | SSE events relayed |
//! | `ssegate_keepalives_total` | counter | route | `: keep-alive` comments sent |
//! | `ssegate_tokens_total` | counter | route, tenant, type (`prompt`, `completion`), source (`reported`, `estimated`) | tokens answers were charged: the vendor's `usage` (streamed or in a JSON body), or the relay's estimate for answers that ended without one |
//! | `ssegate_relay_overhead_seconds` | histogram | route | request start → vendor request sent (auth, limits, body read) |
//! | `ssegate_upstream_first_byte_seconds` | histogram | route | vendor request sent → the vendor's first body byte |
//! | `ssegate_client_first_byte_seconds` | histogram | route | request start → the first body byte handed to the client's connection |
//! | `ssegate_upstream_chunk_gap_seconds` | histogram | route | time between two vendor frames |
//! | `ssegate_relay_added_delay_seconds` | histogram | route | per vendor frame: the tap received it → the client's connection wrote it ([`crate::tap::AddedDelay`]) |
//! | `ssegate_stream_duration_seconds` | histogram | route, outcome class (`complete`, `failed`, `cancelled`) | request start → end of stream |
//! | `ssegate_trace_spans_total` | counter | result (`ended`, `exported`, `export_failed`) | spans handed to the trace exporter and what became of them; `ended` minus the others is what a full queue dropped (traces on only, [`crate::otel`]) |
//! | `ssegate_build_info` | gauge (1) | version, profile (`release`, `debug`) | what is running; `debug` is an unoptimized build, also warned about at startup |
//! | `ssegate_log_lines_dropped_total` | counter | | log and audit lines dropped because the log reader did not keep up and the writer's queue was full ([`crate::logs`]) |
//! | `ssegate_policy_total` | counter | tenant, policy, rule, action (`refused`, `rewritten`) | request policy rules at work ([`crate::policy`]): `rule` is the config key (`models`, `max_messages`, `max_prompt_bytes`, `deny_patterns[1]`, `aliases`, `max_tokens`, `force`, …); a refused request is also a `policy_refused` rejection |
//! | `ssegate_resumes_total` | counter | | answers a client resumed (`GET /v1/streams/{id}`, [`crate::resume`]); refused resumes are rejections (`stream_not_found`, `stream_gone`, `bad_resume`) |
//! | `ssegate_resume_detached_total` | counter | end (`expired`, `not_resumable`, `stopped`) | answers of resumable routes whose vendor call was cancelled: `expired`, no client came back within the window; `not_resumable`, the client left an answer over `max_bytes`; `stopped`, a client asked (`DELETE /v1/streams/{id}`) |
//! | `process_*` | | | CPU seconds, resident memory, open and max file descriptors, threads (`metrics-process`) |

pub mod buckets;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use buckets::Buckets;

pub const STREAMS_IN_FLIGHT: &str = "ssegate_streams_in_flight";
pub const MAX_STREAMS: &str = "ssegate_max_streams";
pub const REQUESTS: &str = "ssegate_requests_total";
pub const OUTCOMES: &str = "ssegate_stream_outcomes_total";
pub const REJECTIONS: &str = "ssegate_rejections_total";
pub const UPSTREAM_ERRORS: &str = "ssegate_upstream_errors_total";
pub const FAILOVER: &str = "ssegate_failover_attempts_total";
pub const STORE_ERRORS: &str = "ssegate_store_errors_total";
pub const LEASES_RESTORED: &str = "ssegate_store_leases_restored_total";
pub const BYTES: &str = "ssegate_relayed_bytes_total";
pub const EVENTS: &str = "ssegate_relayed_events_total";
pub const KEEPALIVES: &str = "ssegate_keepalives_total";
pub const TOKENS: &str = "ssegate_tokens_total";
pub const TRACE_SPANS: &str = "ssegate_trace_spans_total";
pub const LOG_DROPPED: &str = "ssegate_log_lines_dropped_total";
pub const RESUMES: &str = "ssegate_resumes_total";
pub const RESUME_DETACHED: &str = "ssegate_resume_detached_total";
pub const POLICY: &str = "ssegate_policy_total";
pub const BUILD_INFO: &str = "ssegate_build_info";
pub const CONFIG_RELOADS: &str = "ssegate_config_reloads_total";
pub const CONFIG_INFO: &str = "ssegate_config_info";
pub const CONFIG_LOADED: &str = "ssegate_config_loaded_timestamp_seconds";
pub const OVERHEAD: &str = "ssegate_relay_overhead_seconds";
pub const UPSTREAM_TTFB: &str = "ssegate_upstream_first_byte_seconds";
pub const CLIENT_TTFB: &str = "ssegate_client_first_byte_seconds";
pub const CHUNK_GAP: &str = "ssegate_upstream_chunk_gap_seconds";
pub const ADDED_DELAY: &str = "ssegate_relay_added_delay_seconds";
pub const DURATION: &str = "ssegate_stream_duration_seconds";

/// Bucket bounds for every `_seconds` histogram: 10 µs (a chunk's gap on loopback) to 15 min (a long answer).
const SECONDS_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0,
];

/// The process's recorder and its process-metrics collector.
pub struct Registry {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

/// Why the recorder could not be installed (another one already is, or the bucket list is rejected).
#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder")]
pub struct MetricsError(#[source] metrics_exporter_prometheus::BuildError);

static REGISTRY: OnceLock<Registry> = OnceLock::new();
/// Serializes first installs (two relays started at once in one test process).
static INSTALLING: Mutex<()> = Mutex::new(());

/// Where the log writer's dropped lines are read at each scrape ([`crate::logs`] installs it).
static LOG_DROPS: OnceLock<fn() -> u64> = OnceLock::new();

/// Reads `ssegate_log_lines_dropped_total` from `dropped` at each scrape.
pub fn count_log_drops(dropped: fn() -> u64) {
    let _ = LOG_DROPS.set(dropped);
}

/// Whether the request path records (`[metrics] enabled`); process metrics are served either way.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the request path's metrics on or off for this process (before the first [`RouteMeters`]).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Installs the process-wide recorder (once; later calls return the same one).
pub fn install() -> Result<&'static Registry, MetricsError> {
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(r) = REGISTRY.get() {
        return Ok(r);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(MetricsError)?;
    describe();
    let process = metrics_process::Collector::default();
    process.describe();
    Ok(REGISTRY.get_or_init(|| Registry { handle, process }))
}

impl Registry {
    /// The Prometheus text exposition of every metric, process metrics freshly read.
    pub fn render(&self) -> String {
        self.process.collect();
        if let Some(dropped) = LOG_DROPS.get() {
            counter!(LOG_DROPPED).absolute(dropped());
        }
        let mut text = self.handle.render();
        buckets::render(&mut text);
        text
    }

    /// Folds pending histogram samples into their buckets (bounded memory without scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        STREAMS_IN_FLIGHT,
        "Streams whose body is still being relayed"
    );
    describe_counter!(RESUMES, "Answers a client resumed");
    describe_counter!(
        POLICY,
        "Request policy rules that refused or rewrote a request, by tenant, policy, rule and action"
    );
    describe_counter!(
        RESUME_DETACHED,
        "Resumable answers whose vendor call was cancelled, by why"
    );
    describe_counter!(
        REQUESTS,
        "Answered requests by route, tenant and status class"
    );
    describe_counter!(OUTCOMES, "How streams ended, by kind");
    describe_counter!(
        REJECTIONS,
        "Requests refused before any vendor call, by reason"
    );
    describe_counter!(UPSTREAM_ERRORS, "Vendor errors by kind, every attempt");
    describe_counter!(FAILOVER, "Calls to a route's next endpoint");
    describe_counter!(STORE_ERRORS, "Limit store calls that failed or timed out");
    describe_counter!(
        LEASES_RESTORED,
        "Stream slots the limit store had lost (a restart) and a renewal put back"
    );
    describe_counter!(BYTES, Unit::Bytes, "Body bytes handed to clients");
    describe_counter!(EVENTS, "SSE events relayed");
    describe_counter!(KEEPALIVES, "Keep-alive comments sent");
    describe_counter!(
        TOKENS,
        "Tokens answers were charged: reported by the vendor's usage, or estimated"
    );
    describe_gauge!(
        BUILD_INFO,
        "1, labelled with the relay's version and build profile (release or debug)"
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Config reloads (SIGHUP, POST /admin/reload), by result: ok, or refused (the old config kept serving)"
    );
    describe_gauge!(
        CONFIG_INFO,
        "1 for the config serving now, labelled with the SHA-256 of its file (0 for those it replaced)"
    );
    describe_gauge!(
        CONFIG_LOADED,
        Unit::Seconds,
        "When the config serving now was loaded (Unix time)"
    );
    describe_counter!(
        LOG_DROPPED,
        "Log and audit lines dropped because the log writer's queue was full"
    );
    describe_counter!(
        TRACE_SPANS,
        "Spans ended, exported and failed to export (traces on only)"
    );
    describe_histogram!(
        OVERHEAD,
        Unit::Seconds,
        "Request start to vendor request sent"
    );
    describe_histogram!(
        UPSTREAM_TTFB,
        Unit::Seconds,
        "Vendor request sent to its first body byte"
    );
    describe_histogram!(
        CLIENT_TTFB,
        Unit::Seconds,
        "Request start to the first body byte relayed"
    );
    describe_histogram!(DURATION, Unit::Seconds, "Request start to end of stream");
}

/// A route's handles, looked up once at startup; clones share the same series. With metrics off the handles
/// record nothing and the per-frame histograms are absent.
#[derive(Clone)]
pub struct RouteMeters {
    pub route: &'static str,
    pub enabled: bool,
    pub in_flight: Gauge,
    pub bytes: Counter,
    pub events: Counter,
    pub keepalives: Counter,
    pub failover: Counter,
    pub overhead: Histogram,
    pub upstream_ttfb: Histogram,
    pub client_ttfb: Histogram,
    /// Per frame: fixed-bucket histograms ([`buckets`]), not the exporter's.
    pub chunk_gap: Arc<Buckets>,
    pub added_delay: Arc<Buckets>,
    /// Series whose label values are all known at startup, looked up by value (no registry lookup, no
    /// allocation per stream), and present at 0 before their first event.
    outcomes: Known,
    errors: Known,
    durations: [Histogram; 3],
    tenants: Arc<HashMap<Arc<str>, TenantMeters>>,
}

/// Every outcome a stream can end with ([`crate::outcome::End::kind`]).
const OUTCOME_KINDS: &[&str] = &[
    "complete",
    "upstream_reset",
    "upstream_truncated",
    "upstream_first_byte_timeout",
    "upstream_idle_timeout",
    "stream_total_timeout",
    "upstream_protocol",
    "shutdown",
    "client_write_timeout",
    "client_cancelled_before_first_byte",
    "client_cancelled_mid_stream",
];
const ERROR_KINDS: &[&str] = &[
    "connect",
    "tls",
    "proxy",
    "timeout",
    "protocol",
    "redirect",
    "credential",
    "status_4xx",
    "status_5xx",
];
const REJECTION_REASONS: &[&str] = &[
    "headers_too_large",
    "unauthorized",
    "payload_too_large",
    "overloaded",
    "rate_limited",
    "not_found",
    "method_not_allowed",
    "bad_request_body",
    "stream_not_found",
    "stream_gone",
    "bad_resume",
    "policy_refused",
    "bad_model",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const DURATION_CLASSES: [&str; 3] = ["complete", "failed", "cancelled"];
/// Where a token count came from: the vendor's usage, or the relay's estimate (`usage::estimate`).
const TOKEN_SOURCES: [&str; 2] = ["reported", "estimated"];

/// Counters of one metric, one per known value of one label.
#[derive(Clone, Default)]
struct Known(Arc<[(&'static str, Counter)]>);

impl Known {
    fn new(make: impl Fn(&'static str) -> Counter, values: &[&'static str]) -> Self {
        Self(values.iter().map(|v| (*v, make(v))).collect())
    }

    fn get(&self, value: &str) -> Option<&Counter> {
        self.0.iter().find(|(v, _)| *v == value).map(|(_, c)| c)
    }
}

/// One tenant's series on one route.
#[derive(Clone)]
struct TenantMeters {
    requests: [Counter; 5],
    /// Prompt and completion tokens, each reported by the vendor and estimated.
    prompt: [Counter; 2],
    completion: [Counter; 2],
}

fn class_index(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

impl RouteMeters {
    /// `route` is a configured route's path and `tenants` the configured tenants (bounded: both come from the
    /// configuration, never from a request).
    pub fn new<'a>(route: &str, tenants: impl IntoIterator<Item = &'a Arc<str>>) -> Self {
        // Leaked once per configured route at startup, so every later label is a `&'static str` (no allocation).
        let route: &'static str = Box::leak(route.to_owned().into_boxed_str());
        if !enabled() {
            return Self::off(route);
        }
        Self {
            route,
            enabled: true,
            in_flight: gauge!(STREAMS_IN_FLIGHT, "route" => route),
            bytes: counter!(BYTES, "route" => route),
            events: counter!(EVENTS, "route" => route),
            keepalives: counter!(KEEPALIVES, "route" => route),
            failover: counter!(FAILOVER, "route" => route),
            overhead: histogram!(OVERHEAD, "route" => route),
            upstream_ttfb: histogram!(UPSTREAM_TTFB, "route" => route),
            client_ttfb: histogram!(CLIENT_TTFB, "route" => route),
            chunk_gap: buckets::series(CHUNK_GAP, "Time between two vendor frames", route),
            added_delay: buckets::series(
                ADDED_DELAY,
                "Per vendor frame: received by the relay to written to the client's socket",
                route,
            ),
            outcomes: Known::new(
                |o| counter!(OUTCOMES, "route" => route, "outcome" => o),
                OUTCOME_KINDS,
            ),
            errors: Known::new(
                |k| counter!(UPSTREAM_ERRORS, "route" => route, "kind" => k),
                ERROR_KINDS,
            ),
            durations: DURATION_CLASSES
                .map(|c| histogram!(DURATION, "route" => route, "outcome" => c)),
            tenants: Arc::new(
                tenants
                    .into_iter()
                    .cloned()
                    .chain([Arc::from("none")])
                    .map(|t| {
                        let meters = TenantMeters::new(route, &t);
                        (t, meters)
                    })
                    .collect(),
            ),
        }
    }

    fn off(route: &'static str) -> Self {
        Self {
            route,
            enabled: false,
            in_flight: Gauge::noop(),
            bytes: Counter::noop(),
            events: Counter::noop(),
            keepalives: Counter::noop(),
            failover: Counter::noop(),
            overhead: Histogram::noop(),
            upstream_ttfb: Histogram::noop(),
            client_ttfb: Histogram::noop(),
            chunk_gap: Arc::default(),
            added_delay: Arc::default(),
            outcomes: Known::default(),
            errors: Known::default(),
            durations: [Histogram::noop(), Histogram::noop(), Histogram::noop()],
            tenants: Arc::default(),
        }
    }

    /// How a stream ended (`outcome` is a fixed kind string) and how long it took.
    pub fn stream_ended(&self, outcome: &'static str, class: &'static str, seconds: f64) {
        if !self.enabled {
            return;
        }
        match self.outcomes.get(outcome) {
            Some(c) => c.increment(1),
            None => counter!(OUTCOMES, "route" => self.route, "outcome" => outcome).increment(1),
        }
        let at = DURATION_CLASSES
            .iter()
            .position(|c| *c == class)
            .unwrap_or(1);
        self.durations[at].record(seconds);
    }

    /// An answered request on this route; `tenant` is a configured tenant or `"none"`.
    pub fn request(&self, tenant: &str, status: u16) {
        if !self.enabled {
            return;
        }
        match self.tenants.get(tenant) {
            Some(t) => t.requests[class_index(status)].increment(1),
            None => request(self.route, tenant, status),
        }
    }

    /// The tokens an answer of `tenant` was charged, by where they came from.
    pub fn tokens(&self, tenant: &str, charged: &crate::usage::Charged) {
        use crate::usage::Source;
        if !self.enabled {
            return;
        }
        if let Some(t) = self.tenants.get(tenant) {
            let (prompt, completion) = match charged.source {
                Source::Reported => (0, 0),
                Source::Partial => (0, 1),
                Source::Estimated => (1, 1),
            };
            t.prompt[prompt].increment(charged.tokens.prompt);
            t.completion[completion].increment(charged.tokens.completion);
        }
    }

    /// A vendor error of `kind` on this route.
    pub fn upstream_error(&self, kind: &'static str) {
        if !self.enabled {
            return;
        }
        match self.errors.get(kind) {
            Some(c) => c.increment(1),
            None => counter!(UPSTREAM_ERRORS, "route" => self.route, "kind" => kind).increment(1),
        }
    }
}

impl TenantMeters {
    fn new(route: &'static str, tenant: &Arc<str>) -> Self {
        let tenant = tenant.to_string();
        let token = |kind: &'static str| {
            TOKEN_SOURCES.map(|source| {
                counter!(TOKENS, "route" => route, "tenant" => tenant.clone(), "type" => kind, "source" => source)
            })
        };
        Self {
            requests: STATUS_CLASSES.map(|class| {
                counter!(REQUESTS, "route" => route, "tenant" => tenant.clone(), "status_class" => class)
            }),
            prompt: token("prompt"),
            completion: token("completion"),
        }
    }
}

/// An answered request; `route` and `tenant` come from the configuration (or are `"none"`).
pub fn request(route: &'static str, tenant: &str, status: u16) {
    if !enabled() {
        return;
    }
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    counter!(REQUESTS, "route" => route, "tenant" => tenant.to_owned(), "status_class" => class)
        .increment(1);
}

/// The relay's version and build profile (`release` or `debug`), as a gauge at 1 (Prometheus' `_info` convention).
pub fn build_info(profile: &'static str) {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "profile" => profile).set(1.0);
}

/// A config was loaded (at startup, or by a reload): `sha256` (hex) of its file now serves, `replaced` no longer.
pub fn config_loaded(sha256: &str, replaced: Option<&str>) {
    if let Some(old) = replaced.filter(|old| *old != sha256) {
        gauge!(CONFIG_INFO, "sha256" => old.to_owned()).set(0.0);
    }
    gauge!(CONFIG_INFO, "sha256" => sha256.to_owned()).set(1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge!(CONFIG_LOADED).set(now);
}

/// A reload's result: `ok`, or `refused` (the old config kept serving). Both series exist from the start.
pub fn config_reload(result: Option<bool>) {
    for (name, this) in [("ok", Some(true)), ("refused", Some(false))] {
        let c = counter!(CONFIG_RELOADS, "result" => name);
        if result == this {
            c.increment(1);
        }
    }
}

/// The configured limits, for alerts that compare against them; also registers the rejection reasons, so that
/// `/metrics` shows them at 0 from the start.
pub fn limits(max_streams: u32) {
    gauge!(MAX_STREAMS).set(f64::from(max_streams));
    if enabled() {
        rejections();
    }
}

/// One counter per known rejection reason, registered on first use.
fn rejections() -> &'static Known {
    static KNOWN: OnceLock<Known> = OnceLock::new();
    KNOWN.get_or_init(|| Known::new(|r| counter!(REJECTIONS, "reason" => r), REJECTION_REASONS))
}

/// An answer was resumed by a client.
pub fn resumed() {
    counter!(RESUMES).increment(1);
}

/// A resumable answer was cancelled: `expired` (no client came back within the window), `not_resumable` (its
/// client left an answer over `max_bytes`) or `stopped` (a client asked).
pub fn resume_detached(end: &'static str) {
    counter!(RESUME_DETACHED, "end" => end).increment(1);
}

/// A limit store call failed or timed out (counted even with request-path metrics off: it is an outage signal).
pub fn store_error() {
    counter!(STORE_ERRORS).increment(1);
}

/// Stream slots the store had lost (a restart) and this replica's renewal put back.
pub fn store_leases_restored(n: u64) {
    counter!(LEASES_RESTORED).increment(n);
}

/// A request policy's rule refused (`action` `refused`) or rewrote (`rewritten`) a request of `tenant`.
pub fn policy(tenant: &str, policy: &str, rule: &str, action: &'static str) {
    if !enabled() {
        return;
    }
    let labels = [
        ("tenant", tenant.to_owned()),
        ("policy", policy.to_owned()),
        ("rule", rule.to_owned()),
        ("action", action.to_owned()),
    ];
    counter!(POLICY, &labels).increment(1);
}

/// A request refused before any vendor call.
pub fn rejected(reason: &'static str) {
    if !enabled() {
        return;
    }
    match rejections().get(reason) {
        Some(c) => c.increment(1),
        None => counter!(REJECTIONS, "reason" => reason).increment(1),
    }
}
