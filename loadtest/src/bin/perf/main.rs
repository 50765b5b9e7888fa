//! `perf`: the side-by-side run. Starts mock-upstream, the relay (release, auth and audit log on) and nginx from
//! `deploy/nginx/ssegate.conf`, runs the goose load test against four targets (mock directly, nginx → mock,
//! relay → mock, nginx → relay → mock) at each concurrency, and prints one Markdown table. Everything binds
//! 127.0.0.1 and is stopped by its PID. `--gate` runs the short CI variant and compares same-run ratios with
//! `loadtest/perf-baseline.json`. Run through `scripts/perf.sh`, which builds the release binaries first.

#![expect(
    clippy::print_stdout,
    reason = "perf prints its report (the Markdown table) on stdout"
)]

mod procs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use procs::{Proc, nginx, spawn_listening};

const VENDOR_KEY: &str = "perf-vendor-key";
const CLIENT_KEY: &str = "perf-client-key";

struct Args {
    levels: Vec<usize>,
    run_secs: u64,
    interval_ms: u64,
    chunks: u64,
    gate: bool,
    write_baseline: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        levels: vec![1, 100, 1000],
        run_secs: 20,
        interval_ms: 50,
        chunks: 40,
        gate: false,
        write_baseline: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().context("flag needs a value");
        match flag.as_str() {
            "--levels" => {
                a.levels = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--run-secs" => a.run_secs = value()?.parse()?,
            "--interval-ms" => a.interval_ms = value()?.parse()?,
            "--chunks" => a.chunks = value()?.parse()?,
            "--gate" => a.gate = true,
            "--write-baseline" => a.write_baseline = true,
            other => bail!(
                "unknown flag {other}; flags: --levels 1,100,1000 --run-secs N --interval-ms N --chunks N --gate --write-baseline"
            ),
        }
    }
    if a.gate {
        a.levels = vec![100];
        a.run_secs = a.run_secs.min(15);
    }
    Ok(a)
}

/// The workspace root (this binary lives in `target/release/`).
fn root() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace root")?
        .to_path_buf())
}

fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("no bin dir")?.join(name))
}

