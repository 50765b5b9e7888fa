//! The SSE event scanner: finds event boundaries in the relayed bytes without copying or buffering them.
//!
//! The tap feeds it every frame (`&[u8]`) and asks three things: is the stream at an event boundary right now (so a
//! keep-alive comment or an error event cannot split an upstream event), did the route's terminal line pass
//! (`data: [DONE]`, `event: done`), and has one event grown past `max_event_bytes` (malformed framing). It follows
//! the WHATWG line rules: lines end in `\n`, `\r\n` or a lone `\r` (a `\r` at the end of a frame waits for the next
//! frame to see whether a `\n` follows); a blank line ends an event; lines starting with `:` are comments.
//!
//! State is a few counters plus the first bytes of the current line (enough to compare with the terminal line), so
//! memory is constant whatever the line length: a line of several MiB costs nothing but the `memchr` over it.

pub mod starts;

pub use starts::EventStarts;

/// Longest terminal line the scanner can recognise.
pub const MAX_TERMINAL_LINE: usize = 64;

/// One event grew past the configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an upstream event exceeded {limit} bytes")]
pub struct EventTooLarge {
    pub limit: usize,
}

/// Incremental scanner state for one stream.
#[derive(Debug, Clone)]
pub struct EventScanner {
    terminal: Option<Box<[u8]>>,
    max_event_bytes: usize,
    /// A `\r` ended the last frame: a leading `\n` in the next frame belongs to it.
    after_cr: bool,
    /// Bytes in the current line so far (without its terminator).
    line_len: usize,
    /// The current line's first bytes, for the terminal comparison.
    line_head: [u8; MAX_TERMINAL_LINE + 1],
    /// Lines (including comments) since the last blank line.
    event_lines: usize,
    /// Bytes since the last blank line.
    event_bytes: usize,
    /// Blank lines that ended a non-empty event.
    events: u64,
    terminal_seen: bool,
}

impl EventScanner {
    /// `terminal`: the line that marks a complete answer (compared whole, without its line ending).
    pub fn new(terminal: Option<&str>, max_event_bytes: usize) -> Self {
        Self {
            terminal: terminal.map(|t| t.as_bytes().into()),
            max_event_bytes,
            after_cr: false,
            line_len: 0,
            line_head: [0; MAX_TERMINAL_LINE + 1],
            event_lines: 0,
            event_bytes: 0,
            events: 0,
            terminal_seen: false,
        }
    }

    /// Scans the next frame.
    pub fn feed(&mut self, mut buf: &[u8]) -> Result<(), EventTooLarge> {
        while !buf.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if buf[0] == b'\n' {
                    buf = &buf[1..];
                    continue;
                }
            }
            match memchr::memchr2(b'\r', b'\n', buf) {
                None => {
                    self.line_bytes(buf);
                    break;
                }
                Some(i) => {
                    self.line_bytes(&buf[..i]);
                    self.after_cr = buf[i] == b'\r';
                    self.end_line();
                    buf = &buf[i + 1..];
                }
            }
            if self.event_bytes > self.max_event_bytes {
                return Err(EventTooLarge {
                    limit: self.max_event_bytes,
                });
            }
        }
        if self.event_bytes > self.max_event_bytes {
            return Err(EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }

    fn line_bytes(&mut self, bytes: &[u8]) {
        let keep = bytes
            .len()
            .min(self.line_head.len().saturating_sub(self.line_len));
        if keep > 0 {
            self.line_head[self.line_len..self.line_len + keep].copy_from_slice(&bytes[..keep]);
        }
        self.line_len += bytes.len();
        self.event_bytes += bytes.len();
    }

    fn end_line(&mut self) {
        if self.line_len == 0 {
            if self.event_lines > 0 {
                self.events += 1;
            }
            self.event_lines = 0;
            self.event_bytes = 0;
            return;
        }
        if let Some(t) = &self.terminal {
            if self.line_len == t.len() && self.line_head[..t.len()] == **t {
                self.terminal_seen = true;
            }
        }
        self.event_lines += 1;
        self.event_bytes += 1;
        self.line_len = 0;
    }

    /// No event is half-sent: bytes inserted now cannot merge into an upstream event. (A pending `\r` that ended a
    /// blank line is a boundary too: should a `\n` follow it, a client reads that as one more blank line, which
    /// dispatches nothing.)
    pub fn at_boundary(&self) -> bool {
        self.line_len == 0 && self.event_lines == 0
    }

    /// Events completed so far (blank lines ending at least one line).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Whether the terminal line has passed.
    pub fn terminal_seen(&self) -> bool {
        self.terminal_seen
    }

    /// At the upstream's end of body: true when the answer is incomplete (an event cut off before its blank line,
    /// which a browser discards, or the declared terminal line never came).
    pub fn truncated_at_eof(&self) -> bool {
        let event_open = self.line_len > 0 || self.event_lines > 0;
        event_open || (self.terminal.is_some() && !self.terminal_seen)
    }
}

#[cfg(test)]
mod tests;
