//! Where events start in a stream of frames, for a writer that must put a line in front of each event (a resumable
//! stream's `id:` line) without copying or re-framing the vendor's bytes: it splits the frames at these offsets.
//!
//! An event starts at the first byte of a non-blank line that follows a blank line (or the start of the stream).
//! Comments (`: keep-alive`) start events too: a block of comment lines is an event block that dispatches nothing,
//! and an `id:` line in front of it is still valid. Same line rules as [`super::EventScanner`] (`\n`, `\r\n`, lone
//! `\r`, a `\r` at the end of a frame waiting for the next frame's `\n`).

/// Incremental state: where the last frame left off.
#[derive(Debug, Clone, Default)]
pub struct EventStarts {
    /// Inside a line (some of its bytes seen, not its end).
    in_line: bool,
    /// Inside an event block (a non-blank line since the last blank line).
    in_event: bool,
    /// A `\r` ended the last frame: a leading `\n` in the next frame belongs to it.
    after_cr: bool,
}

impl EventStarts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls `start` with the offset of every event start in `buf`, in order.
    pub fn feed(&mut self, buf: &[u8], mut start: impl FnMut(usize)) {
        let mut i = 0;
        while i < buf.len() {
            if self.after_cr {
                self.after_cr = false;
                if buf[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if !self.in_line {
                let b = buf[i];
                if b == b'\r' || b == b'\n' {
                    // A blank line: the event block (if any) ends.
                    self.in_event = false;
                    self.after_cr = b == b'\r';
                    i += 1;
                    continue;
                }
                if !self.in_event {
                    start(i);
                    self.in_event = true;
                }
                self.in_line = true;
            }
            match memchr::memchr2(b'\r', b'\n', &buf[i..]) {
                None => return,
                Some(j) => {
                    self.after_cr = buf[i + j] == b'\r';
                    self.in_line = false;
                    i += j + 1;
                }
            }
        }
    }

    /// No event is open: the next non-blank byte starts one.
    pub fn at_boundary(&self) -> bool {
        !self.in_event
    }
}

#[cfg(test)]
mod tests {
    use super::EventStarts;

    /// Every split of `stream` into two frames finds the same starts.
    fn starts(stream: &[u8]) -> Vec<usize> {
        let mut whole = Vec::new();
        EventStarts::new().feed(stream, |i| whole.push(i));
        for cut in 0..=stream.len() {
            let mut s = EventStarts::new();
            let mut got = Vec::new();
            s.feed(&stream[..cut], |i| got.push(i));
            s.feed(&stream[cut..], |i| got.push(cut + i));
            assert_eq!(got, whole, "split at {cut}");
        }
        whole
    }

    #[test]
    fn lf_events() {
        assert_eq!(starts(b"data: a\n\ndata: b\n\n"), vec![0, 9]);
    }

    #[test]
    fn multi_line_event_starts_once() {
        assert_eq!(starts(b"event: x\ndata: a\n\ndata: b\n\n"), vec![0, 18]);
    }

    #[test]
    fn crlf_and_lone_cr() {
        assert_eq!(
            starts(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"),
            vec![0, 11, 20]
        );
    }

    #[test]
    fn extra_blank_lines_start_nothing() {
        assert_eq!(starts(b"\n\ndata: a\n\n\n\n: ping\n\n"), vec![2, 13]);
    }

    #[test]
    fn open_event_at_end() {
        let mut s = EventStarts::new();
        s.feed(b"data: a\n\ndata: b", |_| {});
        assert!(!s.at_boundary());
        s.feed(b"\n\n", |_| {});
        assert!(s.at_boundary());
    }
}
