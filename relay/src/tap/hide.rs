//! The one place the relay changes what the vendor sent: OpenAI's usage-only chunk, dropped for a client that did
//! not ask for it.
//!
//! On a route with `usage = "openai"` the relay adds `stream_options.include_usage` to a streaming request that did
//! not ask for usage ([`crate::usage::ask_for_usage`]), so that its tokens can be counted and charged. The vendor then
//! sends one more event before `data: [DONE]`: a chunk with `"choices":[]` and a `"usage":{…}` object. The client
//! asked for no such chunk (a strict client could even trip on a chunk without choices), so [`HideUsage`] drops
//! that one event, and only it.
//!
//! Every other byte goes to the client as the vendor sent it, in slices of the vendor's own `Bytes` (no copy). To
//! judge an event the hider must see it whole: an event that a frame ends in the middle of is held (its pieces,
//! not copied) until its blank line arrives, then passed or dropped. A client's SSE parser acts on an event only at
//! its blank line, so holding its first half delays nothing the client could use. What is held is bounded by the
//! route's `max_event_bytes` (the event scanner fails a larger event first), and if the stream ends or fails
//! while an event is held, the held bytes go out before the error event, as they would have.

use std::collections::VecDeque;

use bytes::Bytes;
use memchr::memmem;

/// Drops the usage-only event of one stream.
#[derive(Debug, Default)]
pub struct HideUsage {
    /// The pieces of the current, unfinished event.
    held: Vec<Bytes>,
    /// The current line has no bytes yet.
    line_empty: bool,
    /// Lines in the current event.
    event_lines: usize,
    /// The last terminator was a `\r` (a `\n` right after it belongs to it).
    after_cr: bool,
    /// Bytes dropped.
    hidden: u64,
    /// The last frame ended with the `\r` of an event's blank line (`true`: a hidden event's): a `\n` starting the
    /// next frame belongs to that event.
    cr_ended: Option<bool>,
}

/// Whether one whole event is OpenAI's usage-only chunk: a `"usage"` object and no choices. In JSON text a quote
/// inside a string is always escaped, so an answer's text cannot forge these keys.
fn usage_only(event: &[u8]) -> bool {
    let has = |needle: &[u8]| memmem::find(event, needle).is_some();
    (has(b"\"usage\":{") || has(b"\"usage\": {"))
        && (has(b"\"choices\":[]") || has(b"\"choices\": []"))
}

impl HideUsage {
    pub fn new() -> Self {
        Self {
            line_empty: true,
            ..Self::default()
        }
    }

    /// Bytes dropped so far.
    pub fn hidden(&self) -> u64 {
        self.hidden
    }

    /// Whether part of an event is held.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Takes the next vendor frame: what the client gets now goes to `out`, in order.
    pub fn frame(&mut self, frame: Bytes, out: &mut VecDeque<Bytes>) {
        // `pass`: the start of bytes decided to go (not yet pushed); `event`: where the current event began in this
        // frame (0 when it began in an earlier frame, its first pieces held).
        let (mut pass, mut event) = (0, 0);
        let mut at = 0;
        let bytes = &frame[..];
        while let Some(i) = memchr::memchr2(b'\r', b'\n', &bytes[at..]).map(|i| at + i) {
            let cr = bytes[i] == b'\r';
            // Nothing since the previous terminator (or since the frame's start).
            let adjacent = i == at;
            at = i + 1;
            let cr_ended = self.cr_ended.take();
            if adjacent && !cr && self.after_cr {
                self.after_cr = false;
                // The `\n` of a `\r\n`; when it ends an event begun in the last frame, it goes (or not) with it.
                if let (Some(hidden), 0) = (cr_ended, i) {
                    event = at;
                    if hidden {
                        pass = at;
                        self.hidden += 1;
                    }
                }
                continue;
            }
            self.after_cr = cr;
            if !adjacent {
                self.line_empty = false;
            }
            if !self.line_empty {
                self.event_lines += 1;
                self.line_empty = true;
                continue;
            }
            if self.event_lines == 0 {
                continue; // blank lines between events
            }
            // A blank line: the event from `event` (plus what is held) to `at` is whole, with the `\n` of a `\r\n`.
            self.event_lines = 0;
            if cr && bytes.get(at) == Some(&b'\n') {
                at += 1;
                self.after_cr = false;
            }
            let whole = self.ends_usage(bytes, event, at);
            if whole {
                if event > pass {
                    out.push_back(frame.slice(pass..event));
                }
                self.hidden += (at - event) as u64;
                self.hidden += self.held.drain(..).map(|p| p.len() as u64).sum::<u64>();
                pass = at;
            } else {
                out.extend(self.held.drain(..));
            }
            if self.after_cr && at == bytes.len() {
                self.cr_ended = Some(whole);
            }
            event = at;
        }
        // Bytes after the last terminator are part of a line.
        if at < bytes.len() {
            self.line_empty = false;
            self.after_cr = false;
        }
        if event > pass {
            out.push_back(frame.slice(pass..event));
        }
        self.keep_rest(&frame, event, out);
    }

