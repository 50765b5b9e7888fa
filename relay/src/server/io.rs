//! A write-only timeout on an accepted socket, and what each response's end became.
//!
//! hyper has no downstream write timeout (hyperium/hyper#3121), and a read timeout would kill healthy streams (the
//! client sends nothing after its request). [`WriteTimeout`] starts a timer when a write cannot make progress
//! (`Pending`) and clears it on the next successful write; if the client accepts nothing for the whole timeout the
//! write fails with `TimedOut`. hyper then closes the connection and drops the response body, which cancels the
//! upstream ([`crate::tap`]). [`ConnState`] remembers why, for the audit line.
//!
//! It also settles what happened to a response's tail ([`ConnState::when_written`]): the vendor's body can end while
//! its last bytes still sit in hyper's write buffer; the first completed flush after that means they reached the
//! client's socket ([`Delivery::Written`]); a write timeout, a write error or the connection's end before such a
//! flush means the client did not get them, and `server/sent.rs` (`SentBody`) says how much of the body it did get.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::sent::SentBody;
use crate::flushed::Flushed;

/// What became of the bytes a response body had handed to the connection when it ended.
///
/// `Some(n)` in a cut: the client's socket accepted `n` body bytes of the response (`None`: not known, see
/// `SentBody`). Accepted bytes still reach a client that goes on reading after the close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// All written to the client's socket (the terminating chunk included).
    Written,
    /// The connection was cut by the write timeout before they were.
    TimedOut(Option<u64>),
    /// The connection failed or closed before they were.
    Lost(Option<u64>),
}

type Settle = Box<dyn FnOnce(Delivery) + Send>;

/// What one connection's IO knows that its requests' bodies want to report.
#[derive(Default)]
pub struct ConnState {
    write_timed_out: AtomicBool,
    flushed: Arc<Flushed>,
    tail: Mutex<Tail>,
    /// Whether `tail` holds a callback: every flush checks this, and only a response's end takes the lock.
    has_pending: AtomicBool,
}

#[derive(Default)]
struct Tail {
    /// Called once the ended response's tail is written, or lost.
    pending: Option<Settle>,
    /// The connection is cut or gone: how, and what the client got of the response it was writing.
    gone: Option<Delivery>,
}

impl std::fmt::Debug for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnState")
            .field("write_timed_out", &self.write_timed_out())
            .finish_non_exhaustive()
    }
}

impl ConnState {
    /// Calls `settle` once what the connection has buffered (the ended response's tail) is written to the socket,
    /// or when it cannot be any more. Called by a response body as it ends, before hyper flushes its tail.
    /// A connection already cut (hyper drops the connection's IO before the response body) settles at once.
    pub fn when_written(&self, settle: impl FnOnce(Delivery) + Send + 'static) {
        let mut tail = self.lock();
        if let Some(gone) = tail.gone {
            drop(tail);
            return settle(gone);
        }
        let previous = tail.pending.replace(Box::new(settle));
        self.has_pending.store(true, Ordering::Release);
        drop(tail);
        // One response at a time per HTTP/1.1 connection: a previous one was settled by the flush after it.
        if let Some(previous) = previous {
            previous(Delivery::Written);
        }
    }

    /// Everything buffered was written.
    fn written(&self) {
        if !self.has_pending.swap(false, Ordering::Acquire) {
            return;
        }
        let pending = self.lock().pending.take();
        if let Some(settle) = pending {
            settle(Delivery::Written);
        }
    }

