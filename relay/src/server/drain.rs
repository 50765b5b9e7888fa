//! Draining a kept-alive connection without racing the client that reuses it.
//!
//! HTTP/1.1 gives a server no safe moment to close a kept-alive connection: a request may already be on its way.
//! nginx keeps its upstream connections alive and sends a POST on a cached one; if the relay closes it at that
//! moment, nginx answers 502 and, rightly, does not resend a POST. Measured here on a binary upgrade behind nginx:
//! closing each connection as soon as its answer ended (hyper's graceful shutdown) failed 1 to 3 of ~110 requests.
//!
//! So a draining relay closes a connection only once it has had no request in progress for [`DRAIN_LINGER`]
//! (`server::drive`), and every answer it gives while draining says `Connection: close`, after which the client
//! itself stops reusing the connection. What is left to race is a connection that a busy proxy left unused for that
//! long, which its cache order (most recently used first) makes unlikely.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// How long a draining connection must have had no request in progress before it is closed.
pub const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// Whether a connection has a request in progress, and since when it has none.
#[derive(Debug)]
pub struct Activity {
    busy: AtomicU32,
    idle_since: Mutex<Instant>,
    /// Told each time a request ends, for [`Activity::idle`] to wait on.
    ended: tokio::sync::Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            busy: AtomicU32::new(0),
            idle_since: Mutex::new(Instant::now()),
            ended: tokio::sync::Notify::new(),
        }
    }
}

impl Activity {
    /// A request started; it is in progress until the returned guard (held by its response body) is dropped.
    pub fn started(self: &Arc<Self>) -> InProgress {
        self.busy.fetch_add(1, Ordering::AcqRel);
        InProgress(self.clone())
    }

    /// How long the connection has had no request in progress; `None` while one is.
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(now.saturating_duration_since(since))
    }

    /// Resolves once the connection has had no request in progress for `linger`: it sleeps out what is left of
    /// `linger` when idle, and waits for the request in progress to end otherwise (no periodic check).
    pub async fn idle(&self, linger: Duration) {
        loop {
            match self.idle_for(Instant::now()) {
                Some(idle) if idle >= linger => return,
                Some(idle) => tokio::time::sleep(linger - idle).await,
                // `notify_one` keeps a permit when nobody waits yet: an end between the check and here is not lost.
                None => self.ended.notified().await,
            }
        }
    }
}

/// One request in progress, until dropped.
#[derive(Debug)]
pub struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        // The time first: a reader that sees no request in progress sees when the last one ended.
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_one();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in progress until hyper is done with it (dropped). Frames pass
    /// through untouched.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        _in_progress: InProgress,
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, in_progress: InProgress) -> Self {
        Self {
            inner,
            _in_progress: in_progress,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
