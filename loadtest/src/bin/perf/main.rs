//! `perf`: the side-by-side run. Starts mock-upstream, the relay (release, auth and audit log on) and nginx from
//! `deploy/nginx/ssegate.conf`, runs the goose load test against eight targets (mock directly, nginx → mock,
//! relay → mock, the same relay with `[metrics] enabled = false`, nginx → relay → mock, a tokio TCP forwarder with
//! no HTTP as the relay's floor, and nginx and the relay to the same mock over HTTPS) at each concurrency, and
//! prints one Markdown table. Then one stream at a time (`serial`: hyper's client on one kept-alive connection, the
//! next request right after the previous answer) against the mock directly, nginx → mock and relay → mock, the
//! pattern of a replica that serves few streams at a time. Outside the gate, one more relay has its config reloaded
//! (`SIGHUP`) every `--reload-every-ms` while its load runs, with its memory along the run and over 200 idle reloads
//! reported after the table (issue 25), and one more has resumable answers on (issue 27). Everything binds
//! 127.0.0.1 and is stopped by its PID (processes and nginx from the workspace's test kit). `--gate` runs the short
//! CI variant and compares same-run ratios with `loadtest/perf-baseline.json`. Run through `scripts/perf.sh`, which
//! builds the release binaries first.

#![expect(
    clippy::print_stdout,
    reason = "perf prints its report (the Markdown table) on stdout"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use testkit::nginx::{self, Nginx};
use testkit::proc::{Proc, binary};
use testkit::redis::{self, Redis};

const VENDOR_KEY: &str = "perf-vendor-key";
const CLIENT_KEY: &str = "perf-client-key";
const VENDOR_KEY_VAR: &str = "PERF_VENDOR_KEY";

/// Side-by-side load test: mock, nginx → mock, relay → mock, nginx → relay → mock.
#[derive(Parser)]
struct Args {
    /// Concurrent streams, one run per level.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    levels: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 20)]
    run_secs: u64,
    /// Gap between the mock's chunks.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Chunks per stream.
    #[arg(long, default_value_t = 40)]
    chunks: u64,
    /// The short CI variant (100 streams, at most 15 s, no nginx → relay run), compared with the baseline.
    #[arg(long)]
    gate: bool,
    /// Write this run's ratios as the new baseline.
    #[arg(long)]
    write_baseline: bool,
    /// Runs of the nginx → mock / relay → mock pair per level, interleaved; the CPU ratio is the median of the
    /// pairs' ratios (the gate runs 3).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Give the proxies (relay, nginx) the last CPU and everything else (load generator, mock, this process) the
    /// others, with `taskset`: the figures then measure the proxy, not queueing behind the load generator.
    #[arg(long)]
    pin: bool,
    /// Extra top-level configuration lines for every relay of the run (e.g. `pin_connections = true`), to
    /// compare settings side by side.
    #[arg(long, default_value = "")]
    relay_top: String,
    /// Streams per one-at-a-time run (`serial`: one kept-alive connection, the next request right after the
    /// previous answer's end); 0 skips the one-stream pairs.
    #[arg(long, default_value_t = 20)]
    serial_streams: usize,
    /// Only the one-stream pairs (no goose runs): the quick check while working on the low-load path.
    #[arg(long)]
    serial_only: bool,
    /// Only the targets whose name starts with one of these, `;`-separated (plus `direct`, which the others are
    /// compared with), e.g. `relay → mock;relay, config reloaded`.
    #[arg(long, value_delimiter = ';')]
    only: Vec<String>,
    /// Adds a relay whose config is reloaded (`SIGHUP`) at this interval while the load runs, to measure what
    /// reloads cost streams in flight (issue 25); 0 leaves it out. Not in the gate.
    #[arg(long, default_value_t = 1000)]
    reload_every_ms: u64,
}

/// Which CPUs the proxies and the rest run on when pinned.
struct Pinning {
    proxies: String,
    rest: String,
}

impl Pinning {
    fn new() -> Result<Self> {
        let n = std::thread::available_parallelism()?.get();
        anyhow::ensure!(n >= 2, "--pin needs at least two CPUs");
        Ok(Self {
            proxies: (n - 1).to_string(),
            rest: if n == 2 {
                "0".into()
            } else {
                format!("0-{}", n - 2)
            },
        })
    }

