//! The demo page in a real browser: headless Chromium (Debian's `chromium`), driven over WebDriver by `fantoccini`
//! through `chromedriver` (`chromium-driver`), against `relay --demo` directly and through nginx. A person types a
//! question: the answer grows in steps spread over time and ends complete; a vendor that drops the connection shows
//! an error; the page's own connection dropped mid-answer for a second is resumed from its last event id, and the
//! page assembles the vendor's exact bytes from one vendor call (the relay read on while nobody listened); Stop
//! cancels the vendor's stream (the mock's counters say so); the browser console has no errors.
//! With `SSEGATE_REQUIRE_CHROMIUM=1` (`.ci/run`) a missing browser or driver fails the test; otherwise it skips.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use testkit::{nginx, proc::installed};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::*;

const REQUIRE: &str = "SSEGATE_REQUIRE_CHROMIUM";

/// `chromedriver` on a free loopback port, in its own process group: dropping it stops the driver and every
/// browser process it started.
struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Driver {
    async fn start(binary: &std::path::Path) -> Result<Self> {
        let mut child = Command::new(binary)
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let port = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(p) = line.split("started successfully on port ").nth(1) {
                    return Ok(p.trim_end_matches('.').parse()?);
                }
            }
            bail!("chromedriver exited before it listened")
        };
        let port = tokio::time::timeout(Duration::from_secs(10), port).await??;
        let profile = tempfile::Builder::new()
            .prefix("ssegate-chromium-")
            .tempdir()?;
        Ok(Self {
            child,
            port,
            profile,
        })
    }

    /// A headless Chromium session.
    async fn session(&self) -> Result<Client> {
        let chromium = installed("chromium", REQUIRE, "chromium").context("no chromium")?;
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            &format!("--user-data-dir={}", self.profile.path().display()),
        ];
        let caps = json!({
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(caps) = caps else {
            bail!("capabilities")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await?;
        Ok(client)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser processes it started. TERM first (chromedriver quits its
        // browsers), KILL what is left after 2 s.
        let Some(pid) = self.child.id() else { return };
        let signal = |s: &str| {
            let _ = std::process::Command::new("kill")
                .args([s, "--", &format!("-{pid}")])
                .status();
        };
        signal("-TERM");
        for _ in 0..200 {
            if group_running(pid).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        signal("-KILL");
        let _ = self.child.try_wait();
    }
}

/// Processes of process group `pgid` that still run (zombies excluded).
fn group_running(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pgid = pgid.to_string();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name: state, ppid, pgrp.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.as_str())
        })
        .collect()
}

/// chromedriver's (non-standard but long-lived) browser log endpoint: the console messages since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

async fn js(c: &Client, script: &str) -> Result<Value> {
    Ok(c.execute(script, vec![]).await?)
}

