//! Reading one SSE response to its end, timing what a user feels: response head, first byte, first complete event,
//! and each content event's one-way delay (arrival wall clock minus the mock's `ts=<unix nanos>;`).
//!
//! Events are found by the test kit's incremental splitter ([`EventReader`]); `chunk()` yields transport reads, not
//! events, so timing reads would be wrong.

use std::time::Duration;

use goose::prelude::*;
use mock_upstream::dialect::unix_nanos;
use testkit::sse::{EventReader, delay};

/// What one stream showed.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub headers: Duration,
    pub first_byte: Option<Duration>,
    pub first_event: Option<Duration>,
    pub total: Duration,
    pub events: u64,
    pub bytes: u64,
    /// One-way delay of each content event, in nanoseconds.
    pub delays_ns: Vec<u64>,
    pub terminal_seen: bool,
    pub error_event: bool,
}

/// Reads `response` to its end. `started` is when the request was sent; `terminal` the dialect's end line.
pub async fn read_stream(
    mut response: reqwest::Response,
    started: tokio::time::Instant,
    terminal: &[u8],
) -> Result<StreamStats, reqwest::Error> {
    let mut stats = StreamStats {
        headers: started.elapsed(),
        ..StreamStats::default()
    };
    let mut reader = EventReader::default();
    while let Some(chunk) = response.chunk().await? {
        let arrived = unix_nanos();
        stats.first_byte.get_or_insert_with(|| started.elapsed());
        stats.bytes += chunk.len() as u64;
        reader.feed(&chunk, |event| {
            if event.starts_with(b":") {
                return; // keep-alive comment
            }
            stats.events += 1;
            stats.first_event.get_or_insert_with(|| started.elapsed());
            if let Some(d) = delay(event, arrived) {
                stats
                    .delays_ns
                    .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            }
            stats.terminal_seen |= event.split(|b| *b == b'\n').any(|line| line == terminal);
            // Any line: a resumable answer's events start with the relay's `id:` line.
            stats.error_event |= event
                .split(|b| *b == b'\n')
                .any(|line| line == b"event: error");
        });
    }
    stats.total = started.elapsed();
    Ok(stats)
}

/// Records a stream's timings as goose custom rows (stable names) and its per-chunk delays in the histogram.
pub async fn record(user: &mut GooseUser, route: &str, stats: &StreamStats) -> TransactionResult {
    let ok = stats.terminal_seen && !stats.error_event;
    let rows = [
        ("headers", Some(stats.headers)),
        ("ttfb", stats.first_byte),
        ("first_event", stats.first_event),
        ("stream", Some(stats.total)),
    ];
    for (name, value) in rows {
        if let Some(d) = value {
            let name = format!("{route} {name}");
            user.record_custom_request_duration("SSE", &name, d, ok, Some(200), None)
                .await?;
        }
    }
    crate::summary::add_stream(stats);
    Ok(())
}