    /// Moves every thread of `pids` to `cpus`.
    fn pin(pids: impl IntoIterator<Item = u32>, cpus: &str) -> Result<()> {
        for pid in pids {
            let status = std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", cpus, &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .context("running taskset (util-linux)")?;
            anyhow::ensure!(status.success(), "taskset -a -p -c {cpus} {pid} failed");
        }
        Ok(())
    }
}

/// redis-server, charged to the rows whose relay keeps answers in it (its CPU and memory are the feature's cost).
impl Cost for Redis {
    fn cpu_ns(&self) -> u64 {
        self.pid().map_or(0, testkit::proc::cpu_ns)
    }
    fn rss_kib(&self) -> u64 {
        self.pid().map_or(0, testkit::proc::rss_kib)
    }
}

/// The workspace root.
fn root() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace root")?
        .to_path_buf())
}

/// A process whose CPU time and memory a run charges to the proxy.
trait Cost {
    fn cpu_ns(&self) -> u64;
    fn rss_kib(&self) -> u64;
}

impl Cost for Proc {
    fn cpu_ns(&self) -> u64 {
        Proc::cpu_ns(self)
    }
    fn rss_kib(&self) -> u64 {
        Proc::rss_kib(self)
    }
}

impl Cost for Nginx {
    fn cpu_ns(&self) -> u64 {
        Nginx::cpu_ns(self)
    }
    fn rss_kib(&self) -> u64 {
        Nginx::rss_kib(self)
    }
}

/// One load-test run and what the proxies spent on it.
struct Measured {
    summary: Value,
    cpu_ns: u64,
    peak_rss_kib: u64,
    idle_rss_kib: u64,
    /// The proxies' RSS once a second along the run (and so at each reload, when the run reloads every second).
    rss_each_second: Vec<u64>,
}

impl Measured {
    /// The proxies' RSS growth during the run, per concurrent stream.
    fn rss_per_stream(&self, users: usize) -> f64 {
        self.peak_rss_kib.saturating_sub(self.idle_rss_kib) as f64 / users as f64
    }
}

/// `target`: its base URL and the key to send.
async fn run_load(
    (base, key): (&str, &str),
    users: usize,
    a: &Args,
    proxies: &[&dyn Cost],
    out: &Path,
    pinning: Option<&Pinning>,
    reload: Option<(&Proc, Duration)>,
) -> Result<Measured> {
    let summary_path = out.with_extension("json");
    let idle_rss_kib: u64 = proxies.iter().map(|p| p.rss_kib()).sum();
    let cpu_before: u64 = proxies.iter().map(|p| p.cpu_ns()).sum();
    let rate = users.min(500).to_string();
    let loadtest = binary("loadtest", "SSEGATE_LOADTEST_BIN")?;
    let mut cmd = match pinning {
        Some(p) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &p.rest]).arg(&loadtest);
            c
        }
        None => Command::new(&loadtest),
    };
    let mut child = cmd
        .args([
            "--host",
            base,
            "--users",
            &users.to_string(),
            "--increase-rate",
            &rate,
        ])
        .args([
            "--run-time",
            &format!("{}s", a.run_secs),
            "--scenarios",
            "openaistream",
            "--no-print-metrics",
            "-q",
        ])
        .arg("--report-file")
        .arg(out.with_extension("html"))
        .env("LOADTEST_KEY", key)
        .env("LOADTEST_CHUNKS", a.chunks.to_string())
        .env("LOADTEST_INTERVAL_MS", a.interval_ms.to_string())
        .env("LOADTEST_SUMMARY", &summary_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(out.with_extension("log"))?)
        .spawn()?;
    let mut peak_rss_kib = idle_rss_kib;
    let start = tokio::time::Instant::now();
    let mut next_reload = reload.map(|(_, every)| start + every);
    let mut rss_each_second = Vec::new();
    while child.try_wait()?.is_none() {
        let rss = proxies.iter().map(|p| p.rss_kib()).sum();
        peak_rss_kib = peak_rss_kib.max(rss);
        let now = tokio::time::Instant::now();
        if now >= start + Duration::from_secs(rss_each_second.len() as u64 + 1) {
            rss_each_second.push(rss);
        }
        if let (Some((relay, every)), Some(at)) = (reload, next_reload.as_mut()) {
            if now >= *at {
                relay.signal("HUP")?;
                *at += every;
            }
        }
        // Sampling RSS (and pacing the reloads) while the load runs, not waiting for a side effect.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu_ns = proxies.iter().map(|p| p.cpu_ns()).sum::<u64>() - cpu_before;
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).context("no summary")?)?;
    Ok(Measured {
        summary,
        cpu_ns,
        peak_rss_kib,
        idle_rss_kib,
        rss_each_second,
    })
}