    /// The connection is cut or gone (the first call counts).
    fn gone(&self, how: Delivery) {
        let mut tail = self.lock();
        if tail.gone.is_some() {
            return;
        }
        tail.gone = Some(how);
        self.has_pending.store(false, Ordering::Release);
        let pending = tail.pending.take();
        drop(tail);
        if let Some(settle) = pending {
            settle(how);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write_timed_out(&self) -> bool {
        self.write_timed_out.load(Ordering::Relaxed)
    }

    /// When the connection last wrote out everything it had buffered.
    pub fn flushed(&self) -> Arc<Flushed> {
        self.flushed.clone()
    }
}

/// The most handed to the kernel in one write. `TCP_NOTSENT_LOWAT` ([`super::NOTSENT_LOWAT`]) decides when a write
/// may start, not how much it may add, and Linux wakes a blocked writer only once the unsent bytes fall below half
/// the mark: a large write accepted just under the mark had to drain almost entirely, through the client's
/// (coarse) window updates, before the next write could succeed.
const MAX_WRITE: usize = super::NOTSENT_LOWAT as usize;
/// `MSG_EOR` on every write: the kernel then starts a new buffer for each write instead of appending to the last
/// one, and only a new buffer is subject to `TCP_NOTSENT_LOWAT`; without it a write could add up to a whole 64 KiB
/// segment beyond the mark. With both, unsent bytes stay under twice the mark (11 to 21 KB seen with `ss` for a
/// slow reader, against 55 KB and more before), so the time between successful writes is the time between the
/// client's window updates: a client that keeps its window shut for the whole timeout has taken nothing at the TCP
/// level and is cut (a 32 KiB/s reader with a 128 KiB receive buffer left it shut 3.2 s at a time: cut under a 3 s
/// timeout, as it should be), a 64 KiB/s reader never is.
#[cfg(any(target_os = "linux", target_os = "android"))]
const EOR: libc::c_int = libc::MSG_EOR;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const EOR: libc::c_int = 0;

/// Slices passed on per vectored write (hyper queues at most 16 frames, each two or three slices).
const MAX_SLICES: usize = 64;

/// The first `MAX_WRITE` bytes of `bufs`, as slices in `out`.
fn cap<'a>(
    bufs: &'a [io::IoSlice<'a>],
    out: &'a mut [io::IoSlice<'a>; MAX_SLICES],
) -> &'a [io::IoSlice<'a>] {
    let (mut total, mut n) = (0, 0);
    for buf in bufs.iter().take(MAX_SLICES) {
        if total == MAX_WRITE {
            break;
        }
        let take = buf.len().min(MAX_WRITE - total);
        out[n] = io::IoSlice::new(&buf[..take]);
        total += take;
        n += 1;
    }
    &out[..n]
}

/// `T` with a write-progress timeout.
pub struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Armed while a write is blocked.
    stalled: Option<Pin<Box<Sleep>>>,
    state: Arc<ConnState>,
    /// Bytes were written since the last completed flush.
    wrote: bool,
    /// How much of the current response's body the socket accepted.
    sent: SentBody,
}

impl<T> WriteTimeout<T> {
    pub fn new(inner: T, timeout: Duration, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
            state,
            wrote: false,
            sent: SentBody::default(),
        }
    }

    /// After a `Pending` write: fail once the client has accepted nothing for the whole timeout.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        self.state.write_timed_out.store(true, Ordering::Relaxed);
        self.state.gone(Delivery::TimedOut(self.sent.body_bytes()));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "client accepted no data within the write timeout",
        ))
    }

    fn progressed<R>(&mut self, r: R) -> Poll<R> {
        self.stalled = None;
        Poll::Ready(r)
    }

    fn written(&mut self, r: io::Result<usize>) -> Poll<io::Result<usize>> {
        self.wrote |= matches!(r, Ok(n) if n > 0);
        if r.is_err() {
            self.state.gone(Delivery::Lost(self.sent.body_bytes()));
        }
        self.progressed(r)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl WriteTimeout<TcpStream> {
    /// One write of at most `MAX_WRITE` bytes, each its own record (`MSG_EOR`, see [`EOR`]); `Pending` until the
    /// socket takes some.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // An SSE frame is far below the cap: pass hyper's slices on as they are, and only cut a large write.
        let within =
            bufs.len() <= MAX_SLICES && bufs.iter().map(|b| b.len()).sum::<usize>() <= MAX_WRITE;
        let mut capped;
        let bufs = if within {
            bufs
        } else {
            capped = [io::IoSlice::new(&[]); MAX_SLICES];
            cap(bufs, &mut capped)
        };
        loop {
            match self.inner.poll_write_ready(cx) {
                Poll::Pending => return self.blocked(cx).map(Err),
                Poll::Ready(Err(e)) => return self.written(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let sock = socket2::SockRef::from(&self.inner);
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                sock.send_vectored_with_flags(bufs, EOR)
            });
            match sent {
                Ok(n) => {
                    self.sent.sent_vectored(bufs, n);
                    return self.written(Ok(n));
                }
                // Readiness was stale (`try_io` cleared it): wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return self.written(Err(e)),
            }
        }
    }
}

impl AsyncWrite for WriteTimeout<TcpStream> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                // hyper flushes the IO only once its write buffer is empty: every queued frame is now written.
                if r.is_ok() && std::mem::take(&mut self.wrote) {
                    self.state.flushed.mark(tokio::time::Instant::now());
                }
                if r.is_ok() {
                    self.state.written();
                } else {
                    self.state.gone(Delivery::Lost(self.sent.body_bytes()));
                }
                self.progressed(r)
            }
            Poll::Pending => self.blocked(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T> Drop for WriteTimeout<T> {
    fn drop(&mut self) {
        // The connection is gone: a tail not flushed by now never will be.
        self.state.gone(Delivery::Lost(self.sent.body_bytes()));
    }
}
