//! How much of the response being written has reached the client's socket, in the response's own body bytes.
//!
//! When a connection is cut mid-answer the audit line must say what the client got, not what the relay handed to
//! hyper: hyper's write buffer may still hold frames, and they are lost with the connection. [`SentBody`] follows the
//! bytes the socket accepted (the IO wrapper feeds it exactly the accepted prefix of each write) through HTTP/1.1
//! response framing, the way a client would read them: the head (with `httparse`), then a `Content-Length` body, a
//! chunked body (size lines, data, CRLFs, the last chunk and trailers) or a body delimited by the connection's close.
//! It counts the current response's body bytes. Data bytes are skipped by length, never looked at, so the cost is a
//! few branches per write and one head parse per response.
//!
//! What reached the socket is what the client gets unless it never reads again: a closed connection's queued bytes
//! are still sent by the kernel (at most `TCP_NOTSENT_LOWAT` of them unsent, [`super::NOTSENT_LOWAT`]).
//!
//! A response whose framing the follower cannot know from its head (the answer to a `HEAD` request keeps its
//! `Content-Length` but has no body) makes it lose track for the rest of the connection: it then says so (`None`)
//! and the record keeps the bytes handed to hyper.

/// The longest response head followed across writes (hyper writes a head in one piece; this only bounds a copy).
const MAX_HEAD: usize = 64 << 10;
const MAX_HEADERS: usize = 128;

#[derive(Debug, Default)]
pub struct SentBody {
    state: State,
    /// A head that arrived split across writes.
    head: Vec<u8>,
    /// Body bytes of the current response that the socket accepted.
    body: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between responses, or in a head.
    #[default]
    Head,
    Length(u64),
    Chunked(Chunk),
    /// Everything until the connection closes is body.
    UntilClose,
    /// The framing is unknown from here on.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line: the size so far, and whether an extension (`;…`) started.
    Size {
        size: u64,
        ext: bool,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line of this many bytes so far (0: the blank line that ends the body).
    Trailer {
        len: u64,
        cr: bool,
    },
}

impl SentBody {
    /// Body bytes of the current response that reached the socket: 0 before its head did, `None` when lost track.
    pub fn body_bytes(&self) -> Option<u64> {
        (self.state != State::Lost).then_some(self.body)
    }

    /// The socket accepted `bytes`, in order.
    pub fn sent(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = match self.state {
                State::Head => self.head(bytes),
                State::Length(left) => {
                    let n = left.min(bytes.len() as u64);
                    self.body += n;
                    if n == left {
                        // The response is complete: what a cut loses from here on is the next one's.
                        self.body = 0;
                        self.state = State::Head;
                    } else {
                        self.state = State::Length(left - n);
                    }
                    n as usize
                }
                State::Chunked(chunk) => self.chunked(chunk, bytes),
                State::UntilClose => {
                    self.body += bytes.len() as u64;
                    bytes.len()
                }
                State::Lost => return,
            };
            bytes = &bytes[used..];
        }
    }

    /// Feeds the accepted prefix (`n` bytes) of a vectored write.
    pub fn sent_vectored(&mut self, bufs: &[std::io::IoSlice<'_>], mut n: usize) {
        for buf in bufs {
            if n == 0 {
                return;
            }
            let take = n.min(buf.len());
            self.sent(&buf[..take]);
            n -= take;
        }
    }

    /// Parses a head from `bytes` (after any part kept from earlier writes); returns how many bytes it used.
    fn head(&mut self, bytes: &[u8]) -> usize {
        let kept = self.head.len();
        let parsed = if kept == 0 {
            parse_head(bytes)
        } else {
            let more = bytes.len().min(MAX_HEAD - kept);
            self.head.extend_from_slice(&bytes[..more]);
            parse_head(&self.head)
        };
        match parsed {
            Ok(Some((len, framing))) => {
                self.head = Vec::new();
                self.body = 0;
                self.state = framing;
                len - kept
            }
            Ok(None) if kept + bytes.len() < MAX_HEAD => {
                if kept == 0 {
                    self.head.extend_from_slice(bytes);
                }
                bytes.len()
            }
            Ok(None) | Err(()) => {
                self.head = Vec::new();
                self.state = State::Lost;
                bytes.len()
            }
        }
    }

    /// One step through a chunked body; returns how many bytes it used.
    fn chunked(&mut self, chunk: Chunk, bytes: &[u8]) -> usize {
        let b = bytes[0];
        let next = match chunk {
            Chunk::Data(left) => {
                let n = left.min(bytes.len() as u64);
                self.body += n;
                self.state = State::Chunked(if n == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - n)
                });
                return n as usize;
            }
            Chunk::Size { size, ext: false } if b.is_ascii_hexdigit() => {
                let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                match size.checked_mul(16) {
                    Some(s) => State::Chunked(Chunk::Size {
                        size: s + digit,
                        ext: false,
                    }),
                    None => State::Lost,
                }
            }
            Chunk::Size { size, .. } if b == b'\r' => State::Chunked(Chunk::SizeLf { size }),
            Chunk::Size { size, .. } if b == b';' || b == b' ' || b == b'\t' => {
                State::Chunked(Chunk::Size { size, ext: true })
            }
            Chunk::Size { size, ext: true } if b != b'\n' => {
                State::Chunked(Chunk::Size { size, ext: true })
            }
            Chunk::SizeLf { size: 0 } if b == b'\n' => {
                State::Chunked(Chunk::Trailer { len: 0, cr: false })
            }
            Chunk::SizeLf { size } if b == b'\n' => State::Chunked(Chunk::Data(size)),
            Chunk::DataCr if b == b'\r' => State::Chunked(Chunk::DataLf),
            Chunk::DataLf if b == b'\n' => State::Chunked(Chunk::Size {
                size: 0,
                ext: false,
            }),
            Chunk::Trailer { len, .. } if b == b'\r' => {
                State::Chunked(Chunk::Trailer { len, cr: true })
            }
            // The blank line after the last chunk (and its trailers): the response is complete.
            Chunk::Trailer { len: 0, cr: true } if b == b'\n' => {
                self.body = 0;
                State::Head
            }
            Chunk::Trailer { cr: true, .. } if b == b'\n' => {
                State::Chunked(Chunk::Trailer { len: 0, cr: false })
            }
            Chunk::Trailer { len, cr: false } => State::Chunked(Chunk::Trailer {
                len: len + 1,
                cr: false,
            }),
            _ => State::Lost,
        };
        self.state = next;
        1
    }
}

/// A complete head's length and the framing of the body after it; `None` while incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<(usize, State)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let code = res.code.unwrap_or(0);
    // 1xx heads precede the final one; 204 and 304 never have a body.
    if (100..200).contains(&code) || code == 204 || code == 304 {
        return Ok(Some((len, State::Head)));
    }
    let mut framing = State::UntilClose;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Err(());
            }
            framing = State::Chunked(Chunk::Size {
                size: 0,
                ext: false,
            });
        } else if h.name.eq_ignore_ascii_case("content-length") && framing == State::UntilClose {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(())?;
            framing = if n == 0 {
                State::Head
            } else {
                State::Length(n)
            };
        }
    }
    Ok(Some((len, framing)))
}

#[cfg(test)]
mod tests;
