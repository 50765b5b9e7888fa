//! The figures goose does not keep: a per-chunk one-way delay histogram (p50 to p99.9 and max), stream counts and
//! failure reasons, shared by every user and written as one JSON summary at the end.

use std::sync::{Mutex, OnceLock, PoisonError};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::sse::StreamStats;

struct Totals {
    delays: Histogram<u64>,
    ttfb: Histogram<u64>,
    streams: u64,
    chunks: u64,
    bytes: u64,
    non_2xx: u64,
    missing_terminal: u64,
    error_events: u64,
    transport_errors: u64,
}

/// 1 µs .. 1 h in nanoseconds, 3 significant figures.
#[expect(
    clippy::expect_used,
    reason = "constant bounds that hdrhistogram accepts"
)]
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

fn totals() -> &'static Mutex<Totals> {
    static TOTALS: OnceLock<Mutex<Totals>> = OnceLock::new();
    TOTALS.get_or_init(|| {
        Mutex::new(Totals {
            delays: histogram(),
            ttfb: histogram(),
            streams: 0,
            chunks: 0,
            bytes: 0,
            non_2xx: 0,
            missing_terminal: 0,
            error_events: 0,
            transport_errors: 0,
        })
    })
}

fn with<T>(f: impl FnOnce(&mut Totals) -> T) -> T {
    f(&mut totals().lock().unwrap_or_else(PoisonError::into_inner))
}

pub fn add_stream(s: &StreamStats) {
    with(|t| {
        t.streams += 1;
        t.chunks += s.delays_ns.len() as u64;
        t.bytes += s.bytes;
        t.missing_terminal += u64::from(!s.terminal_seen);
        t.error_events += u64::from(s.error_event);
        for d in &s.delays_ns {
            let _ = t.delays.record((*d).max(1_000));
        }
        if let Some(ttfb) = s.first_byte {
            let _ = t.ttfb.record((ttfb.as_nanos() as u64).max(1_000));
        }
    });
}

pub fn add_failure(non_2xx: bool) {
    with(|t| {
        if non_2xx {
            t.non_2xx += 1;
        } else {
            t.transport_errors += 1;
        }
    });
}

/// Milliseconds at the usual quantiles.
#[derive(Debug, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub count: u64,
}

fn quantiles(h: &Histogram<u64>) -> Quantiles {
    let ms = |ns: u64| ns as f64 / 1e6;
    Quantiles {
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p99_9: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        count: h.len(),
    }
}

/// The JSON summary of a run.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub streams: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub chunk_delay_ms: Quantiles,
    pub ttfb_ms: Quantiles,
    pub failures: Failures,
}

#[derive(Debug, Serialize)]
pub struct Failures {
    pub non_2xx: u64,
    pub transport_errors: u64,
    pub missing_terminal: u64,
    pub error_events: u64,
}

pub fn summary() -> Summary {
    with(|t| Summary {
        streams: t.streams,
        chunks: t.chunks,
        bytes: t.bytes,
        chunk_delay_ms: quantiles(&t.delays),
        ttfb_ms: quantiles(&t.ttfb),
        failures: Failures {
            non_2xx: t.non_2xx,
            transport_errors: t.transport_errors,
            missing_terminal: t.missing_terminal,
            error_events: t.error_events,
        },
    })
}
