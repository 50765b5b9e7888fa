//! Resumable answers: a client that loses its connection gets the rest of the answer, with no second vendor call.
//!
//! On a route with `resume = { window_ms, max_bytes }`, an event-stream answer is not tied to the connection that
//! asked for it. A task ([`produce`]) owns the tapped vendor body and reads it into the answer's [`StreamLog`]; the
//! client's response body is a [`Follower`] of that log, which sends each event after an `id: <stream>:<seq>` line
//! of its own (a separate small frame, so the vendor's bytes go out as the same `Bytes`, unchanged). The response
//! names the stream in `x-ssegate-stream-id`.
//!
//! When the client leaves, the vendor call goes on for `window_ms`: a client that comes back within it with
//! `GET /v1/streams/{id}` (authenticated as the same tenant) and `Last-Event-ID: <id>:<seq>` (or `?after=<seq>`) gets
//! the events after that one, then follows live to the end. No client within the window → the vendor call is
//! cancelled (counted: `ssegate_resume_detached_total{end="expired"}`). An answer over `max_bytes` stops being
//! resumable: what its client has read is dropped, and its client leaving cancels it as on any other route. The
//! answer is charged once, on its real end, whoever read it; the audit line names the stream and counts its resumes.
//!
//! A front end's Stop button says `DELETE /v1/streams/{id}`: the vendor call is cancelled at once (without it, a
//! client that leaves keeps the vendor generating for the window). Unknown stream, or another tenant's: 404. Cancelled, over `max_bytes`, or kept no longer: 410. The log lives in
//! this process: a resume must reach the replica that served the answer (the Redis-backed log is the next step).

pub mod follow;
pub mod log;
pub mod produce;
pub mod publish;
pub mod shared;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

pub use log::{Follower, StreamLog};
pub use shared::{Shared, SharedFollower};

use crate::config::Resume;
use crate::tap::ErrorShape;

/// The path resumes are asked on, followed by the stream id.
pub use crate::route::STREAMS_PATH as PATH_PREFIX;
/// The response header that names a resumable answer's stream.
pub const STREAM_ID: &str = "x-ssegate-stream-id";

/// Why a resume is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("no such stream")]
    NotFound,
    #[error("this answer can no longer be resumed")]
    Gone,
    #[error("{0}")]
    BadRequest(&'static str),
    /// The answer may be on another replica, but the store did not answer.
    #[error("the store that holds answers for other replicas did not answer")]
    StoreUnavailable,
}

/// Every resumable answer this relay holds, by stream id; shared by the worker threads and kept across reloads.
/// With a store, the answers of every replica too ([`shared`]).
#[derive(Debug, Default)]
pub struct Streams {
    map: Mutex<HashMap<Arc<str>, Arc<StreamLog>>>,
    shared: Option<Arc<Shared>>,
}

/// A resumed answer's body: followed in this process, or in the store.
#[derive(Debug)]
pub enum Follow {
    Local(Follower),
    Shared(SharedFollower),
}

