//! A real Prometheus (Debian's `prometheus` package) scraping targets on loopback every second, with rule files
//! loaded, queried through its HTTP API; stopped by PID when dropped.
//!
//! Runs when `prometheus` is installed; with `SSEGATE_REQUIRE_PROMETHEUS=1` (set by `.ci/run`) a missing one fails
//! the test instead of skipping it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::client::client;
use super::proc::terminate;

/// `prometheus` if installed; `None` (skip) when it is not and `SSEGATE_REQUIRE_PROMETHEUS` is unset.
pub fn available() -> Option<PathBuf> {
    super::proc::installed("prometheus", "SSEGATE_REQUIRE_PROMETHEUS", "prometheus")
}

/// A running Prometheus.
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if terminate(&mut self.child) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `binary` scraping `targets` every second (job `ssegate`), evaluating `rules` every second.
pub async fn start(binary: &Path, targets: &[SocketAddr], rules: &[PathBuf]) -> Result<Prometheus> {
    let dir = tempfile::Builder::new()
        .prefix("ssegate-prometheus-")
        .tempdir()?;
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let rules: Vec<String> = rules.iter().map(|r| format!("'{}'", r.display())).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\n\
         scrape_configs:\n  - job_name: ssegate\n    static_configs:\n      - targets: [{}]\n",
        rules.join(", "),
        targets.join(", ")
    );
    std::fs::write(dir.path().join("prometheus.yml"), config)?;
    // Prometheus cannot report a port-0 bind: take a free port from the kernel and hand it over.
    let port = super::proc::free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new(binary)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log"))?)
        .spawn()
        .context("spawning prometheus")?;
    let mut prometheus = Prometheus { addr, child, dir };
    // Readiness: poll /-/ready (Prometheus prints no address line to wait for).
    let ready = format!("http://{addr}/-/ready");
    for _ in 0..200 {
        if let Some(status) = prometheus.child.try_wait()? {
            bail!("prometheus exited ({status}): {}", prometheus.log());
        }
        if client()
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Ok(prometheus);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("prometheus did not become ready: {}", prometheus.log())
}

impl Prometheus {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the `data.result` array, or the error Prometheus gave.
    pub async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>> {
        let base = format!("http://{}/api/v1/query", self.addr);
        let url = reqwest::Url::parse_with_params(&base, &[("query", expr)])?;
        let res: serde_json::Value = client().get(url).send().await?.json().await?;
        if res["status"] != "success" {
            bail!("{expr}: {res}");
        }
        Ok(res["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The value of a query that returns exactly one sample.
    pub async fn value(&self, expr: &str) -> Result<f64> {
        let result = self.query(expr).await?;
        let [one] = result.as_slice() else {
            bail!("{expr}: expected one sample, got {result:?}");
        };
        one["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{expr}: {one}"))
    }

    /// Waits (polling its API: Prometheus has nothing to await) until every target has been scraped at least
    /// `scrapes` more times from now.
    pub async fn scraped(&self, scrapes: u32) -> Result<()> {
        let expr = r#"min(count_over_time(up{job="ssegate"}[1h]))"#;
        let start = self.value(expr).await.unwrap_or(0.0);
        for _ in 0..300 {
            if self.value(expr).await.unwrap_or(0.0) >= start + f64::from(scrapes) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "prometheus did not scrape {scrapes} more times: {}",
            self.log()
        )
    }
}
