//! Per-request scenarios: `x-mock-*` request headers parsed into a [`Script`].
//!
//! A script is plain data (counts, delays, where to stop and how); [`crate::stream`] interprets it with one generic
//! loop, so adding a fault means adding a field here, not a code path there.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};

/// Upper bounds that keep a hostile or mistyped header from pinning the mock.
const MAX_CHUNKS: u32 = 1_000_000;
const MAX_DELAY_MS: u64 = 3_600_000;
const MAX_CHUNK_BYTES: usize = 1 << 20;

/// How a stream ends after its content chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Final chunk, optional usage, then the dialect's terminal event.
    Done,
    /// Clean end of body without the terminal event (a truncation the transport cannot see).
    NoTerminal,
    /// Abort the connection mid-body (the client sees a broken chunked body).
    Reset,
    /// Send nothing more and keep the connection open.
    Stall,
    /// The vendor's safety system ends the answer (a complete answer, as a 200): the dialect's block ending.
    Blocked,
}

/// Everything a request asked for, as data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// Non-success status to answer with (JSON error body), or `None` for a normal answer.
    pub fail_status: Option<StatusCode>,
    /// Delay before the response head is sent.
    pub first_byte_delay: Duration,
    /// Delay between the response head and the first content chunk (a slow first token).
    pub first_chunk_delay: Duration,
    /// Content chunks to emit (before `stop_after` cuts them short).
    pub chunks: u32,
    /// Gap between content chunks.
    pub interval: Duration,
    /// Approximate size in bytes of each chunk's text after the `ts=…;` prefix.
    pub chunk_bytes: usize,
    /// Split some events (and multi-byte characters) across body frames.
    pub split_frames: bool,
    /// Pause between the two halves of a split event (an upstream stalled mid-event).
    pub split_pause: Duration,
    /// Number of content chunks sent before `ending` applies (`chunks` when the ending is `Done`/`NoTerminal`).
    pub stop_after: u32,
    /// How the stream ends.
    pub ending: Ending,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            fail_status: None,
            first_byte_delay: Duration::ZERO,
            first_chunk_delay: Duration::ZERO,
            chunks: 10,
            interval: Duration::from_millis(50),
            chunk_bytes: 24,
            split_frames: true,
            split_pause: Duration::ZERO,
            stop_after: 10,
            ending: Ending::Done,
        }
    }
}

/// A header that could not be understood; answered with 400.
#[derive(Debug, PartialEq, Eq)]
pub struct ScenarioError {
    pub header: &'static str,
    pub reason: String,
}

impl Script {
    /// Builds the script for one request from its `x-mock-*` headers.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ScenarioError> {
        let mut s = Script::default();
        if let Some(n) = number(headers, "x-mock-chunks", u64::from(MAX_CHUNKS))? {
            s.chunks = u32::try_from(n).unwrap_or(MAX_CHUNKS);
        }
        if let Some(ms) = number(headers, "x-mock-interval-ms", MAX_DELAY_MS)? {
            s.interval = Duration::from_millis(ms);
        }
        if let Some(ms) = number(headers, "x-mock-first-byte-ms", MAX_DELAY_MS)? {
            s.first_byte_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = number(headers, "x-mock-first-chunk-ms", MAX_DELAY_MS)? {
            s.first_chunk_delay = Duration::from_millis(ms);
        }
        if let Some(n) = number(headers, "x-mock-chunk-bytes", MAX_CHUNK_BYTES as u64)? {
            s.chunk_bytes = usize::try_from(n).unwrap_or(MAX_CHUNK_BYTES);
        }
        if let Some(ms) = number(headers, "x-mock-split-pause-ms", MAX_DELAY_MS)? {
            s.split_pause = Duration::from_millis(ms);
        }
        if let Some(flag) = number(headers, "x-mock-split", 1)? {
            s.split_frames = flag == 1;
        }
        if let Some(code) = number(headers, "x-mock-status", 599)? {
            let status = u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| !c.is_success() && !c.is_informational())
                .ok_or_else(|| ScenarioError {
                    header: "x-mock-status",
                    reason: "must be a status code from 300 to 599".into(),
                })?;
            s.fail_status = Some(status);
        }
        s.stop_after = s.chunks;
        let endings = [
            ("x-mock-reset-after", Ending::Reset),
            ("x-mock-stall-after", Ending::Stall),
            ("x-mock-block-after", Ending::Blocked),
        ];
        for (name, ending) in endings {
            if let Some(k) = number(headers, name, u64::from(MAX_CHUNKS))? {
                s.stop_after = u32::try_from(k).unwrap_or(MAX_CHUNKS).min(s.chunks);
                s.ending = ending;
            }
        }
        if number(headers, "x-mock-no-done", 1)? == Some(1) {
            s.ending = Ending::NoTerminal;
        }
        Ok(s)
    }
}

fn number(headers: &HeaderMap, name: &'static str, max: u64) -> Result<Option<u64>, ScenarioError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let parsed = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|v| *v <= max);
    match parsed {
        Some(v) => Ok(Some(v)),
        None => Err(ScenarioError {
            header: name,
            reason: format!("must be a whole number from 0 to {max}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn defaults_without_headers() {
        assert_eq!(
            Script::from_headers(&HeaderMap::new()),
            Ok(Script::default())
        );
    }

    #[test]
    fn faults_are_data() {
        let s = Script::from_headers(&headers(&[
            ("x-mock-chunks", "8"),
            ("x-mock-stall-after", "3"),
        ]))
        .unwrap();
        assert_eq!((s.chunks, s.stop_after, s.ending), (8, 3, Ending::Stall));
        let s = Script::from_headers(&headers(&[("x-mock-reset-after", "99")])).unwrap();
        assert_eq!((s.stop_after, s.ending), (10, Ending::Reset));
        let s = Script::from_headers(&headers(&[("x-mock-status", "429")])).unwrap();
        assert_eq!(s.fail_status, Some(StatusCode::TOO_MANY_REQUESTS));
    }

    #[test]
    fn bad_values_name_the_header() {
        let err = Script::from_headers(&headers(&[("x-mock-interval-ms", "soon")])).unwrap_err();
        assert_eq!(err.header, "x-mock-interval-ms");
        let err = Script::from_headers(&headers(&[("x-mock-status", "200")])).unwrap_err();
        assert_eq!(err.header, "x-mock-status");
    }
}