impl Body for Follow {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Follow::Local(f) => Pin::new(f).poll_frame(cx),
            Follow::Shared(f) => f.poll_next(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Streams {
    /// Answers kept in this process, and with `store` in it too, for the other replicas.
    pub fn new(store: Option<Arc<crate::limit::store::RedisStore>>) -> Self {
        Self {
            map: Mutex::default(),
            shared: store.map(|s| Arc::new(Shared::new(s))),
        }
    }

    /// A new answer's log, under a fresh random id (128 bits), for `route`; with a store, its copy there is kept
    /// by a task on this runtime.
    pub fn open(&self, tenant: Arc<str>, resume: Resume, route: Arc<str>) -> Arc<StreamLog> {
        let id: Arc<str> = new_stream_id().into();
        let runtime = tokio::runtime::Handle::try_current().ok();
        let outbox = self
            .shared
            .as_ref()
            .zip(runtime.as_ref())
            .map(|(s, _)| s.publishing.outbox());
        let log = Arc::new(StreamLog::new(id.clone(), tenant, resume, outbox.clone()));
        if let (Some(shared), Some(runtime), Some(outbox)) = (&self.shared, runtime, outbox) {
            publish::add(shared, log.clone(), outbox, route, &runtime);
        }
        self.lock().insert(id, log.clone());
        log
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<StreamLog>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `GET /v1/streams/{id}` by `tenant`: a follower from after the event the client names (`Last-Event-ID`, else
    /// `?after=`, else from the start), in this process or, with a store, from it. `shape_of`: a route's error
    /// shape, for the error event of an answer whose replica went away.
    pub async fn resume(
        &self,
        tenant: &str,
        (path, query): (&str, Option<&str>),
        headers: &HeaderMap,
        trace_id: Arc<str>,
        shape_of: impl Fn(&str) -> ErrorShape,
    ) -> Result<Follow, ResumeError> {
        let id = path.strip_prefix(PATH_PREFIX).unwrap_or_default();
        if !is_stream_id(id) {
            return Err(ResumeError::NotFound);
        }
        let after = after(id, query, headers)?;
        let local = self.lock().get(id).cloned();
        if let Some(log) = local {
            // Another tenant's stream is not found: its existence is not theirs to learn.
            if log.tenant() != tenant {
                return Err(ResumeError::NotFound);
            }
            return log.resume(after).map(Follow::Local).map_err(|r| match r {
                log::Refusal::Gone => ResumeError::Gone,
                log::Refusal::AfterTheEnd => {
                    ResumeError::BadRequest("the answer has no such event yet")
                }
            });
        }
        let shared = self.shared.as_ref().ok_or(ResumeError::NotFound)?;
        let meta = shared.meta_soon(id).await.map_err(|e| {
            shared.failed(&e);
            ResumeError::StoreUnavailable
        })?;
        let meta = meta
            .filter(|m| m.tenant == tenant)
            .ok_or(ResumeError::NotFound)?;
        if !matches!(meta.state.as_str(), "live" | "done") {
            return Err(ResumeError::Gone);
        }
        let shape = shape_of(&meta.route);
        let follower = shared::follower(shared.clone(), id.into(), after, shape, trace_id);
        Ok(Follow::Shared(follower))
    }

    /// `DELETE /v1/streams/{id}` by `tenant`: stops the answer (cancels the vendor call), here or, with a store, on
    /// the replica that holds it; `Gone` if it had ended.
    pub async fn stop(&self, tenant: &str, path: &str) -> Result<(), ResumeError> {
        let id = path.strip_prefix(PATH_PREFIX).unwrap_or_default();
        if !is_stream_id(id) {
            return Err(ResumeError::NotFound);
        }
        let local = self.lock().get(id).cloned();
        if let Some(log) = local {
            if log.tenant() != tenant {
                return Err(ResumeError::NotFound);
            }
            return if log.stop() {
                Ok(())
            } else {
                Err(ResumeError::Gone)
            };
        }
        let shared = self.shared.as_ref().ok_or(ResumeError::NotFound)?;
        let failed = |e: crate::limit::store::StoreError| {
            shared.failed(&e);
            ResumeError::StoreUnavailable
        };
        let meta = shared.meta_soon(id).await.map_err(failed)?;
        meta.filter(|m| m.tenant == tenant)
            .ok_or(ResumeError::NotFound)?;
        match shared.stop(id).await.map_err(failed)?.as_deref() {
            Some("live") => Ok(()),
            Some(_) => Err(ResumeError::Gone),
            None => Err(ResumeError::NotFound),
        }
    }
}

/// 32 lower-case hex digits from the system's random source.
fn new_stream_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // The OS random source failed (it does not on Linux ≥ 3.17): a v4 uuid is random too, only 6 bits shorter.
        bytes = *uuid::Uuid::new_v4().as_bytes();
    }
    hex::encode(bytes)
}

fn is_stream_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The last event the client got: `Last-Event-ID: <stream>:<seq>` (its stream must be this one), else
/// `?after=<seq>`, else 0 (from the start).
fn after(id: &str, query: Option<&str>, headers: &HeaderMap) -> Result<u64, ResumeError> {
    const BAD_ID: ResumeError =
        ResumeError::BadRequest("Last-Event-ID must be <stream id>:<event number> of this stream");
    const BAD_AFTER: ResumeError = ResumeError::BadRequest("after must be an event number");
    if let Some(v) = headers.get("last-event-id") {
        let v = v.to_str().map_err(|_| BAD_ID)?.trim();
        let (stream, seq) = v.split_once(':').ok_or(BAD_ID)?;
        if stream != id {
            return Err(BAD_ID);
        }
        return seq.parse().map_err(|_| BAD_ID);
    }
    let Some(query) = query else {
        return Ok(0);
    };
    for pair in query.split('&') {
        if let Some(seq) = pair.strip_prefix("after=") {
            return seq.parse().map_err(|_| BAD_AFTER);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests;
