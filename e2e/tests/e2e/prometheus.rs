//! The dashboards and alert rules against a real Prometheus scraping a real relay: every PromQL expression in
//! `dashboards/*.json` and `deploy/prometheus/*.yml` must be valid and return series, and the counts must match what
//! the test did. `promtool check rules` and `promtool test rules` run here too.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use testkit::prometheus::{self, Prometheus};

use crate::stack::{Front, Options, stack};
use crate::support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `expr` in a dashboard's JSON, wherever it is nested.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| dashboard_exprs(i, out)),
        _ => {}
    }
}

/// Every rule `expr:` line of a rules file, without its alert threshold (a healthy relay must still return the
/// series the alert compares).
fn rule_exprs(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(
            |e| match e.rsplit_once(" > ").or_else(|| e.rsplit_once(" < ")) {
                Some((lhs, threshold)) if threshold.trim().parse::<f64>().is_ok() => lhs.to_owned(),
                _ => e.to_owned(),
            },
        )
        .collect()
}

fn all_exprs() -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for (dir, ext) in [("dashboards", "json"), ("deploy/prometheus", "yml")] {
        for entry in std::fs::read_dir(root().join(dir))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if path.extension().is_none_or(|e| e != ext) || name.ends_with(".test.yml") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let mut exprs = Vec::new();
            if ext == "json" {
                dashboard_exprs(&serde_json::from_str(&text)?, &mut exprs);
            } else {
                exprs = rule_exprs(&text);
            }
            anyhow::ensure!(!exprs.is_empty(), "{name} has no expression");
            found.extend(exprs.into_iter().map(|e| (name.clone(), e)));
        }
    }
    Ok(found)
}

fn promtool(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .context("running promtool")?;
    if !out.status.success() {
        bail!(
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One of each: complete streams, a vendor reset, a vendor 503 and 429, a client that leaves mid-stream, a bad key.
async fn traffic(s: &crate::stack::Stack) -> Result<()> {
    let base = s.base();
    let scenario = [("x-mock-chunks", "10"), ("x-mock-interval-ms", "5")];
    for _ in 0..3 {
        receive(chat_with_usage(&base, &scenario)).await?;
    }
    let reset = [("x-mock-chunks", "5"), ("x-mock-reset-after", "2")];
    drain(chat(&base, CLIENT_KEY, &reset)).await?;
    for status in ["503", "429"] {
        drain(chat(&base, CLIENT_KEY, &[("x-mock-status", status)])).await?;
    }
    let cancelled_before = mock_stats(&s.mock).await?["streams_cancelled"]
        .as_u64()
        .unwrap_or(0);
    let mut leaving = chat(
        &base,
        CLIENT_KEY,
        &[("x-mock-chunks", "1000"), ("x-mock-interval-ms", "20")],
    )
    .send()
    .await?;
    leaving.chunk().await?;
    drop(leaving);
    anyhow::ensure!(await_counter(&s.mock, "streams_cancelled", cancelled_before + 1, 5000).await?);
    anyhow::ensure!(chat(&base, "wrong", &[]).send().await?.status() == 401);
    // A model the tenant's policy does not allow: refused before the vendor (the policy panel's series).
    let other = r#"{"model":"other-model","stream":true,"messages":[]}"#;
    let refused = testkit::client::chat_with(&base, CLIENT_KEY, other, &[])
        .send()
        .await?;
    anyhow::ensure!(refused.status() == 403, "{}", refused.status());
    Ok(())
}

/// The tenant's request policy: its model only.
const POLICY: &str =
    "[policies.e2e]\nmodels = [\"mock-1\"]\n\n[[tenants]]\nname = \"e2e\"\npolicy = \"e2e\"\n";

#[tokio::test]
async fn every_dashboard_and_alert_expression_returns_series_from_a_real_prometheus() -> Result<()>
{
    let Some(binary) = prometheus::available() else {
        return Ok(());
    };
    promtool(&["check", "rules", "ssegate-rules.yml"])?;
    promtool(&["test", "rules", "ssegate-rules.test.yml"])?;

    let options = Options {
        relay_top: POLICY,
        ..Options::default()
    };
    let s = stack(Front::Relay, options).await?.context("no stack")?;
    let admin = s.relay.admin().context("no admin line")?;
    let rules = root().join("deploy/prometheus/ssegate-rules.yml");
    let prom: Prometheus = prometheus::start(&binary, &[admin], &[rules]).await?;
    prom.scraped(1).await?;
    // Twice, a scrape apart: series born in the first round have a sample before the second, so rates are real.
    traffic(&s).await?;
    prom.scraped(2).await?;
    traffic(&s).await?;
    prom.scraped(2).await?;

    let mut failures = Vec::new();
    for (file, expr) in all_exprs()? {
        let query = expr.replace("$__rate_interval", "1m");
        match prom.query(&query).await {
            Ok(result) if result.is_empty() => failures.push(format!("{file}: no series: {expr}")),
            Ok(_) => {}
            Err(e) => failures.push(format!("{file}: invalid: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // What the test did, as Prometheus saw it.
    let count =
        |outcome: &str| format!(r#"sum(ssegate_stream_outcomes_total{{outcome="{outcome}"}})"#);
    // 3 complete streams and the two vendor error bodies relayed to their end, per round.
    assert_eq!(prom.value(&count("complete")).await?, 10.0);
    assert_eq!(prom.value(&count("upstream_reset")).await?, 2.0);
    assert_eq!(
        prom.value(&count("client_cancelled_mid_stream")).await?,
        2.0
    );
    let completion =
        r#"sum(ssegate_tokens_total{tenant="e2e",type="completion",source="reported"})"#;
    assert_eq!(
        prom.value(completion).await?,
        60.0,
        "3 streams of 10 chunks, twice"
    );
    let rejected = r#"sum(ssegate_rejections_total{reason="unauthorized"})"#;
    assert_eq!(prom.value(rejected).await?, 2.0);
    let refused =
        r#"sum(ssegate_policy_total{tenant="e2e",policy="e2e",rule="models",action="refused"})"#;
    assert_eq!(prom.value(refused).await?, 2.0);
    let added_p99 = r#"histogram_quantile(0.99, sum by (le) (rate(ssegate_relay_added_delay_seconds_bucket[1m])))"#;
    let p99 = prom.value(added_p99).await?;
    assert!(
        p99 > 0.0 && p99 < 0.05,
        "relay-added delay p99 {p99} s on loopback"
    );
    Ok(())
}