    /// Whether the event that ends at `at` (from `event` in this frame, after the pieces held) is only the usage
    /// answer the client did not ask for.
    fn ends_usage(&self, bytes: &[u8], event: usize, at: usize) -> bool {
        if self.held.is_empty() {
            return usage_only(&bytes[event..at]);
        }
        let mut joined = Vec::new();
        self.held.iter().for_each(|p| joined.extend_from_slice(p));
        joined.extend_from_slice(&bytes[..at]);
        usage_only(&joined)
    }

    /// The frame's bytes from `event` on, after its last whole event: held until their event is whole, or sent
    /// when they are only blank lines (nothing to judge).
    fn keep_rest(&mut self, frame: &Bytes, event: usize, out: &mut VecDeque<Bytes>) {
        if event >= frame.len() {
            return;
        }
        let rest = frame.slice(event..);
        if self.event_lines == 0 && self.line_empty {
            out.push_back(rest);
        } else {
            self.held.push(rest);
        }
    }

    /// The stream ended or failed: what is held goes out as it is.
    pub fn flush(&mut self, out: &mut VecDeque<Bytes>) {
        out.extend(self.held.drain(..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &[u8] =
        b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &[u8] = b"data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n";
    const DONE: &[u8] = b"data: [DONE]\n\n";

    fn run(frames: &[&[u8]]) -> (Vec<u8>, usize, u64) {
        let mut h = HideUsage::new();
        let mut out = VecDeque::new();
        for f in frames {
            h.frame(Bytes::copy_from_slice(f), &mut out);
        }
        h.flush(&mut out);
        let pieces = out.len();
        (out.into_iter().flatten().collect(), pieces, h.hidden())
    }

    #[test]
    fn the_usage_only_event_goes_and_every_other_byte_stays_at_every_split() {
        let stream = [CHUNK, CHUNK, USAGE, DONE].concat();
        let want = [CHUNK, CHUNK, DONE].concat();
        let (got, _, hidden) = run(&[&stream]);
        assert_eq!(got, want);
        assert_eq!(hidden, USAGE.len() as u64);
        for i in 0..=stream.len() {
            assert_eq!(run(&[&stream[..i], &stream[i..]]).0, want, "split at {i}");
            for j in (i..=stream.len()).step_by(7) {
                let (got, _, _) = run(&[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(got, want, "split at {i},{j}");
            }
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes).0, want, "one byte at a time");
    }

    #[test]
    fn crlf_and_cr_line_endings_are_events_too() {
        let crlf = |e: &[u8]| {
            String::from_utf8_lossy(e)
                .replace('\n', "\r\n")
                .into_bytes()
        };
        let stream = [crlf(CHUNK), crlf(USAGE), crlf(DONE)].concat();
        let want = [crlf(CHUNK), crlf(DONE)].concat();
        for i in 0..=stream.len() {
            let got = run(&[&stream[..i], &stream[i..]]).0;
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "split at {i}"
            );
        }
        let cr = |e: &[u8]| String::from_utf8_lossy(e).replace('\n', "\r").into_bytes();
        let stream = [cr(CHUNK), cr(USAGE), cr(DONE)].concat();
        assert_eq!(run(&[&stream]).0, [cr(CHUNK), cr(DONE)].concat());
    }

    #[test]
    fn whole_events_pass_as_slices_of_the_frame_and_answers_cannot_forge_usage() {
        // Two whole events in a frame: one slice, no copy, nothing held.
        let frame = [CHUNK, CHUNK].concat();
        let (got, pieces, hidden) = run(&[&frame]);
        assert_eq!((got, pieces, hidden), (frame.clone(), 1, 0));
        // An answer that talks about usage keeps its event (the quotes are escaped in JSON strings).
        let forged = b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":{ \\\"choices\\\":[]\"}}]}\n\n";
        assert_eq!(run(&[forged]).0, forged.to_vec());
        // A stream cut inside an event: the held half goes out at the end.
        let (got, _, _) = run(&[CHUNK, &USAGE[..20]]);
        assert_eq!(got, [CHUNK, &USAGE[..20]].concat());
    }
}
