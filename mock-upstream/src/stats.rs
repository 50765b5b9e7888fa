//! What the mock did: counters (`GET /stats`, `GET /stats/wait`) and a bounded record per stream
//! (`GET /streams/{trace_id}`) holding the request headers it saw and a digest of the bytes it sent.
//!
//! Tests use these to prove relay behaviour from the vendor's side: that a stream was cancelled, that the bytes a
//! client received are the bytes the vendor sent, that no client credential reached the vendor.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::watch;

/// How much of a request body a record keeps.
pub const RECORDED_BODY: usize = 16 << 10;

/// How many stream records are kept; the oldest are forgotten first.
const MAX_RECORDS: usize = 4096;

/// Counters, published through a watch channel so `GET /stats/wait` can await a condition instead of polling.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Requests received on the vendor routes (before auth and scenario checks).
    pub requests: u64,
    /// Requests whose handler was dropped before it answered (the client left during the first-byte delay).
    pub requests_abandoned: u64,
    /// Streaming bodies started.
    pub streams_started: u64,
    /// Streaming bodies that sent their last byte (terminal event, or a clean end for `x-mock-no-done`).
    pub streams_completed: u64,
    /// Streaming bodies dropped before their end because the client went away (or stopped a stalled stream).
    pub streams_cancelled: u64,
    /// Streaming bodies ended by an injected reset.
    pub streams_faulted: u64,
    /// Tokens reported in the `usage` of streams' closing events, as sent (the sum of every usage the mock
    /// reported, for accounting tests).
    pub usage_prompt_tokens: u64,
    pub usage_completion_tokens: u64,
}

impl Counters {
    /// Looks a counter up by its JSON name.
    pub fn get(&self, name: &str) -> Option<u64> {
        Some(match name {
            "requests" => self.requests,
            "requests_abandoned" => self.requests_abandoned,
            "streams_started" => self.streams_started,
            "streams_completed" => self.streams_completed,
            "streams_cancelled" => self.streams_cancelled,
            "streams_faulted" => self.streams_faulted,
            "usage_prompt_tokens" => self.usage_prompt_tokens,
            "usage_completion_tokens" => self.usage_completion_tokens,
            _ => return None,
        })
    }
}

/// How a recorded stream ended, as far as the mock knows.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Streaming,
    Completed,
    Cancelled,
    Faulted,
    /// A non-streaming answer (JSON or error) was sent.
    Answered,
}

/// One request as the vendor saw it.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub trace_id: String,
    pub path: String,
    pub status: u16,
    pub request_headers: BTreeMap<String, String>,
    /// The request body as received (its first [`RECORDED_BODY`] bytes, invalid UTF-8 replaced): what the relay
    /// sent after its policies.
    pub request_body: String,
    /// The request came over TLS (`mock-upstream --tls`).
    pub tls: bool,
    pub outcome: Outcome,
    pub bytes: u64,
    pub frames: u64,
    /// Lower-case hex SHA-256 of every body byte sent, in order.
    pub sha256: String,
}

/// Shared state behind the stats routes.
pub struct Stats {
    counters: watch::Sender<Counters>,
    records: Mutex<Records>,
}

#[derive(Default)]
struct Records {
    by_id: HashMap<String, Record>,
    order: VecDeque<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            counters: watch::Sender::new(Counters::default()),
            records: Mutex::default(),
        }
    }
}

impl Stats {
    pub fn bump(&self, f: impl FnOnce(&mut Counters)) {
        self.counters.send_modify(f);
    }

    pub fn counters(&self) -> Counters {
        *self.counters.borrow()
    }

    pub fn watch(&self) -> watch::Receiver<Counters> {
        self.counters.subscribe()
    }

    pub fn record(&self, record: Record) {
        let mut r = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if !r.by_id.contains_key(&record.trace_id) {
            r.order.push_back(record.trace_id.clone());
        }
        r.by_id.insert(record.trace_id.clone(), record);
        while r.order.len() > MAX_RECORDS {
            if let Some(old) = r.order.pop_front() {
                r.by_id.remove(&old);
            }
        }
    }

    pub fn update(&self, trace_id: &str, f: impl FnOnce(&mut Record)) {
        let mut r = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rec) = r.by_id.get_mut(trace_id) {
            f(rec);
        }
    }

    pub fn find(&self, trace_id: &str) -> Option<Record> {
        let r = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        r.by_id.get(trace_id).cloned()
    }
}