/// One `serial` run (one stream at a time on one connection, see `loadtest/src/bin/serial.rs`) and what the
/// proxies spent on it.
async fn run_serial(
    base: &str,
    key: &str,
    a: &Args,
    proxies: &[&dyn Cost],
    pinning: Option<&Pinning>,
) -> Result<Measured> {
    let idle_rss_kib: u64 = proxies.iter().map(|p| p.rss_kib()).sum();
    let cpu_before: u64 = proxies.iter().map(|p| p.cpu_ns()).sum();
    let serial = binary("serial", "SSEGATE_SERIAL_BIN")?;
    let mut cmd = match pinning {
        Some(p) => {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", &p.rest]).arg(&serial);
            c
        }
        None => tokio::process::Command::new(&serial),
    };
    let out = cmd
        .arg("--url")
        .arg(format!("{base}/v1/chat/completions"))
        .args(["--key", key, "--streams", &a.serial_streams.to_string()])
        .args(["--chunks", &a.chunks.min(20).to_string()])
        .args(["--interval-ms", &a.interval_ms.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "serial failed: {}", out.status);
    let cpu_ns = proxies.iter().map(|p| p.cpu_ns()).sum::<u64>() - cpu_before;
    let mut summary: Value = serde_json::from_slice(&out.stdout).context("serial's summary")?;
    // In the goose summary's terms, so that the table and the ratios read both alike.
    summary["chunks"] = summary["events"].clone();
    Ok(Measured {
        summary,
        cpu_ns,
        peak_rss_kib: idle_rss_kib,
        idle_rss_kib,
        rss_each_second: Vec::new(),
    })
}

/// Refuses to measure an unoptimized relay: a debug build (what `cargo build` and `cargo test` make, and what the
/// test kit starts from a debug harness) spends several times the CPU per chunk of a release build, which is how a
/// side-by-side run once reported the relay at 4-5 times nginx's CPU per event (issue 23). Reads
/// `ssegate_build_info` from the relay's admin listener.
async fn require_release(relay: &Proc) -> Result<()> {
    let metrics = relay.metrics().await?;
    let info = metrics
        .lines()
        .find(|l| l.starts_with("ssegate_build_info{"))
        .context("no ssegate_build_info on the relay's /metrics")?;
    if !info.contains(r#"profile="release""#) {
        bail!(
            "the relay under test is not a release build ({info}); build it with `cargo build --release --workspace` \
             or point SSEGATE_RELAY_BIN at a release binary"
        );
    }
    Ok(())
}

/// The value of the first sample on the relay's `/metrics` whose line starts with `series`.
async fn metric(relay: &Proc, series: &str) -> Result<f64> {
    relay
        .metrics()
        .await?
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
        .with_context(|| format!("no {series} on the relay's /metrics"))
}

/// How many files (sockets included) `proc` has open.
fn open_files(proc: &Proc) -> usize {
    proc.pid()
        .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map_or(0, Iterator::count)
}

/// A relay's memory along one run, sampled once a second: flat once the load is up when each reload frees what it
/// replaced, rising with the reloads otherwise; the same relay without reloads is the reference.
fn report_rss_along(users: usize, name: &str, samples: &[u64]) {
    let n = samples.len();
    if n < 4 {
        return;
    }
    // The first quarter is the load ramping up.
    let settled = &samples[n / 4..];
    let (first, last) = (settled[0], settled[settled.len() - 1]);
    let max = settled.iter().copied().max().unwrap_or(0);
    println!(
        "{users} streams, {name}: RSS from second {} to {n}: {first} KiB → {last} KiB (max {max} KiB, {:+.1} KiB per second).",
        n / 4 + 1,
        (last as f64 - first as f64) / (settled.len() - 1) as f64
    );
}

/// After the reloading relay's runs: how many reloads it took and refused, and its memory against the relay that
/// served the same load without reloads. Then 200 reloads more with the relay idle (each one awaited on the
/// reload counter), which must leave its memory where it was: a reload frees the relay it replaced once the last
/// stream on it ends.
async fn report_reloads(relay: &Proc, idle_before_kib: u64, plain: &Proc) -> Result<()> {
    const OK: &str = r#"ssegate_config_reloads_total{result="ok"}"#;
    const REFUSED: &str = r#"ssegate_config_reloads_total{result="refused"}"#;
    const IDLE_RELOADS: usize = 200;
    let (ok, refused) = (metric(relay, OK).await?, metric(relay, REFUSED).await?);
    // Both relays idle long enough for jemalloc to hand back what they freed (10 s dirty-page decay): the one
    // measured last would look bigger only for being measured sooner.
    tokio::time::sleep(Duration::from_secs(21)).await;
    let after_load = relay.rss_kib();
    println!(
        "\nReloads under load: {ok} ok, {refused} refused; idle RSS {idle_before_kib} KiB before the runs, \
         {after_load} KiB 21 s after, {} open files (the relay without reloads, same load: {} KiB, {} open files).",
        open_files(relay),
        plain.rss_kib(),
        open_files(plain),
    );
    let mut done = ok + refused;
    let mut along = vec![after_load];
    for i in 1..=IDLE_RELOADS {
        relay.signal("HUP")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metric(relay, OK).await? + metric(relay, REFUSED).await? <= done {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "a reload did not finish"
            );
            // Polling the reload counter: the reload is the relay's, seen only through its metrics.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done += 1.0;
        if i % 50 == 0 {
            along.push(relay.rss_kib());
        }
    }
    let along: Vec<String> = along.iter().map(u64::to_string).collect();
    println!(
        "{IDLE_RELOADS} reloads idle: RSS every 50 reloads {} KiB; {} refused in all.",
        along.join(" → "),
        metric(relay, REFUSED).await?
    );
    Ok(())
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut a = Args::parse();
    if a.gate {
        // 100 streams for CPU per chunk; 1000 for memory per open stream, where the streams' memory dwarfs the
        // allocator's start-up noise. Pinned, so that the figures are the proxies' and not the load generator's.
        a.levels = vec![100, 1000];
        a.run_secs = a.run_secs.min(15);
        a.repeat = a.repeat.max(3);
        a.pin = true;
    }
    let root = root()?;
    let dir = tempfile::Builder::new().prefix("ssegate-perf-").tempdir()?;
    let mock = testkit::proc::start_mock(VENDOR_KEY).await?;
    let top = format!(
        "max_streams = 20000\nmax_streams_per_tenant = 20000\n{}\n[audit]\nenabled = true",
        a.relay_top
    );
    let toml = mock_upstream::RelayToml {
        https: false,
        mock: mock.addr,
        top: &top,
        tenant: "perf",
        client_key: CLIENT_KEY,
        secret_env: VENDOR_KEY_VAR,
        route: "",
    };
    let config = mock_upstream::relay_config(&toml);
    let env = [(VENDOR_KEY_VAR, VENDOR_KEY)];
    let relay = testkit::proc::start_relay(&config, &env, "info").await?;
    require_release(&relay).await?;
    // The same relay with its request-path metrics off: what metrics cost, measured in the same run.
    let off = config.replacen("[audit]", "[metrics]\nenabled = false\n[audit]", 1);
    let relay_off = testkit::proc::start_relay(&off, &env, "info").await?;
    // The same relay with its tenant's limits in a real redis-server (`[store]`: one script at a stream's start for
    // its lease, tokens and request rate; one at its end for the lease, the token charge and the usage record), and
    // usage asked for on the client's behalf (`usage = "openai"`: the request rewritten, the usage chunk hidden):
    // what the shared store and accounting cost, measured in the same run. Not in the gate; skipped when
    // redis-server is not installed.
    let redis = match (a.gate, redis::available()) {
        (false, Some(bin)) => Some(Redis::start(bin)?),
        _ => None,
    };
    let relay_redis = match &redis {
        Some(r) => {
            let store = format!(
                "[tenant_defaults]\nrequests_per_minute = 100000000\ntokens_per_minute = 4000000000\n\
                 tokens_per_day = 100000000000\ntokens_per_month = 1000000000000\n\n\
                 [store]\nurl = {:?}\n\n[audit]",
                r.url()
            );
            let stored = config
                .replacen("[audit]", &store, 1)
                .replace("[[routes]]\n", "[[routes]]\nusage = \"openai\"\n");
            Some(testkit::proc::start_relay(&stored, &env, "info").await?)
        }
        None => None,
    };
    // The same relay, its config reloaded (`SIGHUP`) every `--reload-every-ms` while the load runs: each reload
    // builds the relay anew (tenants, routes, vendor connection pools) while the streams in flight finish on the
    // old one. Not in the gate.
    let reload_every = Duration::from_millis(a.reload_every_ms);
    let relay_reload = match (a.gate, a.reload_every_ms) {
        (false, 1..) => Some(testkit::proc::start_relay(&config, &env, "info").await?),
        _ => None,
    };
    let reload_idle_kib = relay_reload.as_ref().map(Proc::rss_kib);
    // The same relay with resumable answers (issue 27): each answer read by its own task into a log that keeps it
    // (up to 1 MiB) and followed by the client's connection, an `id:` line before each event. Not in the gate.
    let resumable = config.replace(
        "[[routes]]\n",
        "[[routes]]\nresume = { window_ms = 60000, max_bytes = 1048576 }\n",
    );
    let relay_resume = match a.gate {
        false => Some(testkit::proc::start_relay(&resumable, &env, "info").await?),
        true => None,
    };
    // The same relay with a request policy on its route that uses every rule (issue 28): the model checked against
    // a list, the cap and the prompt text read, deny substrings and patterns run, a member forced (the body
    // rewritten). What the policy stage costs per request in a real run; the relay → mock row is "policy off".
    let policy = r#"[policies.perf]
models = ["mock-1", "gpt-4o*"]
aliases = { fast = "mock-1" }
max_tokens = 4096
max_messages = 32
max_prompt_bytes = 65536
remove = ["logit_bias"]
deny_substrings = ["BEGIN PRIVATE KEY", "internal-only"]
deny_patterns = ['(?i)(?-u:\b)ssn\s*\d{3}-\d{2}-\d{4}']
force = { temperature = 0.2 }

[audit]"#;
    let with_policy = config
        .replacen("[audit]", policy, 1)
        .replace("[[routes]]\n", "[[routes]]\npolicy = \"perf\"\n");
    let relay_policy = match a.gate {
        false => Some(testkit::proc::start_relay(&with_policy, &env, "info").await?),
        true => None,
    };
    // And with its answers copied to Redis for the other replicas (batched appends, `resume/shared.rs`).
    let relay_resume_redis = match &redis {
        Some(r) => {
            let store = format!("[store]\nurl = {:?}\n\n[audit]", r.url());
            let shared = resumable.replacen("[audit]", &store, 1);
            Some(testkit::proc::start_relay(&shared, &env, "info").await?)
        }
        None => None,
    };
    let nginx_bin =
        nginx::available().context("nginx is not installed (apt-get install nginx-light)")?;
    let opts = nginx::Options {
        workers: "auto",
        worker_connections: 16384,
        rlimit_nofile: Some(20000),
        access_log: false,
        ..nginx::Options::default()
    };
    let nginx_mock = nginx::start(&nginx_bin, mock.addr, opts).await?;
    let nginx_relay = nginx::start(&nginx_bin, relay.addr, opts).await?;
    // TLS to the vendor: the same mock over HTTPS (a private CA), the relay and nginx both checking its certificate.
    let (mock_tls, ca) = testkit::proc::start_mock_tls(VENDOR_KEY).await?;
    let ca: &'static str = Box::leak(ca.display().to_string().into_boxed_str());
    let tls_config = mock_upstream::relay_config(&mock_upstream::RelayToml {
        https: true,
        mock: mock_tls.addr,
        route: &format!("ca_file = {ca:?}"),
        ..toml
    });
    let relay_tls = testkit::proc::start_relay(&tls_config, &env, "info").await?;
    let tls_opts = nginx::Options {
        upstream_ca: Some(ca),
        ..opts
    };
    let nginx_tls = nginx::start(&nginx_bin, mock_tls.addr, tls_opts).await?;
    // The tokio floor: a forwarder with no HTTP (`loadtest/src/bin/forward.rs`), the relay's lower bound.
    let mut forward = tokio::process::Command::new(binary("forward", "SSEGATE_FORWARD_BIN")?);
    forward.args(["--upstream", &mock.addr.to_string()]);
    let forward = testkit::proc::spawn_listening(forward, "forward", 0).await?;
    let url = |addr: std::net::SocketAddr| format!("http://{addr}");
    let mut targets: Vec<(&str, String, &str, Vec<&dyn Cost>)> = vec![
        ("direct", url(mock.addr), VENDOR_KEY, vec![]),
        (
            "nginx → mock",
            nginx_mock.base(),
            VENDOR_KEY,
            vec![&nginx_mock],
        ),
        ("relay → mock", url(relay.addr), CLIENT_KEY, vec![&relay]),
        (
            "relay, metrics off → mock",
            url(relay_off.addr),
            CLIENT_KEY,
            vec![&relay_off],
        ),
        (
            "nginx → relay → mock",
            nginx_relay.base(),
            CLIENT_KEY,
            vec![&nginx_relay, &relay],
        ),
        (
            "tokio forwarder, no HTTP → mock",
            url(forward.addr),
            VENDOR_KEY,
            vec![&forward],
        ),
        (
            "nginx → mock (TLS)",
            nginx_tls.base(),
            VENDOR_KEY,
            vec![&nginx_tls],
        ),
        (
            "relay → mock (TLS)",
            url(relay_tls.addr),
            CLIENT_KEY,
            vec![&relay_tls],
        ),
    ];
    if let Some(r) = &relay_redis {
        targets.push((
            "relay, Redis store → mock",
            url(r.addr),
            CLIENT_KEY,
            vec![r],
        ));
    }
    if let Some(r) = &relay_resume {
        targets.push(("relay, resume on → mock", url(r.addr), CLIENT_KEY, vec![r]));
    }
    if let Some(r) = &relay_policy {
        targets.push(("relay, policy on → mock", url(r.addr), CLIENT_KEY, vec![r]));
    }
    if let (Some(r), Some(store)) = (&relay_resume_redis, &redis) {
        targets.push((
            "relay + redis-server, resume on, Redis store → mock",
            url(r.addr),
            CLIENT_KEY,
            vec![r, store],
        ));
    }
    let reload_name: &'static str = Box::leak(
        format!(
            "relay, config reloaded every {} ms → mock",
            a.reload_every_ms
        )
        .into_boxed_str(),
    );
    if let Some(r) = &relay_reload {
        targets.push((reload_name, url(r.addr), CLIENT_KEY, vec![r]));
    }
    if a.gate {
        targets.truncate(4);
    }
    if !a.only.is_empty() {
        targets.retain(|(name, ..)| {
            *name == "direct" || a.only.iter().any(|o| name.starts_with(o.as_str()))
        });
    }
    let pinning = if a.pin {
        let p = Pinning::new()?;
        let proxies = [&relay, &relay_off, &relay_tls, &forward]
            .into_iter()
            .chain(&relay_redis)
            .chain(&relay_reload)
            .chain(&relay_resume)
            .chain(&relay_resume_redis)
            .chain(&relay_policy)
            .filter_map(|r| r.pid());
        let nginxes = [&nginx_mock, &nginx_relay, &nginx_tls]
            .into_iter()
            .flat_map(|n| n.pids());
        Pinning::pin(proxies.chain(nginxes), &p.proxies)?;
        let rest = [
            mock.pid(),
            mock_tls.pid(),
            redis.as_ref().and_then(Redis::pid),
            Some(std::process::id()),
        ];
        Pinning::pin(rest.into_iter().flatten(), &p.rest)?;
        Some(p)
    } else {
        None
    };
    let mut results = Vec::new();
    if a.serial_only {
        a.levels.clear();
    }
    for &users in &a.levels {
        for rep in 0..a.repeat.max(1) {
            for (name, base, key, proxies) in &targets {
                // Later repetitions run only the gated pair, alternating nginx and the relay.
                if rep > 0 && !PAIR.contains(name) {
                    continue;
                }
                let out = dir.path().join(format!(
                    "{}-{users}-{rep}",
                    name.replace([' ', '→', ','], "")
                ));
                let reload = match &relay_reload {
                    Some(r) if *name == reload_name => Some((r, reload_every)),
                    _ => None,
                };
                let m = run_load(
                    (base, key),
                    users,
                    &a,
                    proxies,
                    &out,
                    pinning.as_ref(),
                    reload,
                )
                .await?;
                eprintln!("perf: {users:>5} streams, {name}: {}", m.summary);
                results.push((users, *name, m));
            }
        }
    }
    // One stream at a time: the direct run once, then the gated pair `--repeat` times, interleaved.
    if a.serial_streams > 0 {
        for rep in 0..a.repeat.max(1) {
            for (name, base, key, proxies) in &targets {
                if (rep > 0 || *name != "direct") && !PAIR.contains(name) {
                    continue;
                }
                let m = run_serial(base, key, &a, proxies, pinning.as_ref()).await?;
                eprintln!("perf: one stream at a time, {name}: {}", m.summary);
                results.push((SERIAL, *name, m));
            }
        }
    }
    print_table(&a, &results, pinning.as_ref());
    if let (Some(r), Some(idle)) = (&relay_reload, reload_idle_kib) {
        for (users, name, m) in &results {
            if [reload_name, "relay → mock"].contains(name) {
                report_rss_along(*users, name, &m.rss_each_second);
            }
        }
        report_reloads(r, idle, &relay).await?;
    }
    let ratios = ratios(&results);
    println!("\n{}", serde_json::to_string_pretty(&ratios)?);
    if a.gate || a.write_baseline {
        gate(
            &root.join("loadtest/perf-baseline.json"),
            &ratios,
            a.write_baseline,
        )?;
    }
    Ok(())
}

