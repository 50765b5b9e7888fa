//! A real `redis-server` for the shared-store tests: unix socket only (TCP off), no persistence, in a temp dir,
//! stopped by PID when dropped. [`Redis::stop`] and [`Redis::start_again`] take it away and bring it back on the
//! same socket, for the "store down" tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::proc::{installed, terminate};

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
        let mut child = Command::new(&self.binary)
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning redis-server")?;
        let stdout = child.stdout.take().context("redis-server stdout")?;
        self.child = Some(child);
        // Readiness is its own log line; the rest of its output is not needed.
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
