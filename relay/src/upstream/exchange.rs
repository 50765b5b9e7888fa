//! One request and its response on a vendor connection, driven by whoever polls it: the call's future until the
//! head, then the response body ([`VendorBody`]) that the tap wraps and the client connection polls. No task of its
//! own, no channel: a vendor frame is read, parsed ([`super::h1`]) and handed to the tap in the poll that wants it.
//!
//! Buffers: one read buffer per connection, allocated [`READ_SIZE`] at a time when a read is due and let go when
//! the connection has nothing buffered and would block (an idle stream holds none). Body data is a slice of it.
//! A read happens only when the body is polled for more, so a client that stops reading stops the vendor reads too.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use super::connect::VendorStream;
use super::h1::{self, Decoder, Head, ParseError, Step};
use super::pool::Pool;
use crate::outcome::{Failure, ReadFailure};

/// What one read asks the kernel (or TLS) for.
pub const READ_SIZE: usize = 8 << 10;

/// A vendor connection and what was read from it but not parsed yet.
pub struct Conn {
    io: VendorStream,
    buf: BytesMut,
}

/// Why the vendor's response (head or body) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("upstream connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("upstream response unreadable: {0}")]
    Parse(#[source] ParseError),
}

impl Conn {
    pub fn new(io: VendorStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry a request: nothing is readable (no close, no stray bytes, no error).
    /// Checked without waiting, before reuse, so that a connection the vendor closed while idle is never used.
    pub fn is_open_and_quiet(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Writes the request (head and body, gathered into one write when the socket takes it) and flushes it.
    pub async fn send(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let (mut head, mut body) = (head, body);
        while !head.is_empty() || !body.is_empty() {
            let parts = [io::IoSlice::new(head), io::IoSlice::new(body)];
            let n = self.io.write_vectored(&parts).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = &body[n - from_head..];
        }
        self.io.flush().await
    }

    /// Reads until a whole response head is parsed.
    pub async fn read_head(&mut self) -> Result<Head, ReadError> {
        loop {
            if let Some(head) = h1::parse_head(&mut self.buf).map_err(ReadError::Parse)? {
                return Ok(head);
            }
            let n = std::future::poll_fn(|cx| self.poll_fill(cx))
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Parse(ParseError::EofInHead));
            }
        }
    }

    /// One read into the buffer: into its spare room, or into a fresh [`READ_SIZE`] allocation when it has none
    /// (the previous one stays alive only as long as the frames cut from it).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == self.buf.len() {
            if self.buf.is_empty() {
                self.buf = BytesMut::with_capacity(READ_SIZE);
            } else {
                self.buf.reserve(READ_SIZE);
            }
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Builds the response the rest of the relay sees: the head, and the body that reads the rest from `conn`.
pub fn response(conn: Conn, head: Head, home: Option<Arc<Pool>>) -> Response<VendorBody> {
    let body = VendorBody {
        decoder: Decoder::new(head.framing),
        keep_alive: head.keep_alive,
        conn: Some(conn),
        home,
    };
    let mut res = Response::new(body);
    *res.status_mut() = head.status;
    *res.headers_mut() = head.headers;
    res
}

/// The vendor's response body, read off its connection as it is polled. Dropping it before its end closes the
/// connection (the vendor sees the close and stops generating); read to its end, a keep-alive connection goes back
/// to its pool.
pub struct VendorBody {
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
    home: Option<Arc<Pool>>,
}

impl ReadFailure for ReadError {
    fn failure(&self) -> Failure {
        match self {
            ReadError::Io(_)
            | ReadError::Parse(ParseError::EofInLength | ParseError::EofInChunked) => {
                Failure::UpstreamReset
            }
            ReadError::Parse(_) => Failure::UpstreamProtocol,
        }
    }
}

impl VendorBody {
    fn finished(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Bytes after the end of the body are not an answer to anything: that connection is not reused.
        let reusable = self.keep_alive && conn.buf.is_empty();
        tracing::trace!(pooled = reusable, "vendor body read to its end");
        if reusable {
            if let Some(pool) = &self.home {
                pool.put(conn);
            }
        }
    }
}

impl Body for VendorBody {
    type Data = Bytes;
    type Error = ReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReadError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let failed = match this.decoder.decode(&mut conn.buf) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::Done) => {
                    this.finished();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => match conn.poll_fill(cx) {
                    Poll::Pending => {
                        if conn.buf.is_empty() {
                            // Idle: hold no read buffer while waiting.
                            conn.buf = BytesMut::new();
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(0)) => match this.decoder.eof() {
                        Ok(()) => {
                            this.conn = None;
                            return Poll::Ready(None);
                        }
                        Err(e) => ReadError::Parse(e),
                    },
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => ReadError::Io(e),
                },
                Err(e) => ReadError::Parse(e),
            };
            this.conn = None;
            return Poll::Ready(Some(Err(failed)));
        }
    }

    /// Ended once the connection was let go (pooled, closed or failed), so a caller that trusts this never drops
    /// a connection that could have gone back to the pool.
    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