fn print_table(a: &Args, results: &[(usize, &str, Measured)], pinning: Option<&Pinning>) {
    let cpus = match pinning {
        Some(p) => format!(
            "proxies pinned to CPU {}, load generator, mock and this process to CPU {}",
            p.proxies, p.rest
        ),
        None => "not pinned: load generator, mock and proxies share every CPU".to_owned(),
    };
    println!(
        "\nChunks every {} ms, {} chunks per stream, {} s per run; times in ms; {cpus}.\n",
        a.interval_ms, a.chunks, a.run_secs
    );
    println!(
        "| streams | target | TTFB p50 | TTFB p99 | chunk p50 | chunk p99 | chunk p99.9 | added p50 | added p99 | proxy CPU µs/chunk | proxy RSS KiB/stream | chunks | errors |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (users, name, m) in results {
        let streams = match *users {
            SERIAL => "1 at a time".to_owned(),
            n => n.to_string(),
        };
        let direct = results
            .iter()
            .find(|(u, n, _)| u == users && *n == "direct")
            .map(|r| &r.2.summary);
        let s = &m.summary;
        let added = |q: &str| {
            direct.map_or(f64::NAN, |d| {
                f(s, &format!("/chunk_delay_ms/{q}")) - f(d, &format!("/chunk_delay_ms/{q}"))
            })
        };
        let chunks = f(s, "/chunks");
        let cpu = if *name == "direct" {
            f64::NAN
        } else {
            m.cpu_ns as f64 / 1000.0 / chunks
        };
        let rss = if *name == "direct" || *users == SERIAL {
            f64::NAN
        } else {
            m.rss_per_stream(*users)
        };
        let errors = [
            "non_2xx",
            "transport_errors",
            "missing_terminal",
            "error_events",
        ]
        .iter()
        .map(|k| f(s, &format!("/failures/{k}")))
        .sum::<f64>();
        println!(
            "| {streams} | {name} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.1} | {chunks} | {errors} |",
            f(s, "/ttfb_ms/p50"),
            f(s, "/ttfb_ms/p99"),
            f(s, "/chunk_delay_ms/p50"),
            f(s, "/chunk_delay_ms/p99"),
            f(s, "/chunk_delay_ms/p99_9"),
            added("p50"),
            added("p99"),
            cpu,
            rss,
        );
    }
}

