//! The vendor's HTTP/1.1 response, parsed without IO: the head (status line and headers, with `httparse`) and the
//! body's framing (RFC 9112 §6.3: no body, `Content-Length`, chunked, or until the connection closes).
//!
//! Everything works on one read buffer ([`BytesMut`]) that the relay's `upstream::exchange` fills. Body data is
//! handed out as [`Bytes`] slices of that buffer (`split_to`), never copied; only the lines around it (chunk sizes,
//! trailers) are parsed, each bounded so that a vendor cannot make the relay buffer without limit. Anything this
//! reader does not accept is a [`ParseError`]: before the head, the call fails (502 `upstream_protocol`); in the
//! body, the stream ends with an error event.

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Largest response head accepted (status line, headers, interim 1xx heads before it).
pub const MAX_HEAD: usize = 32 << 10;
/// Most header fields in one head.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size and extensions).
pub const MAX_CHUNK_LINE: usize = 4 << 10;
/// Most trailer bytes after the last chunk (read and dropped).
pub const MAX_TRAILERS: usize = 16 << 10;

/// Why the vendor's response cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed response head ({0})")]
    Head(httparse::Error),
    #[error("101 Switching Protocols in answer to a POST")]
    Upgrade,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid Transfer-Encoding")]
    TransferEncoding,
    #[error("chunk size line longer than {MAX_CHUNK_LINE} bytes")]
    ChunkLine,
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("trailers longer than {MAX_TRAILERS} bytes")]
    Trailers,
    #[error("connection closed before the response head was complete")]
    EofInHead,
    #[error("connection closed before the end of the body (Content-Length)")]
    EofInLength,
    #[error("connection closed before the last chunk")]
    EofInChunked,
}

/// How the body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// 204 and 304: no body, whatever the headers say.
    Empty,
    Length(u64),
    Chunked,
    /// Until the vendor closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this body was read to its end.
    pub keep_alive: bool,
}

/// Takes a complete response head off the front of `buf`, skipping interim (1xx) heads before it. `Ok(None)`: more
/// bytes are needed.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, ParseError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut fields);
        let len = match res.parse(buf) {
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(ParseError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(len)) => len,
            Err(httparse::Error::TooManyHeaders) if buf.len() > MAX_HEAD => {
                return Err(ParseError::HeadTooLarge);
            }
            Err(e) => return Err(ParseError::Head(e)),
        };
        let code = res.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| ParseError::Head(httparse::Error::Status))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ParseError::Upgrade);
        }
        if status.is_informational() {
            // 100 Continue, 103 Early Hints: nothing for the client; the real head follows.
            buf.advance(len);
            continue;
        }
        let http11 = res.version == Some(1);
        let mut headers = HeaderMap::with_capacity(res.headers.len());
        for field in res.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| ParseError::Head(httparse::Error::HeaderName))?;
            let value = HeaderValue::from_bytes(field.value)
                .map_err(|_| ParseError::Head(httparse::Error::HeaderValue))?;
            headers.append(name, value);
        }
        let (framing, reusable) = framing(status, http11, &headers)?;
        let keep_alive = reusable && http11 && !has_token(&headers, &header::CONNECTION, "close");
        buf.advance(len);
        return Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// The body's framing, and whether the framing leaves the connection reusable (RFC 9112 §6.3).
fn framing(
    status: StatusCode,
    http11: bool,
    headers: &HeaderMap,
) -> Result<(Framing, bool), ParseError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Empty, true));
    }
    let codings: Vec<&[u8]> = tokens(headers, &header::TRANSFER_ENCODING).collect();
    let has_length = headers.contains_key(header::CONTENT_LENGTH);
    if !codings.is_empty() {
        if !http11 {
            return Err(ParseError::TransferEncoding);
        }
        let chunked = |t: &[u8]| t.eq_ignore_ascii_case(b"chunked");
        let last_chunked = codings.last().is_some_and(|t| chunked(t));
        if codings.iter().filter(|t| chunked(t)).count() > usize::from(last_chunked) {
            return Err(ParseError::TransferEncoding);
        }
        // Both present: Transfer-Encoding wins, and the connection is not trusted with another request.
        return Ok(if last_chunked {
            (Framing::Chunked, !has_length)
        } else {
            (Framing::Close, false)
        });
    }
    if has_length {
        let mut length = None;
        for value in tokens(headers, &header::CONTENT_LENGTH) {
            let n = parse_decimal(value).ok_or(ParseError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(ParseError::ContentLength);
            }
            length = Some(n);
        }
        return length
            .map(|n| (Framing::Length(n), true))
            .ok_or(ParseError::ContentLength);
    }
    Ok((Framing::Close, false))
}

