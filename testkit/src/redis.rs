//! A real `redis-server` for the shared-store tests: unix socket only (TCP off), no persistence, in a temp dir,
//! stopped by PID when dropped. [`Redis::stop`] and [`Redis::start_again`] take it away and bring it back on the
//! same socket, for the "store down" tests. [`Cluster`]: a real Redis Cluster of primaries on loopback TCP (a
//! cluster's nodes and clients need TCP), made with `redis-cli --cluster create`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::proc::{free_port, installed, terminate};

/// A running redis-server (or one stopped by [`Redis::stop`]).
pub struct Redis {
    binary: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// `redis-server`, or `None` to skip (a failure when `SSEGATE_REQUIRE_REDIS=1`).
pub fn available() -> Option<PathBuf> {
    installed("redis-server", "SSEGATE_REQUIRE_REDIS", "redis-server")
}

impl Redis {
    /// Starts redis-server and waits until it accepts connections.
    pub fn start(binary: PathBuf) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ssegate-redis-")
            .tempdir()?;
        let mut redis = Self {
            binary,
            dir,
            child: None,
        };
        redis.start_again()?;
        Ok(redis)
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The URL the relay's `[store] url` takes.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// Stops the server (SIGKILL: gone at once, as a crashed one is).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same socket (empty: nothing was saved).
    pub fn start_again(&mut self) -> Result<()> {
        self.stop();
        let mut cmd = command(&self.binary, self.dir.path());
        cmd.args(["--port", "0", "--unixsocket"]).arg(self.socket());
        let (child, stdout) = spawn(&mut cmd)?;
        self.child = Some(child);
        await_ready(stdout)
    }
}

/// redis-server with no persistence, working in `dir`, its output piped for [`await_ready`].
fn command(binary: &std::path::Path, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Starts `cmd`: the process (to be kept, so that it is stopped however the start goes on) and its output.
fn spawn(cmd: &mut Command) -> Result<(Child, std::process::ChildStdout)> {
    let mut child = cmd.spawn().context("spawning redis-server")?;
    let stdout = child.stdout.take().context("redis-server stdout")?;
    Ok((child, stdout))
}

/// Waits for redis-server's readiness line on its `stdout` (the rest of its output is drained, not kept).
fn await_ready(stdout: std::process::ChildStdout) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.by_ref().map_while(Result::ok).any(|l| {
            l.to_ascii_lowercase()
                .contains("ready to accept connections")
        });
        let _ = tx.send(ready);
        lines.for_each(drop);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(true) => Ok(()),
        _ => bail!("redis-server did not become ready"),
    }
}

/// A redis-server speaking only TLS on a loopback port, its certificate (for `127.0.0.1`) signed by a private CA
/// of its own; stopped by PID when dropped.
pub struct TlsRedis {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl TlsRedis {
    pub fn start(binary: PathBuf) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ssegate-redis-tls-")
            .tempdir()?;
        let pki = mock_upstream::tls::Pki::new("ssegate test redis CA")?;
        let (cert, key) = pki.leaf(mock_upstream::tls::Leaf::Loopback)?;
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem())?;
        std::fs::write(dir.path().join("cert.pem"), cert)?;
        std::fs::write(dir.path().join("key.pem"), key)?;
        let port = free_port()?;
        let file = |name: &str| dir.path().join(name);
        let mut cmd = command(&binary, dir.path());
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
        ])
        .arg("--tls-cert-file")
        .arg(file("cert.pem"))
        .arg("--tls-key-file")
        .arg(file("key.pem"))
        .arg("--tls-ca-cert-file")
        .arg(file("ca.pem"))
        .args(["--tls-auth-clients", "no"]);
        let (child, stdout) = spawn(&mut cmd)?;
        let redis = Self { dir, child, port };
        await_ready(stdout)?;
        Ok(redis)
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The private CA's certificate (PEM file): what `[store] ca_file` must name.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if !terminate(&mut self.child) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of primaries on 127.0.0.1, each node stopped by PID when dropped.
pub struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Child>,
    ports: Vec<u16>,
    cli: PathBuf,
}

impl Cluster {
    /// Starts `primaries` (at least 3) nodes, joins them into one cluster and waits until every node says the
    /// cluster is ok. `redis-cli` is the one beside `binary`.
    pub fn start(binary: PathBuf, primaries: usize) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ssegate-redis-cluster-")
            .tempdir()?;
        let cli = binary.with_file_name("redis-cli");
        let mut cluster = Self {
            _dir: dir,
            nodes: Vec::new(),
            ports: Vec::new(),
            cli,
        };
        for i in 0..primaries {
            let (port, bus) = (free_port()?, free_port()?);
            let node_dir = cluster._dir.path().join(format!("node-{i}"));
            std::fs::create_dir(&node_dir)?;
            let mut cmd = command(&binary, &node_dir);
            cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--cluster-config-file", "nodes.conf"]);
            let (child, stdout) = spawn(&mut cmd)?;
            cluster.nodes.push(child);
            cluster.ports.push(port);
            await_ready(stdout)?;
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new(&cluster.cli)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli --cluster create")?;
        if !created.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            );
        }
        // The nodes agree on the slots a moment after `create` returns.
        // At most 20 s: 400 checks 50 ms apart.
        let ok = |c: &Self| {
            c.ports
                .iter()
                .all(|p| c.cli(*p, &["cluster", "info"]).contains("cluster_state:ok"))
        };
        let mut checks = 0;
        while !ok(&cluster) {
            checks += 1;
            if checks > 400 {
                bail!("the cluster never reached cluster_state:ok");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    /// The seed nodes for `[store] cluster_nodes`.
    pub fn nodes(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// How many keys each node holds.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.ports
            .iter()
            .map(|p| self.cli(*p, &["dbsize"]).trim().parse().unwrap_or(0))
            .collect()
    }

    /// `redis-cli -p PORT ARGS…`'s output (empty when it failed).
    fn cli(&self, port: u16, args: &[&str]) -> String {
        Command::new(&self.cli)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            if !terminate(child) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if !terminate(&mut child) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