/// The level under which the one-stream-at-a-time runs are kept (`serial` in the ratios and the baseline).
const SERIAL: usize = 0;

/// The targets the gate compares, run `--repeat` times each, interleaved.
const PAIR: [&str; 2] = ["nginx → mock", "relay → mock"];

/// The median of `values` (NaN when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Same-run ratios, relay over nginx, per level: added delay (p50, p99) and CPU per chunk (the median over the
/// repeated pairs, each pair's ratio listed in `cpu_per_chunk_ratio_runs`).
fn ratios(results: &[(usize, &str, Measured)]) -> Value {
    let mut out = serde_json::Map::new();
    let mut levels: Vec<usize> = results.iter().map(|r| r.0).collect();
    levels.dedup();
    for users in levels {
        let get = |n: &str| {
            results
                .iter()
                .find(|(u, name, _)| *u == users && *name == n)
                .map(|r| &r.2)
        };
        let (Some(d), Some(ng), Some(r)) =
            (get("direct"), get("nginx → mock"), get("relay → mock"))
        else {
            continue;
        };
        let added = |m: &Measured, q: &str| {
            f(&m.summary, &format!("/chunk_delay_ms/{q}"))
                - f(&d.summary, &format!("/chunk_delay_ms/{q}"))
        };
        let cpu = |m: &Measured| m.cpu_ns as f64 / f(&m.summary, "/chunks");
        let runs = |n: &str| {
            results
                .iter()
                .filter(|(u, name, _)| *u == users && *name == n)
                .map(|r| cpu(&r.2))
                .collect::<Vec<_>>()
        };
        let pairs: Vec<f64> = runs(PAIR[1])
            .into_iter()
            .zip(runs(PAIR[0]))
            .map(|(relay, nginx)| relay / nginx)
            .collect();
        // Memory from the first pair only: a later run of the same process reuses what the first one left.
        let rss = |m: &Measured| m.rss_per_stream(users);
        let mut level = json!({
            "added_p50_ratio": added(r, "p50") / added(ng, "p50"),
            "added_p99_ratio": added(r, "p99") / added(ng, "p99"),
            "cpu_per_chunk_ratio": median(pairs.clone()),
            "cpu_per_chunk_ratio_runs": pairs,
            "rss_per_stream_ratio": rss(r) / rss(ng),
        });
        // Metrics on over metrics off: what the request path's metrics cost per chunk.
        if let Some(off) = get("relay, metrics off → mock") {
            level["metrics_cpu_ratio"] = json!(cpu(r) / cpu(off));
        }
        if users == SERIAL {
            // One stream at a time: CPU per event (median of the pairs) and time to first byte, relay over nginx.
            let ttfb = |n: &str| {
                results
                    .iter()
                    .filter(|(u, name, _)| *u == users && *name == n)
                    .map(|r| f(&r.2.summary, "/ttfb_ms/p50"))
                    .collect::<Vec<_>>()
            };
            let ttfb_pairs: Vec<f64> = ttfb(PAIR[1])
                .into_iter()
                .zip(ttfb(PAIR[0]))
                .map(|(relay, nginx)| relay / nginx)
                .collect();
            level = json!({
                "added_p50_ratio": level["added_p50_ratio"],
                "cpu_per_event_ratio": level["cpu_per_chunk_ratio"],
                "cpu_per_event_ratio_runs": level["cpu_per_chunk_ratio_runs"],
                "ttfb_p50_ratio": median(ttfb_pairs.clone()),
                "ttfb_p50_ratio_runs": ttfb_pairs,
            });
        }
        let label = match users {
            SERIAL => "serial".to_owned(),
            n => n.to_string(),
        };
        out.insert(label, level);
    }
    Value::Object(out)
}

