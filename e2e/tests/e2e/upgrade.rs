//! Binary upgrade (`SIGUSR2`): the running relay starts the binary at its own path, hands it the listening socket
//! and drains; a client loop and 50 long streams across the swap see no refused connection, no cut stream and no
//! second vendor call, talking to the relay directly or through nginx.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::sync::watch;

use crate::stack::{Front, Options, stack};
use crate::support::*;

/// The successor the old relay started (not a child of the test): stopped by its PID when the test ends.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// Short requests, each on a new connection (`chat` builds a new client each time), one every 5 ms until `stop`:
/// `sent` counts them; returns every one that did not get a whole 200 answer.
async fn steady(base: String, sent: Arc<watch::Sender<u64>>, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let rb = chat(&base, CLIENT_KEY, &[("x-mock-chunks", "1")]);
        sent.send_modify(|n| *n += 1);
        match rb.send().await {
            Ok(res) => {
                let status = res.status();
                match res.bytes().await {
                    Ok(body) if status == 200 && body.ends_with(b"data: [DONE]\n\n") => {}
                    Ok(body) => {
                        failures.push(format!("{status}: {}", String::from_utf8_lossy(&body)))
                    }
                    Err(e) => failures.push(format!("{status}, body cut: {e}")),
                }
            }
            Err(e) => failures.push(format!("{e:?}")),
        }
    }
    failures
}

/// Waits until `sent` has grown by `more` (the loop is running against whoever serves now).
async fn sent_more(sent: &watch::Sender<u64>, more: u64) -> Result<()> {
    let mut counted = sent.subscribe();
    let target = *counted.borrow() + more;
    tokio::time::timeout(Duration::from_secs(20), counted.wait_for(|n| *n >= target))
        .await
        .context("the client loop stalled")?
        .context("the client loop ended")?;
    Ok(())
}

async fn upgrade_with_streams_in_flight(front: Front) -> Result<()> {
    let options = Options {
        relay_top: "shutdown_grace_ms = 20000",
        ..Options::default()
    };
    let Some(mut s) = stack(front, options).await? else {
        return Ok(());
    };
    let base = s.base();
    let scenario = [("x-mock-chunks", "100"), ("x-mock-interval-ms", "100")];
    let streams: Vec<_> = (0..50)
        .map(|_| tokio::spawn(receive(chat(&base, CLIENT_KEY, &scenario))))
        .collect();
    ensure!(
        await_counter(&s.mock, "streams_started", 50, 10_000).await?,
        "the 50 streams did not start"
    );
    let (sent, stop) = (
        Arc::new(watch::Sender::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let looping = tokio::spawn(steady(base.clone(), sent.clone(), stop.clone()));
    sent_more(&sent, 20).await?;

    s.relay.signal("USR2")?;
    let logs = s
        .relay
        .await_logs(|l| l.contains("successor serves"))
        .await
        .context("the successor never served")?;
    let pid: u32 = logs
        .lines()
        .find(|l| l.contains("successor started"))
        .and_then(|l| l.split("pid=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no successor pid logged")?
        .parse()?;
    let _successor = Successor(pid);
    // The old relay drains: its streams end as the vendor ends them (10 s each), then it exits 0.
    let exit = s
        .relay
        .exited(Duration::from_secs(30))
        .await
        .context("the old relay did not exit after draining")?;
    ensure!(exit.success(), "old relay: {exit}");
    sent_more(&sent, 50).await?;
    stop.store(true, Ordering::SeqCst);
    let failures = looping.await?;
    let sent = *sent.borrow();
    let nginx_errors = s.nginx.as_ref().map(|n| n.error_log()).unwrap_or_default();
    ensure!(
        failures.is_empty(),
        "{} of {sent} requests across the swap failed: {failures:?}; nginx: {nginx_errors}",
        failures.len()
    );
    for stream in streams {
        let got = stream.await??;
        let record = mock_record(&s.mock, &got.trace_id).await?;
        assert_eq!(
            record["sha256"],
            sha256_hex(&got.bytes).as_str(),
            "a stream in flight across the upgrade was changed or cut"
        );
        assert!(got.bytes.ends_with(b"data: [DONE]\n\n"));
    }
    let stats = mock_stats(&s.mock).await?;
    assert_eq!(
        stats["requests"].as_u64(),
        Some(50 + sent),
        "one vendor call per client request: {stats}"
    );
    eprintln!("upgrade via {front:?}: {sent} requests and 50 streams across the swap, none failed");
    Ok(())
}

#[tokio::test]
async fn sigusr2_hands_over_to_the_new_binary_with_nothing_refused_or_cut() -> Result<()> {
    upgrade_with_streams_in_flight(Front::Relay).await
}

#[tokio::test]
async fn the_same_upgrade_behind_nginx() -> Result<()> {
    upgrade_with_streams_in_flight(Front::Nginx).await
}
