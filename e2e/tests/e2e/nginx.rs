//! A real nginx in front of the relay, configured from `deploy/nginx/ssegate.conf` with only the ports changed.
//!
//! Runs when `nginx` is installed; with `SSEGATE_REQUIRE_NGINX=1` (set by `.ci/run`) a missing nginx fails the
//! test instead of skipping it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::support::TempDir;

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Nginx {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }

    /// nginx saw every upstream response end cleanly (a relay that aborts a body makes it log this).
    pub fn assert_no_premature_close(&self) {
        let log = self.error_log();
        assert!(
            !log.contains("prematurely closed"),
            "nginx saw a cut response: {log}"
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM to the master by PID: it stops its workers and exits (killing only the master would orphan them).
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// nginx if installed; `None` (skip) when it is not and `SSEGATE_REQUIRE_NGINX` is unset.
pub fn available() -> Option<PathBuf> {
    let found = nginx_binary();
    if found.is_none() {
        assert!(
            std::env::var("SSEGATE_REQUIRE_NGINX").as_deref() != Ok("1"),
            "nginx is required (SSEGATE_REQUIRE_NGINX=1) but not on PATH: apt-get install -y nginx-light"
        );
        eprintln!("skipping: nginx is not installed");
    }
    found
}

/// The production site config with the relay's and nginx's loopback ports filled in.
pub fn render_site(relay: SocketAddr, port: u16) -> Result<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx/ssegate.conf");
    let site = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let (upstream, listen) = ("server 127.0.0.1:8080;", "listen 80;");
    if !site.contains(upstream) || !site.contains(listen) {
        bail!("{path} no longer has `{upstream}` and `{listen}` for the tests to replace");
    }
    Ok(site
        .replace(upstream, &format!("server {relay};"))
        .replace(listen, &format!("listen 127.0.0.1:{port};")))
}

pub async fn start(
    binary: &PathBuf,
    relay: SocketAddr,
    tweak: fn(String) -> String,
) -> Result<Nginx> {
    let mut last_error = String::new();
    for _ in 0..5 {
        // nginx cannot report a port-0 bind, so take a free port from the kernel and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = TempDir::new("nginx");
        let d = dir.0.display();
        std::fs::write(dir.0.join("ssegate.conf"), tweak(render_site(relay, port)?))?;
        let main = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/ssegate.conf;\n}}\n"
        );
        std::fs::write(dir.0.join("nginx.conf"), main)?;
        let mut child = Command::new(binary)
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(dir.0.join("nginx.conf"))
            .arg("-e")
            .arg(dir.0.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning nginx")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // Readiness: nginx has no "listening" line, so connect until it accepts or exits.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(Nginx { addr, child, dir });
            }
            if let Some(status) = child.try_wait()? {
                last_error = format!(
                    "{status}: {}",
                    std::fs::read_to_string(dir.0.join("error.log")).unwrap_or_default()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    bail!("nginx did not start: {last_error}")
}
