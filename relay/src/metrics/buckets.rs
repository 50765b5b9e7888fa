//! A fixed-bucket histogram for the per-frame measurements (chunk gap, relay-added delay): two relaxed atomic adds
//! per sample on the recording thread's own shard, constant memory, no buffering. The `metrics` exporter's histograms keep every sample until the
//! next scrape or upkeep (8 bytes each, plus blocks), which at thousands of frames per second is both the largest
//! per-frame cost and memory that grows with traffic; these do not.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds in nanoseconds, the same as the exporter's `_seconds` buckets (10 µs to 15 min).
const BOUNDS_NS: [u64; 25] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    120_000_000_000,
    300_000_000_000,
    600_000_000_000,
    900_000_000_000,
];

/// Shards per series: each thread adds to its own (cache-line aligned), so the relay's worker threads never
/// contend for one line on every frame; a scrape adds the shards up.
const SHARDS: usize = 8;

/// One shard: counts per bucket (not cumulative; the last is `+Inf`) and the sum.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    counts: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

/// One histogram series.
#[derive(Debug, Default)]
pub struct Buckets {
    shards: [Shard; SHARDS],
}

/// This thread's shard.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl Buckets {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let at = BOUNDS_NS.partition_point(|b| *b < ns);
        let shard = &self.shards[shard()];
        shard.counts[at].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is `+Inf`, the total) and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = (0..=BOUNDS_NS.len())
            .map(|i| {
                total += self
                    .shards
                    .iter()
                    .map(|s| s.counts[i].load(Ordering::Relaxed))
                    .sum::<u64>();
                total
            })
            .collect();
        let sum: u64 = self
            .shards
            .iter()
            .map(|s| s.sum_ns.load(Ordering::Relaxed))
            .sum();
        (cumulative, sum as f64 / 1e9)
    }
}

/// Every fixed-bucket series, by name and route, for rendering.
type Series = BTreeMap<(&'static str, &'static str), (&'static str, Arc<Buckets>)>;

static SERIES: Mutex<Series> = Mutex::new(BTreeMap::new());

/// The series `name{route}` (the same one for every caller), described by `help`.
pub fn series(name: &'static str, help: &'static str, route: &'static str) -> Arc<Buckets> {
    let mut all = SERIES.lock().unwrap_or_else(PoisonError::into_inner);
    let (_, b) = all
        .entry((name, route))
        .or_insert_with(|| (help, Arc::new(Buckets::default())));
    b.clone()
}

/// Appends every series in the Prometheus text format.
pub fn render(out: &mut String) {
    let all = SERIES.lock().unwrap_or_else(PoisonError::into_inner);
    let mut last = "";
    for ((name, route), (help, buckets)) in all.iter() {
        if *name != last {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            last = name;
        }
        let (cumulative, sum) = buckets.snapshot();
        for (i, count) in cumulative.iter().enumerate() {
            let le = BOUNDS_NS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| (*b as f64 / 1e9).to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {count}"
            );
        }
        let total = cumulative.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {total}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_their_bucket_and_bounds_are_inclusive() {
        let b = Buckets::default();
        for us in [5, 10, 11, 3_000, 2_000_000_000] {
            b.record(Duration::from_micros(us));
        }
        let (cumulative, sum) = b.snapshot();
        assert_eq!(
            &cumulative[..2],
            &[2, 3],
            "5 and 10 µs ≤ 10 µs; 11 µs ≤ 25 µs"
        );
        assert_eq!(cumulative[8], 4, "3 ms ≤ 5 ms");
        assert_eq!(*cumulative.last().unwrap(), 5, "2000 s only in +Inf");
        assert!((sum - 2_000.003_026).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn a_series_renders_as_a_prometheus_histogram() {
        let b = series("test_render_seconds", "a test", "/r");
        b.record(Duration::from_millis(3));
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains("# TYPE test_render_seconds histogram"),
            "{out}"
        );
        assert!(
            out.contains("test_render_seconds_bucket{route=\"/r\",le=\"0.005\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("test_render_seconds_bucket{route=\"/r\",le=\"+Inf\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("test_render_seconds_count{route=\"/r\"} 1"),
            "{out}"
        );
    }
}
