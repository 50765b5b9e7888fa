//! The one interpreter of a [`Script`]: turns it into a body stream of timed, timestamped frames.
//!
//! Every frame goes through `Emission::sent`, which feeds the stream's digest, so `GET /streams/{id}` can prove
//! what was sent. Dropping the stream before its end (the client went away) counts as a cancellation.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};

use crate::dialect::{Dialect, chunk_text};
use crate::scenario::{Ending, Script};
use crate::stats::{Outcome, Stats};

/// One streaming answer in progress.
pub struct Emission {
    dialect: Dialect,
    script: Script,
    trace_id: String,
    stats: Arc<Stats>,
    next_chunk: u32,
    closed: bool,
    pending: VecDeque<Bytes>,
    digest: Sha256,
    bytes: u64,
    frames: u64,
    outcome: Option<Outcome>,
}

impl Emission {
    pub fn new(dialect: Dialect, script: Script, trace_id: String, stats: Arc<Stats>) -> Self {
        stats.bump(|c| c.streams_started += 1);
        Self {
            dialect,
            script,
            trace_id,
            stats,
            next_chunk: 0,
            closed: false,
            pending: VecDeque::new(),
            digest: Sha256::new(),
            bytes: 0,
            frames: 0,
            outcome: None,
        }
    }

    /// The body: frames as the script dictates, then end, error (reset) or silence (stall).
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(self, |mut e| async move {
            let item = e.next_frame().await?;
            Some((item, e))
        })
    }

    async fn next_frame(&mut self) -> Option<io::Result<Bytes>> {
        if let Some(rest) = self.pending.pop_front() {
            // Return Pending at least once so hyper flushes the first half on its own before this one.
            if self.script.split_pause.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(self.script.split_pause).await;
            }
            return Some(Ok(self.sent(rest)));
        }
        if self.next_chunk < self.script.stop_after {
            let wait = if self.next_chunk == 0 {
                self.script.first_chunk_delay
            } else {
                self.script.interval
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let index = self.next_chunk;
            self.next_chunk += 1;
            let text = chunk_text(index, self.script.chunk_bytes);
            let event = Bytes::from(self.dialect.content_event(&self.trace_id, index, &text));
            // Odd chunks are cut inside their first multi-byte character: one event, two frames.
            if self.script.split_frames && index % 2 == 1 {
                let at = split_point(&event);
                self.pending.push_back(event.slice(at..));
                return Some(Ok(self.sent(event.slice(..at))));
            }
            return Some(Ok(self.sent(event)));
        }
        if self.closed {
            self.finish(Outcome::Completed);
            return None;
        }
        self.closed = true;
        match self.script.ending {
            Ending::Done => {
                if self.script.stop_after > 0 {
                    tokio::time::sleep(self.script.interval).await;
                }
                let chunks = self.script.stop_after;
                let closing = self.dialect.closing_events(&self.trace_id, chunks);
                if self.dialect.reports_usage() {
                    self.stats.bump(|c| {
                        c.usage_prompt_tokens += 9;
                        c.usage_completion_tokens += u64::from(chunks);
                    });
                }
                Some(Ok(self.sent(Bytes::from(closing))))
            }
            Ending::NoTerminal => {
                self.finish(Outcome::Completed);
                None
            }
            Ending::Reset => {
                // Fail when the next chunk is due, so the chunks before it are flushed first.
                tokio::time::sleep(self.script.interval).await;
                self.finish(Outcome::Faulted);
                Some(Err(io::Error::other("injected reset (x-mock-reset-after)")))
            }
            Ending::Stall => std::future::pending().await,
            Ending::Blocked => {
                let chunks = self.script.stop_after;
                let closing = self.dialect.blocked_events(&self.trace_id, chunks);
                Some(Ok(self.sent(Bytes::from(closing))))
            }
        }
    }

    fn sent(&mut self, frame: Bytes) -> Bytes {
        self.digest.update(&frame);
        self.bytes += frame.len() as u64;
        self.frames += 1;
        frame
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.outcome.is_some() {
            return;
        }
        self.outcome = Some(outcome);
        self.stats.bump(|c| match outcome {
            Outcome::Completed => c.streams_completed += 1,
            Outcome::Faulted => c.streams_faulted += 1,
            _ => c.streams_cancelled += 1,
        });
        let digest = hex::encode(self.digest.clone().finalize());
        let (bytes, frames) = (self.bytes, self.frames);
        self.stats.update(&self.trace_id, |r| {
            r.outcome = outcome;
            r.bytes = bytes;
            r.frames = frames;
            r.sha256 = digest;
        });
    }
}

impl Drop for Emission {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

/// Just after the lead byte of the first multi-byte character, or the middle when there is none.
fn split_point(event: &[u8]) -> usize {
    event
        .iter()
        .position(|b| *b >= 0xC0)
        .map_or(event.len() / 2, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_lands_inside_a_character() {
        let event = "data: ts=1;你好\n\n".as_bytes();
        let at = split_point(event);
        assert!(
            std::str::from_utf8(&event[..at]).is_err(),
            "first half must end mid-character"
        );
    }
}
