//! Where log and audit lines go: stderr, through a bounded queue written by a thread of its own, so that a log
//! reader that stops reading (a stuck log shipper, a full journald buffer, a pipe nobody drains) can never stall a
//! stream.
//!
//! Before, each line was written to stderr on the runtime thread that logged it: with the pipe full, every
//! `write` blocked its thread, and with two worker threads every stream and every new request hung after a few
//! dozen lines. Now the formatted line is handed to `tracing-appender`'s non-blocking writer (a bounded channel of
//! `log_queue_lines` lines and one writer thread, `ssegate-log`). When the queue is full the line is **dropped**,
//! never waited for: counted in `ssegate_log_lines_dropped_total`, and reported by a warning line (at most every
//! [`REPORT_EVERY`]) once lines flow again. At exit the queue is flushed, bounded (the writer gets about a second;
//! a reader that never reads cannot hold the exit).
//!
//! Memory: at most `log_queue_lines` formatted lines; the longest is an audit line, about `audit.max_text_bytes`
//! plus 1 KiB (docs/observability.md, "Logs").

use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

use crate::config::{LogFormat, OtelConfig};
use crate::otel::{OtelError, Traces};

/// At most one warning about dropped lines per this long.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The dropped-lines counter of the installed writer (none before [`init`], or in tests that log nowhere).
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines dropped because the queue was full, since start.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// The installed logging: keep it until exit, then [`Logging::finish`] it.
pub struct Logging {
    traces: Option<Traces>,
    writer: Option<WorkerGuard>,
}

impl Logging {
    /// Exports the last spans and flushes the queued lines (each bounded in time).
    pub async fn finish(self) {
        crate::otel::finish(self.traces).await;
        if dropped_lines() > 0 {
            tracing::warn!(
                dropped = dropped_lines(),
                "log lines were dropped while the log reader was not reading"
            );
        }
        if let Some(writer) = self.writer {
            // Dropping the guard waits (about a second at most) for the writer thread to write the queue out.
            let _ = tokio::task::spawn_blocking(move || drop(writer)).await;
        }
    }
}

/// Installs the global subscriber: log lines to stderr through the bounded queue (`RUST_LOG` filters, default
/// `info`) and, when `otel` names a collector, the trace layer ([`crate::otel`]), which `RUST_LOG` does not filter.
pub fn init(
    format: LogFormat,
    queue_lines: usize,
    otel: Option<&OtelConfig>,
) -> Result<Logging, OtelError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(queue_lines)
        .thread_name("ssegate-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let logs = fmt::layer().with_writer(writer);
    let logs = match format {
        LogFormat::Json => logs.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => logs
            .with_ansi(false)
            .fmt_fields(crate::logfields::TextFields)
            .with_filter(filter)
            .boxed(),
    };
    let traces = otel.map(Traces::start).transpose()?;
    let layer = traces.as_ref().map(Traces::layer);
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(layer)
        .try_init();
    crate::trace::set_exporting(installed.is_ok() && traces.is_some());
    let writer = if installed.is_ok() {
        let _ = DROPPED.set(dropped);
        crate::metrics::count_log_drops(dropped_lines);
        Some(guard)
    } else {
        None
    };
    Ok(Logging { traces, writer })
}

/// Reports dropped lines until `done`: a warning when the count grew since the last one, at most every
/// [`REPORT_EVERY`]. The warning itself goes through the queue: it is written once the reader reads again (or
/// dropped and counted while it does not).
pub async fn report_drops(done: CancellationToken) {
    let mut reported = dropped_lines();
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            () = tokio::time::sleep(REPORT_EVERY) => {}
        }
        let now = dropped_lines();
        if now > reported {
            tracing::warn!(
                dropped = now - reported,
                total = now,
                "log lines dropped: the log reader is not keeping up (ssegate_log_lines_dropped_total)"
            );
            reported = now;
        }
    }
}
