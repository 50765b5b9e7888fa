//! Reading one SSE response to its end, timing what a user feels: response head, first byte, first complete event,
//! and each content event's one-way delay (arrival wall clock minus the mock's `ts=<unix nanos>;`).
//!
//! Events are found with a small incremental splitter over the bytes received so far (a copy is fine here: this is
//! the client, not the relay); `chunk()` yields transport reads, not events, so timing reads would be wrong.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use goose::prelude::*;

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

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `ts=<nanos>;` stamp in an event, if any.
fn event_ts(event: &[u8]) -> Option<u128> {
    let at = find(event, b"ts=")? + 3;
    let end = event[at..].iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&event[at..at + end]).ok()?.parse().ok()
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
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let arrived = unix_nanos();
        stats.first_byte.get_or_insert_with(|| started.elapsed());
        stats.bytes += chunk.len() as u64;
        pending.extend_from_slice(&chunk);
        let mut consumed = 0;
        while let Some(end) = find(&pending[consumed..], b"\n\n") {
            let event = &pending[consumed..consumed + end];
            consumed += end + 2;
            if event.starts_with(b":") {
                continue; // keep-alive comment
            }
            stats.events += 1;
            stats.first_event.get_or_insert_with(|| started.elapsed());
            if let Some(ts) = event_ts(event) {
                stats
                    .delays_ns
                    .push(u64::try_from(arrived.saturating_sub(ts)).unwrap_or(u64::MAX));
            }
            stats.terminal_seen |= event.split(|b| *b == b'\n').any(|line| line == terminal);
            stats.error_event |= event.starts_with(b"event: error");
        }
        pending.drain(..consumed);
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