/// The comma-separated elements of every `name` field, trimmed, empty ones skipped.
fn tokens<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// What [`Decoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes, a slice of the read buffer.
    Data(Bytes),
    /// The buffer holds no more body bytes: read more.
    More,
    /// The body is complete.
    Done,
}

/// Reads a body out of the read buffer, one framing at a time.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    Close,
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes to go.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; bytes seen so far.
    Trailers(usize),
    Done,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size,
            Framing::Close => State::Close,
        };
        Self { state }
    }

    /// Takes the next piece of the body off the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, ParseError> {
        loop {
            match self.state {
                State::Done => return Ok(Step::Done),
                State::Close if buf.is_empty() => return Ok(Step::More),
                State::Close => return Ok(Step::Data(buf.split().freeze())),
                State::Length(_) | State::Data(_) if buf.is_empty() => return Ok(Step::More),
                State::Length(left) => {
                    let (data, left) = take(buf, left);
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Step::Data(data));
                }
                State::Data(left) => {
                    let (data, left) = take(buf, left);
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Step::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(ParseError::ChunkEnd);
                        }
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ParseError::ChunkEnd);
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Size => {
                    let Some(line) = line(
                        buf,
                        MAX_CHUNK_LINE,
                        ParseError::ChunkLine,
                        ParseError::ChunkSize,
                    )?
                    else {
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&buf[..line - 2]).ok_or(ParseError::ChunkSize)?;
                    buf.advance(line);
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Trailers(seen) => {
                    let room = MAX_TRAILERS - seen;
                    let Some(line) = line(buf, room, ParseError::Trailers, ParseError::Trailers)?
                    else {
                        return Ok(Step::More);
                    };
                    buf.advance(line);
                    self.state = if line == 2 {
                        State::Done
                    } else {
                        State::Trailers(seen + line)
                    };
                }
            }
        }
    }

    /// The connection ended: fine only where the framing says the body may end there.
    pub fn eof(&mut self) -> Result<(), ParseError> {
        match self.state {
            State::Done => Ok(()),
            State::Close => {
                self.state = State::Done;
                Ok(())
            }
            State::Length(_) => Err(ParseError::EofInLength),
            _ => Err(ParseError::EofInChunked),
        }
    }
}

/// Up to `left` bytes off the front of `buf`, and how many are left after them.
fn take(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
    (buf.split_to(n).freeze(), left - n as u64)
}

/// The length of the CRLF-terminated line at the front of `buf`, CRLF included; `None` when it is not all there
/// yet. A line longer than `max` is `too_long`; one that ends in a bare LF is `malformed`.
fn line(
    buf: &BytesMut,
    max: usize,
    too_long: ParseError,
    malformed: ParseError,
) -> Result<Option<usize>, ParseError> {
    let window = &buf[..buf.len().min(max)];
    match memchr::memchr(b'\n', window) {
        Some(i) if i >= 1 && window[i - 1] == b'\r' => Ok(Some(i + 1)),
        Some(_) => Err(malformed),
        None if buf.len() >= max => Err(too_long),
        None => Ok(None),
    }
}

/// `chunk-size [ BWS ";" chunk-ext ]` (RFC 9112 §7.1): hexadecimal, extensions ignored.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let size = line[..digits].iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(v))
    })?;
    let rest = &line[digits..];
    let bws = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = &rest[bws..];
    let ok = rest.is_empty() || (rest[0] == b';' && !rest.iter().any(|&b| b == b'\r' || b == 0));
    ok.then_some(size)
}

#[cfg(test)]
mod tests;
