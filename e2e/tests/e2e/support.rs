//! Real processes: `mock-upstream`, `relay` and `nginx`, each on a loopback port, each killed by PID on drop.
//!
//! Binaries come from `SSEGATE_RELAY_BIN` / `SSEGATE_MOCK_BIN`, else from the target directory this test binary
//! was built into (`cargo test --workspace` builds them in the same run).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const VENDOR_KEY: &str = "sk-vendor-CANARY-e2e-91c3";
pub const CLIENT_KEY: &str = "client-CANARY-e2e-key-4d2a";

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/e2e-<hash> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn binary(name: &str, var: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join(name));
    assert!(
        path.exists(),
        "{} not found: run `cargo test --workspace` (which builds it) or set {var}",
        path.display()
    );
    path
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("ssegate-e2e-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that printed `listening on ADDR`; its stderr goes to a file for log assertions.
pub struct Proc {
    pub addr: SocketAddr,
    child: Child,
    pub stdout_rest: Vec<String>,
    stderr: PathBuf,
    _dir: TempDir,
}

impl Proc {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `signal` (e.g. "TERM", "INT") to the process by its PID.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.id().context("process already reaped")?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// The exit status, if the process exits within `within`.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    /// Resident memory of the process in KiB (`VmRSS` from `/proc/PID/status`).
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.child.id().context("process already reaped")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("bad VmRSS")?
            .parse()?)
    }
}

