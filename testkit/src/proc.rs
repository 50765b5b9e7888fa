//! Child processes that announce their address: the relay and the mock vendor, each killed by its PID on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The target directory the running test or tool was built into (`target/<profile>`), where the workspace's other
/// binaries are.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/test-<hash> or target/<profile>/tool
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        dir
    }
}

/// A workspace binary: `$var` when set, else the one built beside this executable.
pub fn binary(name: &str, var: &str) -> Result<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join(name));
    if !path.exists() {
        bail!(
            "{} not found: build the workspace's binaries first (`cargo test --workspace` does) or set {var}",
            path.display()
        );
    }
    Ok(path)
}

/// A child process that printed `listening on ADDR`; its stderr goes to a file for log assertions (or to a pipe
/// that nobody reads, [`Stderr::Unread`]).
pub struct Proc {
    pub addr: SocketAddr,
    child: Child,
    /// The read end of an unread stderr pipe, held open (closing it would fail the child's writes instead of
    /// blocking them).
    _unread: Option<tokio::process::ChildStderr>,
    /// Lines printed on stdout after the first one (as many as asked for).
    pub stdout_rest: Vec<String>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// A file in the process's own temporary directory (for the relay: `relay.toml`, its config).
    pub fn file(&self, name: &str) -> PathBuf {
        self._dir.path().join(name)
    }

    /// The log once `done` holds for it, within 10 s. The relay writes its log lines from a thread of its own
    /// (they reach the file a moment after what they describe): a test that looks for a line waits for it.
    pub async fn await_logs(&self, done: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if done(&logs) {
                return Ok(logs);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the awaited log lines never came: {logs}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The relay's admin listener, from its `admin listening on ADDR` line.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.stdout_rest
            .iter()
            .find_map(|l| l.strip_prefix("admin listening on ")?.parse().ok())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "INT") to the process by its PID.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.id().context("process already reaped")?;
        kill(signal, pid)
    }

    /// The exit status, if the process exits within `within`.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    /// The text of `GET /metrics` on its admin listener.
    pub async fn metrics(&self) -> Result<String> {
        let admin = self.admin().context("no admin address printed")?;
        Ok(crate::client::client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        self.child.id().map_or(0, rss_kib)
    }

    /// Nanoseconds on CPU, all threads.
    pub fn cpu_ns(&self) -> u64 {
        self.child.id().map_or(0, cpu_ns)
    }
}

/// A free loopback port, for a server that cannot report a port-0 bind: bound and released, so another process
/// could take it first (callers retry on a fresh one).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits (up to 10 s) until `addr` accepts a connection: `Ok(None)`; or until `child` exits first:
/// `Ok(Some(status))`. For servers that print no line to wait for (nginx, HAProxy).
pub async fn await_accepting(
    addr: SocketAddr,
    child: &mut std::process::Child,
) -> Result<Option<std::process::ExitStatus>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(None);
        }
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        // Nothing to await: a refused connect is the only sign it is not listening yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{addr} accepted nothing within 10 s")
}

/// A system binary a test needs (`name` on `PATH` or in `/usr/sbin`), or `None` to skip the test; when the
/// environment variable `require` is `1` (`.ci/run` sets it) a missing one fails instead, naming the `package`.
pub fn installed(name: &str, require: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var(require).as_deref() != Ok("1"),
            "{name} is required ({require}=1) but not installed: apt-get install -y {package}"
        );
        skipped(&format!(
            "{name} is not installed (apt-get install -y {package})"
        ));
    }
    found
}

/// Tests of this process that did not run for want of a part ([`skipped`]).
static SKIPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Says that the running test does not run, and `why`, on one line of the real stderr: the test harness captures
/// `eprintln!` (shown only for failed tests), so a skip printed that way would leave a newcomer's green
/// `cargo test --workspace` hiding that part of the suite never ran. The line names the test and counts the skips of
/// this test binary so far (the last such line is the binary's total), and names the command that installs every
/// part.
pub fn skipped(why: &str) {
    use std::io::Write;
    let n = SKIPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: {why} [{n} skipped in this test binary so far; sudo scripts/install-test-parts.sh installs every part]"
    );
}

