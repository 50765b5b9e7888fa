//! A real HAProxy in front of a relay, configured from `deploy/haproxy/ssegate.cfg` with only the addresses and
//! `maxconn` changed: what is tested is what is deployed.
//!
//! Runs when `haproxy` is installed; with `SSEGATE_REQUIRE_HAPROXY=1` (set by `.ci/run`) a missing haproxy fails
//! the test instead of skipping it. It runs in the foreground (`-db`, one process); dropping [`Haproxy`] stops it
//! by its PID.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use super::proc::{kill, terminate};

/// The shipped config.
pub fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/ssegate.cfg")
}

/// haproxy if installed; `None` (skip) when it is not and `SSEGATE_REQUIRE_HAPROXY` is unset.
pub fn available() -> Option<PathBuf> {
    super::proc::installed("haproxy", "SSEGATE_REQUIRE_HAPROXY", "haproxy")
}

/// The shipped config with HAProxy's, the relay's and the relay's admin loopback addresses filled in (and a smaller
/// `maxconn`).
pub fn render(relay: SocketAddr, admin: SocketAddr, port: u16) -> Result<String> {
    let path = config_path();
    let cfg =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (bind, server) = (
        "    bind :80\n",
        "    server relay1 127.0.0.1:8080 check port 9464\n",
    );
    if !cfg.contains(bind) || !cfg.contains(server) {
        bail!(
            "{} no longer has `{}` and `{}` to replace",
            path.display(),
            bind.trim(),
            server.trim()
        );
    }
    if relay.ip() != admin.ip() {
        bail!("the relay's listeners must share an address for `check port`: {relay}, {admin}");
    }
    // The one other change: HAProxy reserves two files per `maxconn` at start, over this machine's 20,000 per
    // process for the shipped 20,000 connections.
    let maxconn = "    maxconn 20000\n";
    if !cfg.contains(maxconn) {
        bail!(
            "{} no longer has `{}` to replace",
            path.display(),
            maxconn.trim()
        );
    }
    Ok(cfg
        .replace(maxconn, "    maxconn 4000\n")
        .replace(bind, &format!("    bind 127.0.0.1:{port}\n"))
        .replace(
            server,
            &format!("    server relay1 {relay} check port {}\n", admin.port()),
        ))
}

/// A running haproxy.
pub struct Haproxy {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Haproxy {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it logged (a line per request, and its alerts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if terminate(&mut self.child) {
            return;
        }
        let _ = kill("KILL", self.child.id());
        let _ = self.child.wait();
    }
}

/// Starts `binary` in front of the relay at `relay`, health-checked on its admin listener `admin`.
pub async fn start(binary: &Path, relay: SocketAddr, admin: SocketAddr) -> Result<Haproxy> {
    let mut last_error = String::new();
    for _ in 0..5 {
        // haproxy cannot report a port-0 bind, so take a free port from the kernel and hand it over.
        let port = super::proc::free_port()?;
        let dir = tempfile::Builder::new()
            .prefix("ssegate-haproxy-")
            .tempdir()?;
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, render(relay, admin, port)?)?;
        let log = std::fs::File::create(dir.path().join("haproxy.log"))?;
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning haproxy")?;
        let mut haproxy = Haproxy {
            addr: ([127, 0, 0, 1], port).into(),
            child,
            dir,
        };
        // Readiness: it prints no "listening" line, so connect until it accepts or exits (then retry on a new
        // port: another process may have taken this one).
        match super::proc::await_accepting(haproxy.addr, &mut haproxy.child).await {
            Ok(None) => return Ok(haproxy),
            Ok(Some(status)) => last_error = format!("{status}: {}", haproxy.log()),
            Err(e) => last_error = format!("{e}: {}", haproxy.log()),
        }
    }
    bail!("haproxy did not start: {last_error}")
}
