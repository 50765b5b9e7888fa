//! A real nginx in front of a relay (or the mock), configured from `deploy/nginx/ssegate.conf` with only the
//! ports changed: what is tested and measured is what is deployed.
//!
//! Runs when `nginx` is installed; with `SSEGATE_REQUIRE_NGINX=1` (set by `.ci/run`) a missing nginx fails the
//! test instead of skipping it. Dropping [`Nginx`] sends TERM to the master and waits until it has stopped its
//! workers and exited, so no worker outlives the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use super::proc::{children, cpu_ns, kill, rss_kib, terminate};

/// The shipped site config.
pub fn site_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/ssegate.conf")
}

/// The shipped site config for several relay replicas.
pub fn replicas_site_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/ssegate-replicas.conf")
}

/// How to run nginx besides the site config.
#[derive(Clone, Copy)]
pub struct Options {
    /// `worker_processes`: `"1"` for tests, `"auto"` for measurements.
    pub workers: &'static str,
    pub worker_connections: u32,
    /// `worker_rlimit_nofile`, when the run opens thousands of connections.
    pub rlimit_nofile: Option<u32>,
    pub access_log: bool,
    /// Applied to the rendered site config (e.g. a shorter `proxy_read_timeout`).
    pub tweak: fn(String) -> String,
    /// The upstream speaks HTTPS with a certificate for `localhost` from this CA (PEM file): nginx proxies with
    /// `proxy_ssl_verify on` (the performance run's TLS rows).
    pub upstream_ca: Option<&'static str>,
    /// A second relay replica: the site is `deploy/nginx/ssegate-replicas.conf`, its two servers the upstream
    /// given to [`start`] and this one.
    pub second_replica: Option<SocketAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: "1",
            worker_connections: 1024,
            rlimit_nofile: None,
            access_log: true,
            tweak: |site| site,
            upstream_ca: None,
            second_replica: None,
        }
    }
}

/// A running nginx master (and its workers).
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// nginx saw every upstream response end cleanly (a relay that aborts a body makes it log this).
    pub fn assert_no_premature_close(&self) {
        let log = self.error_log();
        assert!(
            !log.contains("prematurely closed"),
            "nginx saw a cut response: {log}"
        );
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        std::iter::once(master).chain(children(master)).collect()
    }

    /// Nanoseconds on CPU, master and workers.
    pub fn cpu_ns(&self) -> u64 {
        self.pids().into_iter().map(cpu_ns).sum()
    }

    /// Resident memory in KiB, master and workers.
    pub fn rss_kib(&self) -> u64 {
        self.pids().into_iter().map(rss_kib).sum()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM to the master: it stops its workers, then exits. Killing only the master would orphan them.
        if terminate(&mut self.child) {
            return;
        }
        for pid in self.pids() {
            let _ = kill("KILL", pid);
        }
        let _ = self.child.wait();
    }
}

/// nginx if installed; `None` (skip) when it is not and `SSEGATE_REQUIRE_NGINX` is unset.
pub fn available() -> Option<PathBuf> {
    super::proc::installed("nginx", "SSEGATE_REQUIRE_NGINX", "nginx-light")
}

/// The production site config with the upstream's and nginx's loopback ports filled in.
pub fn render_site(upstream: SocketAddr, port: u16) -> Result<String> {
    let path = site_path();
    let site =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (server, listen) = ("server 127.0.0.1:8080;", "listen 80;");
    if !site.contains(server) || !site.contains(listen) {
        bail!(
            "{} no longer has `{server}` and `{listen}` to replace",
            path.display()
        );
    }
    Ok(site
        .replace(server, &format!("server {upstream};"))
        .replace(listen, &format!("listen 127.0.0.1:{port};")))
}

/// The replicas' site config with the two replicas' and nginx's loopback ports filled in.
pub fn render_replicas_site(replicas: [SocketAddr; 2], port: u16) -> Result<String> {
    let path = replicas_site_path();
    let mut site =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for (shipped, replica) in ["server 127.0.0.1:8080 ", "server 127.0.0.1:8081 "]
        .iter()
        .zip(replicas)
    {
        if !site.contains(shipped) {
            bail!("{} no longer has `{shipped}` to replace", path.display());
        }
        site = site.replace(shipped, &format!("server {replica} "));
    }
    if !site.contains("listen 80;") {
        bail!("{} no longer has `listen 80;` to replace", path.display());
    }
    Ok(site.replace("listen 80;", &format!("listen 127.0.0.1:{port};")))
}

/// Starts `binary` in front of `upstream`.
pub async fn start(binary: &Path, upstream: SocketAddr, opts: Options) -> Result<Nginx> {
    let mut last_error = String::new();
    for _ in 0..5 {
        // nginx cannot report a port-0 bind, so take a free port from the kernel and hand it over.
        let port = super::proc::free_port()?;
        let dir = tempfile::Builder::new()
            .prefix("ssegate-nginx-")
            .tempdir()?;
        let d = dir.path().display();
        let site = match opts.second_replica {
            None => render_site(upstream, port)?,
            Some(second) => render_replicas_site([upstream, second], port)?,
        };
        let mut site = (opts.tweak)(site);
        if let Some(ca) = opts.upstream_ca {
            let plain = "proxy_pass http://ssegate_relay;";
            if !site.contains(plain) {
                bail!("the site config no longer has `{plain}` to turn into HTTPS");
            }
            // nginx checks DNS names only (not IP addresses) against the certificate: name it `localhost`.
            site = site.replace(
                plain,
                &format!(
                    "proxy_pass https://ssegate_relay;\n        proxy_ssl_trusted_certificate {ca};\n        \
                     proxy_ssl_verify on;\n        proxy_ssl_name localhost;\n        proxy_ssl_server_name on;\n        \
                     proxy_ssl_session_reuse on;"
                ),
            );
        }
        std::fs::write(dir.path().join("ssegate.conf"), site)?;
        let rlimit = opts
            .rlimit_nofile
            .map(|n| format!("worker_rlimit_nofile {n};\n"))
            .unwrap_or_default();
        let access = if opts.access_log {
            format!("{d}/access.log")
        } else {
            "off".to_owned()
        };
        let main = format!(
            "worker_processes {workers};\n{rlimit}pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections {conns}; }}\n\
             http {{\n  access_log {access};\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/ssegate.conf;\n}}\n",
            workers = opts.workers,
            conns = opts.worker_connections,
        );
        std::fs::write(dir.path().join("nginx.conf"), main)?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning nginx")?;
        let mut nginx = Nginx {
            addr: ([127, 0, 0, 1], port).into(),
            child,
            dir,
        };
        // Readiness: it prints no "listening" line, so connect until it accepts or exits (then retry on a new
        // port: another process may have taken this one).
        match super::proc::await_accepting(nginx.addr, &mut nginx.child).await {
            Ok(None) => return Ok(nginx),
            Ok(Some(status)) => last_error = format!("{status}: {}", nginx.error_log()),
            Err(e) => last_error = format!("{e}: {}", nginx.error_log()),
        }
    }
    bail!("nginx did not start: {last_error}")
}