/// Waits (20 s at most, looking every 50 ms) until the page's status leaves the busy states; returns the final one.
async fn settled(c: &Client) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = js(c, "return document.getElementById('status').dataset.state").await?;
        let state = state.as_str().unwrap_or_default().to_owned();
        if !matches!(state.as_str(), "waiting" | "streaming" | "idle") {
            return Ok(state);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the page is still {state:?} after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ask(c: &Client, scenario: &str) -> Result<()> {
    js(
        c,
        &format!("document.getElementById('scenario').value = '{scenario}'; return null"),
    )
    .await?;
    c.find(Locator::Id("ask")).await?.click().await?;
    Ok(())
}

async fn the_demo_page_streams_in_a_browser(through_nginx: bool) -> Result<()> {
    let (Some(driver_bin), Some(_)) = (
        installed("chromedriver", REQUIRE, "chromium-driver"),
        installed("chromium", REQUIRE, "chromium"),
    ) else {
        return Ok(());
    };
    let nginx_bin = match through_nginx {
        true => match nginx::available() {
            Some(b) => Some(b),
            None => return Ok(()),
        },
        false => None,
    };
    let demo = start_demo(3).await?;
    let mock = demo
        .stdout_rest
        .iter()
        .find_map(|l| l.split("mock vendor is at ").nth(1)?.split(' ').next())
        .context("the demo did not say where its mock vendor is")?
        .to_owned();
    let front = match &nginx_bin {
        Some(bin) => Some(nginx::start(bin, demo.addr, nginx::Options::default()).await?),
        None => None,
    };
    let base = front
        .as_ref()
        .map_or_else(|| format!("http://{}", demo.addr), |n| n.base());

    let driver = Driver::start(&driver_bin).await?;
    let c = driver.session().await?;
    c.goto(&format!("{base}/")).await?;
    // Record every change of the answer's length with its time, from the page itself.
    js(
        &c,
        "window.growth = [];
         new MutationObserver(() => window.growth.push([performance.now(), document.getElementById('answer').textContent.length]))
           .observe(document.getElementById('answer'), {childList: true, characterData: true, subtree: true});
         return null",
    )
    .await?;
    let question = c.find(Locator::Id("question")).await?;
    question.clear().await?;
    question.send_keys("你好, what does a relay do?").await?;

    // 1. A normal answer grows in steps spread over time and ends complete.
    ask(&c, "normal").await?;
    assert_eq!(settled(&c).await?, "complete");
    let growth = js(&c, "return window.growth.filter(g => g[1] > 0)").await?;
    let steps: Vec<(f64, f64)> = growth
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| Some((g[0].as_f64()?, g[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        steps.len() >= 3,
        "the answer appeared in {} steps: {steps:?}",
        steps.len()
    );
    let spread = steps[steps.len() - 1].0 - steps[0].0;
    assert!(
        spread > 1000.0,
        "36 chunks 80 ms apart arrived within {spread:.0} ms: buffered"
    );
    let answer = c.find(Locator::Id("answer")).await?.text().await?;
    assert!(
        answer.starts_with("你好！") && answer.ends_with("也不应缓冲。"),
        "{answer}"
    );
    let bars = js(
        &c,
        "return document.getElementById('chart').children.length",
    )
    .await?;
    assert_eq!(bars, 36);
    let meta = c.find(Locator::Id("meta")).await?.text().await?;
    assert!(
        meta.contains("36 content chunks") && meta.contains("p50"),
        "{meta}"
    );

    // 2. A vendor that drops the connection mid-answer: an error, not a short answer.
    ask(&c, "reset").await?;
    assert_eq!(settled(&c).await?, "error");
    let error = c.find(Locator::Id("error")).await?.text().await?;
    assert!(error.contains("upstream_reset"), "{error}");

    // 3. The connection drops mid-answer ("Drop connection" aborts the page's fetch): the page resumes from its last
    //    event id and assembles the vendor's exact bytes, from one vendor call.
    let before = mock_stats(&mock).await?;
    ask(&c, "normal").await?;
    wait_for_answer(&c, 40).await?;
    c.find(Locator::Id("drop")).await?.click().await?;
    assert_eq!(settled(&c).await?, "complete");
    assert_eq!(js(&c, "return window.resumes").await?, 1);
    let answer = c.find(Locator::Id("answer")).await?.text().await?;
    assert!(
        answer.starts_with("你好！") && answer.ends_with("也不应缓冲。"),
        "{answer}"
    );
    let trace = js(&c, "return window.traceId").await?;
    let record: Value = client()
        .get(format!(
            "{mock}/streams/{}",
            trace.as_str().unwrap_or_default()
        ))
        .send()
        .await?
        .json()
        .await?;
    let received = js(&c, "return window.received").await?;
    let received = received.as_str().unwrap_or_default();
    assert_eq!(
        mock_upstream::sha256_hex(received),
        record["sha256"].as_str().unwrap_or_default(),
        "the page's answer is not the vendor's bytes: {received}"
    );
    let after = mock_stats(&mock).await?;
    let grew = |name: &str| after[name].as_u64().unwrap_or(0) - before[name].as_u64().unwrap_or(0);
    assert_eq!(
        (
            grew("requests"),
            grew("streams_completed"),
            grew("streams_cancelled")
        ),
        (1, 1, 0),
        "one vendor call, read to its end: {after}"
    );

    // 4. Stop: the browser aborts and says stop, the relay cancels the vendor's stream.
    let cancelled = mock_counter(&mock, "streams_cancelled").await?;
    ask(&c, "normal").await?;
    wait_for_answer(&c, 1).await?;
    c.find(Locator::Id("stop")).await?.click().await?;
    assert_eq!(settled(&c).await?, "stopped");
    let url = format!(
        "{mock}/stats/wait?counter=streams_cancelled&at_least={}&timeout_ms=5000",
        cancelled + 1
    );
    assert_eq!(
        client().get(url).send().await?.status(),
        200,
        "Stop did not cancel the vendor"
    );

    // 5. Nothing went to the console as an error.
    let log = c.issue_cmd(BrowserLog).await?;
    let severe: Vec<&Value> = log
        .as_array()
        .map(|a| a.iter().filter(|e| e["level"] == "SEVERE").collect())
        .unwrap_or_default();
    assert!(severe.is_empty(), "console errors: {severe:?}");
    c.close().await?;
    let group = driver.child.id().context("chromedriver is gone")?;
    drop(driver);
    let left = group_running(group);
    assert!(
        left.is_empty(),
        "browser processes outlived the test: {left:?}"
    );
    Ok(())
}

async fn mock_stats(mock: &str) -> Result<Value> {
    Ok(client()
        .get(format!("{mock}/stats"))
        .send()
        .await?
        .json()
        .await?)
}

async fn mock_counter(mock: &str, name: &str) -> Result<u64> {
    mock_stats(mock).await?[name]
        .as_u64()
        .context("no such counter")
}

/// Waits (10 s at most) until the page's answer has at least `chars` characters.
async fn wait_for_answer(c: &Client, chars: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let length = "return document.getElementById('answer').textContent.length";
    while js(c, length).await?.as_u64().unwrap_or(0) < chars {
        if tokio::time::Instant::now() > deadline {
            bail!("the answer did not reach {chars} characters");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn the_demo_page_streams_in_a_browser_direct() -> Result<()> {
    the_demo_page_streams_in_a_browser(false).await
}

#[tokio::test]
async fn the_demo_page_streams_in_a_browser_through_nginx() -> Result<()> {
    the_demo_page_streams_in_a_browser(true).await
}