fn gate(path: &Path, ratios: &Value, write: bool) -> Result<()> {
    if write {
        let old: Value = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let margin = old["margin"].as_f64().unwrap_or(0.5);
        let gated = if old["gated"].is_object() {
            old["gated"].clone()
        } else {
            json!({
                "100": ["cpu_per_chunk_ratio"],
                "1000": ["rss_per_stream_ratio"],
                "serial": ["cpu_per_event_ratio", "ttfb_p50_ratio"],
            })
        };
        let baseline =
            json!({ "ratios": ratios, "margin": margin, "gated": gated, "note": old["note"] });
        std::fs::write(path, serde_json::to_string_pretty(&baseline)? + "\n")?;
        println!("perf: wrote {}", path.display());
        return Ok(());
    }
    let baseline: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let margin = baseline["margin"].as_f64().unwrap_or(0.5);
    let mut failed = Vec::new();
    for (level, now) in ratios.as_object().into_iter().flatten() {
        // `gated`: the keys compared at each level.
        let gated: Vec<&str> = baseline["gated"][level]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for key in gated {
            let (Some(now), Some(base)) =
                (now[key].as_f64(), baseline["ratios"][level][key].as_f64())
            else {
                continue;
            };
            let verdict = if now > base * (1.0 + margin) {
                "WORSE"
            } else {
                "ok"
            };
            println!(
                "perf gate: {level} {key}: {now:.3} vs baseline {base:.3} (margin {margin:.0}%): {verdict}",
                margin = margin * 100.0
            );
            if verdict != "ok" {
                failed.push(format!("{level}/{key}"));
            }
        }
    }
    if !failed.is_empty() {
        bail!("performance regressed: {}", failed.join(", "));
    }
    Ok(())
}
