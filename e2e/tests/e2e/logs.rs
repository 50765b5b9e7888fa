//! Logging that can never stall a stream: the relay's stderr is a pipe that nobody reads (a log shipper that got
//! stuck). Once the pipe's 64 KiB are full, writing a line would block; the relay must drop lines instead, count
//! them, and keep streaming. Before the bounded writer, 34 streams completed and then every stream hung.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures_util::future::join_all;
use testkit::proc::{Stderr, start_relay_logging};

use crate::admin::sample;
use crate::support::*;

const STREAMS: usize = 100;
const AT_ONCE: usize = 10;

#[tokio::test]
async fn a_log_reader_that_never_reads_stalls_no_stream() -> Result<()> {
    let mock = start_mock().await?;
    // A short queue so that the test fills it quickly; long audit lines (the answer's text) fill the pipe.
    let top = "workers = 2\nlog_queue_lines = 16\n[audit]\nmax_text_bytes = 8192";
    let config = mock_upstream::relay_config(&mock_upstream::RelayToml {
        https: false,
        mock: mock.addr,
        top,
        tenant: "e2e",
        client_key: CLIENT_KEY,
        secret_env: "SSEGATE_E2E_VENDOR_KEY",
        route: "",
    });
    let env = [("SSEGATE_E2E_VENDOR_KEY", VENDOR_KEY)];
    let relay = start_relay_logging(&config, &env, "info", Stderr::Unread).await?;
    let base = relay.url("");
    let scenario = [
        ("x-mock-chunks", "10"),
        ("x-mock-interval-ms", "20"),
        ("x-mock-chunk-bytes", "200"),
    ];
    let all = async {
        let mut got = Vec::new();
        for _ in 0..STREAMS / AT_ONCE {
            let batch = (0..AT_ONCE).map(|_| receive(chat(&base, CLIENT_KEY, &scenario)));
            got.extend(join_all(batch).await);
        }
        got
    };
    // Each stream takes about 200 ms: ten rounds in a few seconds. A stalled relay never finishes.
    let got = tokio::time::timeout(Duration::from_secs(90), all)
        .await
        .context("the streams hung: a blocked log write stalls the relay")?;
    let mut delays = Vec::new();
    for (i, g) in got.into_iter().enumerate() {
        let g = g.with_context(|| format!("stream {i}"))?;
        let text = String::from_utf8(g.bytes)?;
        ensure!(
            text.ends_with("data: [DONE]\n\n") && !text.contains("event: error"),
            "stream {i} is not complete: {text}"
        );
        ensure!(
            g.delays.len() == 10,
            "stream {i}: {} chunks",
            g.delays.len()
        );
        delays.extend(g.delays);
    }
    delays.sort();
    let (p50, max) = (delays[delays.len() / 2], delays[delays.len() - 1]);
    eprintln!("per-chunk delay with an unread log pipe: p50 {p50:?}, max {max:?}");
    // Loopback takes well under a millisecond; a stalled writer would add seconds. Generous for a loaded CI box.
    assert!(p50 < Duration::from_millis(50), "p50 {p50:?}");
    assert!(max < Duration::from_secs(1), "max {max:?}");

    // The vendor saw every stream complete, none cancelled.
    let stats = mock_stats(&mock).await?;
    assert_eq!(stats["streams_completed"], STREAMS as u64, "{stats}");
    assert_eq!(stats["streams_cancelled"], 0, "{stats}");
    // The admin listener answers, and says lines were dropped; the streams themselves were all counted complete.
    let metrics = relay.metrics().await?;
    let dropped = sample(&metrics, "ssegate_log_lines_dropped_total", &[]).unwrap_or(0.0);
    assert!(dropped > 0.0, "no dropped lines counted:\n{metrics}");
    let complete = sample(
        &metrics,
        "ssegate_stream_outcomes_total",
        &["route=\"/v1/chat/completions\"", "outcome=\"complete\""],
    );
    assert_eq!(complete, Some(STREAMS as f64));
    eprintln!("log lines dropped: {dropped}");
    Ok(())
}
