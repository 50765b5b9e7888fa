//! A leaf: the bounded UTF-8 text of a stream, for the audit record ([`crate::record`]) — what the blog post's
//! `log.info("…result: {}", res)` meant to log, done right. The tap ([`crate::tap`]) feeds it what it observes.
//!
//! [`AuditText`] decodes observed body bytes as UTF-8 *incrementally*: a character split across two frames is held
//! (at most 3 bytes) until its rest arrives, instead of being turned into U+FFFD as the post's per-read
//! `new String(buffer, 0, n, UTF_8)` does. It stops decoding at a byte cap and only counts what it skipped, so its
//! cost is bounded whatever the stream's length. It reads `&[u8]`; the frames themselves are never touched.

/// Bounded, frame-boundary-safe UTF-8 text of a stream.
#[derive(Debug)]
pub struct AuditText {
    text: String,
    max: usize,
    carry: [u8; 4],
    carry_len: usize,
    truncated: bool,
}

/// Length of the UTF-8 sequence a lead byte starts (1 for ASCII and for invalid lead bytes).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

impl AuditText {
    pub fn new(max: usize) -> Self {
        Self {
            text: String::new(),
            max,
            carry: [0; 4],
            carry_len: 0,
            truncated: false,
        }
    }

    /// Feeds the next observed bytes.
    pub fn push(&mut self, mut data: &[u8]) {
        if self.truncated || data.is_empty() {
            self.truncated |= !data.is_empty();
            return;
        }
        if self.carry_len > 0 {
            let held_before = self.carry_len;
            let need = sequence_len(self.carry[0]);
            let take = (need - held_before).min(data.len());
            self.carry[held_before..held_before + take].copy_from_slice(&data[..take]);
            self.carry_len += take;
            if self.carry_len < need {
                return;
            }
            let held = self.carry;
            self.carry_len = 0;
            match std::str::from_utf8(&held[..need]) {
                Ok(s) => {
                    self.append(s);
                    data = &data[take..];
                }
                Err(e) => {
                    // Only the invalid sequence is replaced; bytes after it are decoded normally.
                    let bad = e.error_len().unwrap_or(need);
                    data = &data[bad.saturating_sub(held_before).min(take)..];
                    self.append("\u{FFFD}");
                }
            }
        }
        while !data.is_empty() && !self.truncated {
            match std::str::from_utf8(data) {
                Ok(s) => {
                    self.append(s);
                    break;
                }
                Err(e) => {
                    let (valid, rest) = data.split_at(e.valid_up_to());
                    self.append(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            self.append("\u{FFFD}");
                            data = &rest[bad..];
                        }
                        None => {
                            // An incomplete character at the end: keep it for the next frame.
                            self.carry[..rest.len()].copy_from_slice(rest);
                            self.carry_len = rest.len();
                            break;
                        }
                    }
                }
            }
        }
    }

    fn append(&mut self, s: &str) {
        let room = self.max - self.text.len();
        if s.len() <= room {
            self.grow_for(s.len());
            self.text.push_str(s);
            return;
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.grow_for(cut);
        self.text.push_str(&s[..cut]);
        self.truncated = true;
    }

    /// Doubles the buffer as `String` would, but never past the cap: a stream at the cap holds `max` bytes, not
    /// the next power of two (which was up to twice as much, per open stream).
    fn grow_for(&mut self, extra: usize) {
        let need = self.text.len() + extra;
        if need > self.text.capacity() {
            let target = (self.text.capacity() * 2).clamp(need, self.max.max(need));
            self.text.reserve_exact(target - self.text.len());
        }
    }

    /// The text so far, whether it was cut at the cap (a dangling partial character at the end counts as cut).
    pub fn finish(self) -> (String, bool) {
        (self.text, self.truncated || self.carry_len > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(bytes: &[u8], cuts: &[usize], max: usize) -> (String, bool) {
        let mut a = AuditText::new(max);
        let mut last = 0;
        for &c in cuts.iter().chain([bytes.len()].iter()) {
            a.push(&bytes[last..c]);
            last = c;
        }
        a.finish()
    }

    #[test]
    fn split_characters_survive_every_cut() {
        let text = "data: 你好, 世界 🎉 ok\n\n";
        let bytes = text.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                assert_eq!(
                    decode_split(bytes, &[i, j], 1024),
                    (text.to_owned(), false),
                    "cuts {i},{j}"
                );
            }
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(decode_split(b"a\xffb", &[2], 64).0, "a\u{FFFD}b");
        assert_eq!(decode_split(b"a\xe4\xbdb", &[2], 64).0, "a\u{FFFD}b");
    }

    #[test]
    fn buffer_never_grows_past_the_cap() {
        let mut a = AuditText::new(4096);
        for _ in 0..300 {
            a.push("data: 你好, world\n\n".as_bytes());
        }
        assert!(
            a.text.len() <= 4096 && a.text.capacity() <= 4096,
            "{}",
            a.text.capacity()
        );
        assert!(a.finish().1);
    }

    #[test]
    fn cap_cuts_on_a_character_boundary() {
        let (text, truncated) = decode_split("你好世界".as_bytes(), &[4], 7);
        assert_eq!(text, "你好");
        assert!(truncated);
    }

    #[test]
    fn dangling_partial_character_counts_as_cut() {
        assert_eq!(
            decode_split("ab你".as_bytes(), &[], 64),
            ("ab你".to_owned(), false)
        );
        let mut a = AuditText::new(64);
        a.push(&"你".as_bytes()[..2]);
        assert_eq!(a.finish(), (String::new(), true));
    }
}