/// Sends TERM to `child` and waits up to 5 s for it to exit; false when it is still running (the caller kills).
/// A cleanup step of a test's drop, so it polls: a std `Child` offers no wait with a deadline.
pub(crate) fn terminate(child: &mut std::process::Child) -> bool {
    let _ = kill("TERM", child.id());
    for _ in 0..500 {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

pub(crate) fn kill(signal: &str, pid: u32) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// Where a child's stderr goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stderr {
    /// A file, read back by [`Proc::logs`].
    File,
    /// A pipe that is never read: once the kernel's pipe buffer (64 KiB) is full, every write to it blocks, as with
    /// a log collector that stopped draining.
    Unread,
}

/// Spawns `cmd` and waits for its `listening on ADDR` line, then reads at most `extra_lines` more.
pub async fn spawn_listening(cmd: Command, tag: &str, extra_lines: usize) -> Result<Proc> {
    spawn_in(cmd, tag, extra_lines, temp_dir(tag)?, Stderr::File).await
}

fn temp_dir(tag: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("ssegate-{tag}-"))
        .tempdir()?)
}

/// As [`spawn_listening`], with the process's files (its stderr log) in `dir`, removed when it is dropped.
async fn spawn_in(
    mut cmd: Command,
    tag: &str,
    extra_lines: usize,
    dir: tempfile::TempDir,
    to: Stderr,
) -> Result<Proc> {
    let stderr = dir.path().join("stderr.log");
    match to {
        Stderr::File => cmd.stderr(std::fs::File::create(&stderr)?),
        Stderr::Unread => cmd.stderr(Stdio::piped()),
    };
    cmd.stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("spawning {tag}"))?;
    let unread = child.stderr.take();
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .with_context(|| format!("{tag} did not say it was listening"))??
        .with_context(|| {
            let log = std::fs::read_to_string(&stderr).unwrap_or_default();
            format!("{tag} exited: {log}")
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
        _unread: unread,
        stdout_rest,
        stderr,
        _dir: dir,
    })
}

/// The mock vendor binary on a free loopback port, requiring `api_key`.
pub async fn start_mock(api_key: &str) -> Result<Proc> {
    let mut cmd = Command::new(binary("mock-upstream", "SSEGATE_MOCK_BIN")?);
    cmd.args(["--listen", "127.0.0.1:0", "--api-key", api_key]);
    spawn_listening(cmd, "mock", 0).await
}

/// The egress proxy variables the relay honours.
const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The mock vendor speaking HTTPS (`--tls`) on a free loopback port, and the path of its CA certificate (PEM, in
/// the process's directory, removed with it). Plain-HTTP requests to the same port still reach the inspection
/// endpoints ([`mock_upstream::tls::serve`]).
pub async fn start_mock_tls(api_key: &str) -> Result<(Proc, PathBuf)> {
    let dir = temp_dir("mock")?;
    let ca = dir.path().join("ca.pem");
    let mut cmd = Command::new(binary("mock-upstream", "SSEGATE_MOCK_BIN")?);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        api_key,
        "--tls",
        "--tls-ca-out",
    ])
    .arg(&ca);
    let proc = spawn_in(cmd, "mock", 1, dir, Stderr::File).await?;
    Ok((proc, ca))
}

/// The relay binary with `config` (TOML text), extra environment and `RUST_LOG=log`, its public and admin
/// listeners on free loopback ports.
pub async fn start_relay(config: &str, env: &[(&str, &str)], log: &str) -> Result<Proc> {
    start_relay_logging(config, env, log, Stderr::File).await
}

/// As [`start_relay`], its log going `to` a file or an unread pipe.
pub async fn start_relay_logging(
    config: &str,
    env: &[(&str, &str)],
    log: &str,
    to: Stderr,
) -> Result<Proc> {
    let dir = temp_dir("relay")?;
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(binary("relay", "SSEGATE_RELAY_BIN")?);
    // A proxy set on the machine running the tests must not reroute the relay's vendor calls: a test that wants
    // one passes it in `env`.
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .env("RUST_LOG", log);
    spawn_in(cmd, "relay", 1, dir, to).await
}

/// Resident memory of `pid` in KiB (`VmRSS` from `/proc/PID/status`), 0 when it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Nanoseconds `pid` spent on CPU, all its threads (per-thread `schedstat`), 0 when it is gone.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| {
            let path = t.ok()?.path().join("schedstat");
            std::fs::read_to_string(path)
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The PIDs whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(str::to_owned))
                .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}