/// Spawns `cmd` and waits for its `listening on ADDR` line (reading at most `extra_lines` more after it).
pub async fn spawn_listening(mut cmd: Command, tag: &str, extra_lines: usize) -> Result<Proc> {
    let dir = TempDir::new(tag);
    let stderr = dir.0.join("stderr.log");
    cmd.stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr)?)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("spawning {tag}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .with_context(|| format!("{tag} did not say it was listening"))??
        .with_context(|| {
            format!(
                "{tag} exited: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        })?;
    let addr = first
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected line {first:?}"))?
        .parse()?;
    let mut stdout_rest = Vec::new();
    for _ in 0..extra_lines {
        match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
            Ok(Ok(Some(l))) => stdout_rest.push(l),
            _ => break,
        }
    }
    Ok(Proc {
        addr,
        child,
        stdout_rest,
        stderr,
        _dir: dir,
    })
}

pub async fn start_mock() -> Result<Proc> {
    let mut cmd = Command::new(binary("mock-upstream", "SSEGATE_MOCK_BIN"));
    cmd.args(["--listen", "127.0.0.1:0", "--api-key", VENDOR_KEY]);
    spawn_listening(cmd, "mock", 0).await
}

/// The relay's config for a mock at `mock`: `top` lines go at the top level, `route` lines into both routes.
pub fn relay_config(mock: SocketAddr, top: &str, route: &str) -> String {
    let digest: String = Sha256::digest(CLIENT_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let one = |path: &str, auth: &str, terminal: &str| {
        format!(
            "[[routes]]\npath = \"{path}\"\nupstream = \"http://{mock}{path}\"\nauth = \"{auth}\"\n\
             secret_env = \"SSEGATE_E2E_VENDOR_KEY\"\nterminal_event = \"{terminal}\"\n\
             forward_headers = [\"x-mock-*\"]\n{route}\n\n"
        )
    };
    format!(
        "{top}\n[audit]\nenabled = true\nmax_text_bytes = 65536\n\n\
         [[clients]]\ntenant = \"e2e\"\nkey_sha256 = \"{digest}\"\n\n{}{}",
        one("/v1/chat/completions", "bearer", "data: [DONE]"),
        one("/api/send-message", "x-api-key", "event: done"),
    )
}

/// The relay binary with extra `top` and `route` config lines, and `RUST_LOG` set to `log`.
pub async fn start_relay_logging(
    mock: SocketAddr,
    dir: &TempDir,
    top: &str,
    route: &str,
    log: &str,
) -> Result<Proc> {
    let config = dir.0.join("relay.toml");
    std::fs::write(&config, relay_config(mock, top, route))?;
    let mut cmd = Command::new(binary("relay", "SSEGATE_RELAY_BIN"));
    cmd.arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"]);
    cmd.env("SSEGATE_E2E_VENDOR_KEY", VENDOR_KEY)
        .env("RUST_LOG", log);
    spawn_listening(cmd, "relay", 0).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A streaming chat request to `base` with the client key and scenario headers.
pub fn chat(base: &str, key: &str, scenario: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let mut rb = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(r#"{"model":"mock-1","stream":true,"messages":[{"role":"user","content":"你好"}]}"#);
    for (k, v) in scenario {
        rb = rb.header(*k, *v);
    }
    rb
}

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a client saw of one stream.
pub struct Received {
    pub bytes: Vec<u8>,
    pub trace_id: String,
    /// One-way delay of each content event (arrival wall clock minus the mock's `ts=`), in arrival order.
    pub delays: Vec<Duration>,
    /// Arrival of the response head, the first body byte and the end, measured from sending the request.
    pub head: Duration,
    pub first_byte: Duration,
    pub end: Duration,
}

impl Received {
    /// Median and largest per-chunk one-way delay.
    pub fn p50_max(&self) -> (Duration, Duration) {
        let mut sorted = self.delays.clone();
        sorted.sort();
        let at = |q: f64| {
            sorted
                .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
        };
        (at(0.5).unwrap_or_default(), at(1.0).unwrap_or_default())
    }
}

/// Reads a whole SSE response, timing each complete event as it arrives.
pub async fn receive(rb: reqwest::RequestBuilder) -> Result<Received> {
    use futures_util::StreamExt;
    let started = tokio::time::Instant::now();
    let res = rb.send().await?;
    let head = started.elapsed();
    if res.status() != 200 {
        bail!("status {}", res.status());
    }
    let trace_id = res
        .headers()
        .get("x-trace-id")
        .context("no x-trace-id")?
        .to_str()?
        .to_owned();
    let mut bytes = Vec::new();
    let mut scanned = 0;
    let mut delays = Vec::new();
    let mut first_byte = None;
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let now = unix_nanos();
        first_byte.get_or_insert_with(|| started.elapsed());
        bytes.extend_from_slice(&chunk);
        while let Some(end) = find(&bytes[scanned..], b"\n\n") {
            let event = &bytes[scanned..scanned + end];
            if let Some(ts) = event_ts(event) {
                delays.push(Duration::from_nanos(
                    u64::try_from(now.saturating_sub(ts)).unwrap_or(u64::MAX),
                ));
            }
            scanned += end + 2;
        }
    }
    Ok(Received {
        bytes,
        trace_id,
        delays,
        head,
        first_byte: first_byte.unwrap_or_default(),
        end: started.elapsed(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `ts=<nanos>;` stamp in an event, if any.
fn event_ts(event: &[u8]) -> Option<u128> {
    let at = find(event, b"ts=")? + 3;
    let digits: Vec<u8> = event[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// The mock's record of a stream (`GET /streams/{trace_id}`).
pub async fn mock_record(mock: &Proc, trace_id: &str) -> Result<serde_json::Value> {
    Ok(client()
        .get(mock.url(&format!("/streams/{trace_id}")))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// The mock's counters (`GET /stats`).
pub async fn mock_stats(mock: &Proc) -> Result<serde_json::Value> {
    Ok(client()
        .get(mock.url("/stats"))
        .send()
        .await?
        .json()
        .await?)
}

/// Awaits a mock counter via its long-poll endpoint; true when reached within `timeout_ms`.
pub async fn await_counter(
    mock: &Proc,
    counter: &str,
    at_least: u64,
    timeout_ms: u64,
) -> Result<bool> {
    let url = mock.url(&format!(
        "/stats/wait?counter={counter}&at_least={at_least}&timeout_ms={timeout_ms}"
    ));
    Ok(client().get(url).send().await?.status() == 200)
}