fn relay_config(mock: std::net::SocketAddr) -> String {
    use std::fmt::Write;
    let digest = sha256_hex(CLIENT_KEY);
    let mut c = format!(
        "max_streams = 20000\nmax_streams_per_tenant = 20000\n[audit]\nenabled = true\n\n\
         [[clients]]\ntenant = \"perf\"\nkey_sha256 = \"{digest}\"\n\n"
    );
    let _ = write!(
        c,
        "[[routes]]\npath = \"/v1/chat/completions\"\nupstream = \"http://{mock}/v1/chat/completions\"\n\
         auth = \"bearer\"\nsecret_env = \"PERF_VENDOR_KEY\"\nterminal_event = \"data: [DONE]\"\n\
         forward_headers = [\"x-mock-*\"]\n"
    );
    c
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One load-test run and what the proxies spent on it.
struct Measured {
    summary: Value,
    cpu_ns: u64,
    peak_rss_kib: u64,
    idle_rss_kib: u64,
}

fn run_load(
    base: &str,
    key: &str,
    users: usize,
    a: &Args,
    proxies: &[&Proc],
    out: &Path,
) -> Result<Measured> {
    let summary_path = out.with_extension("json");
    let idle_rss_kib: u64 = proxies.iter().map(|p| p.rss_kib()).sum();
    let cpu_before: u64 = proxies.iter().map(|p| p.cpu_ns()).sum();
    let rate = users.min(500).to_string();
    let mut child = Command::new(bin("loadtest")?)
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
    while child.try_wait()?.is_none() {
        peak_rss_kib = peak_rss_kib.max(proxies.iter().map(|p| p.rss_kib()).sum());
        std::thread::sleep(Duration::from_millis(200));
    }
    let cpu_ns = proxies.iter().map(|p| p.cpu_ns()).sum::<u64>() - cpu_before;
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).context("no summary")?)?;
    Ok(Measured {
        summary,
        cpu_ns,
        peak_rss_kib,
        idle_rss_kib,
    })
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let a = args()?;
    let root = root()?;
    let dir = std::env::temp_dir().join(format!("ssegate-perf-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut mock = Command::new(bin("mock-upstream")?);
    mock.args(["--listen", "127.0.0.1:0", "--api-key", VENDOR_KEY]);
    let mock = spawn_listening(mock, &dir.join("mock.log"))?;
    std::fs::write(dir.join("relay.toml"), relay_config(mock.addr))?;
    let mut relay = Command::new(bin("relay")?);
    relay
        .arg("--config")
        .arg(dir.join("relay.toml"))
        .args(["--listen", "127.0.0.1:0"])
        .env("PERF_VENDOR_KEY", VENDOR_KEY);
    let relay = spawn_listening(relay, &dir.join("relay.log"))?;
    let site = root.join("deploy/nginx/ssegate.conf");
    let nginx_mock = nginx(&site, mock.addr, &dir.join("nginx-mock"))?;
    let nginx_relay = nginx(&site, relay.addr, &dir.join("nginx-relay"))?;
    let url = |p: &Proc| format!("http://{}", p.addr);
    let mut targets: Vec<(&str, String, &str, Vec<&Proc>)> = vec![
        ("direct", url(&mock), VENDOR_KEY, vec![]),
        (
            "nginx → mock",
            url(&nginx_mock),
            VENDOR_KEY,
            vec![&nginx_mock],
        ),
        ("relay → mock", url(&relay), CLIENT_KEY, vec![&relay]),
        (
            "nginx → relay → mock",
            url(&nginx_relay),
            CLIENT_KEY,
            vec![&nginx_relay, &relay],
        ),
    ];
    if a.gate {
        targets.truncate(3);
    }
    let mut results = Vec::new();
    for &users in &a.levels {
        for (name, base, key, proxies) in &targets {
            let out = dir.join(format!("{}-{users}", name.replace([' ', '→'], "")));
            let m = run_load(base, key, users, &a, proxies, &out)?;
            eprintln!("perf: {users:>5} streams, {name}: {}", m.summary);
            results.push((users, *name, m));
        }
    }
    print_table(&a, &results);
    let ratios = ratios(&results);
    println!("\n{}", serde_json::to_string_pretty(&ratios)?);
    if a.gate || a.write_baseline {
        gate(
            &root.join("loadtest/perf-baseline.json"),
            &ratios,
            a.write_baseline,
        )?;
    }
    drop((nginx_relay, nginx_mock, relay, mock));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn print_table(a: &Args, results: &[(usize, &str, Measured)]) {
    println!(
        "\nChunks every {} ms, {} chunks per stream, {} s per run; times in ms.\n",
        a.interval_ms, a.chunks, a.run_secs
    );
    println!(
        "| streams | target | TTFB p50 | TTFB p99 | chunk p50 | chunk p99 | chunk p99.9 | added p50 | added p99 | proxy CPU µs/chunk | proxy RSS KiB/stream | chunks | errors |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (users, name, m) in results {
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
        let rss = if *name == "direct" {
            f64::NAN
        } else {
            (m.peak_rss_kib.saturating_sub(m.idle_rss_kib)) as f64 / *users as f64
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
            "| {users} | {name} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.1} | {chunks} | {errors} |",
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

/// Same-run ratios, relay over nginx, per level: added delay (p50, p99) and CPU per chunk.
fn ratios(results: &[(usize, &str, Measured)]) -> Value {
    let mut out = serde_json::Map::new();
    let levels: Vec<usize> = results.iter().map(|r| r.0).collect();
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
        out.insert(
            users.to_string(),
            json!({
                "added_p50_ratio": added(r, "p50") / added(ng, "p50"),
                "added_p99_ratio": added(r, "p99") / added(ng, "p99"),
                "cpu_per_chunk_ratio": cpu(r) / cpu(ng),
            }),
        );
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
        let gated = if old["gated"].is_array() {
            old["gated"].clone()
        } else {
            json!(["cpu_per_chunk_ratio"])
        };
        let baseline =
            json!({ "ratios": ratios, "margin": margin, "gated": gated, "note": old["note"] });
        std::fs::write(path, serde_json::to_string_pretty(&baseline)? + "\n")?;
        println!("perf: wrote {}", path.display());
        return Ok(());
    }
    let baseline: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let margin = baseline["margin"].as_f64().unwrap_or(0.5);
    let gated: Vec<&str> = baseline["gated"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut failed = Vec::new();
    for (level, now) in ratios.as_object().into_iter().flatten() {
        for key in gated.iter().copied() {
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
                "perf gate: {level} streams {key}: {now:.3} vs baseline {base:.3} (margin {margin:.0}%): {verdict}",
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
