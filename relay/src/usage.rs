//! A leaf: token counts read from the relayed bytes as they pass, for the tokens metric (and, later, usage
//! accounting). OpenAI-style streams end with a chunk carrying `"usage":{"prompt_tokens":N,"completion_tokens":M}`
//! (when the request asked for `stream_options.include_usage`); OpenAI's Responses API (`response.completed`) and
//! Anthropic's messages stream say `"input_tokens"` / `"output_tokens"` (the last value of each wins, so
//! Anthropic's running `output_tokens` ends at its final count); [`UsageScanner`] finds those numbers without
//! copying or parsing the events: a `memmem` for `_tokens"` over each frame, and at most 64 bytes kept from the
//! previous frame so that a key or a number split across two frames is still read. Inside JSON strings a quote is
//! always escaped, so the text of an answer cannot forge the key.

use memchr::memmem;

const NEEDLE: &[u8] = b"_tokens\"";
/// Bytes kept from the end of the previous frame: enough for `"completion_tokens": ` and a number.
const TAIL: usize = 64;

/// Which count a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Prompt = 0,
    Completion = 1,
}

/// The token counts a stream reported, if it reported any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

/// Incremental scanner over one stream's bytes.
#[derive(Debug)]
pub struct UsageScanner {
    finder: memmem::Finder<'static>,
    tail: [u8; TAIL],
    tail_len: usize,
    prompt: Option<u64>,
    completion: Option<u64>,
}

impl Default for UsageScanner {
    fn default() -> Self {
        Self {
            finder: memmem::Finder::new(NEEDLE),
            tail: [0; TAIL],
            tail_len: 0,
            prompt: None,
            completion: None,
        }
    }
}

/// What follows `"prompt_tokens"` / `"completion_tokens"` in `bytes` from `at`: the number, or `None` when `bytes`
/// ends before the number does.
fn number_at(bytes: &[u8], mut at: usize) -> Option<u64> {
    while bytes.get(at).is_some_and(|b| *b == b' ' || *b == b':') {
        at += 1;
    }
    let digits = bytes[at.min(bytes.len())..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let end = at + digits;
    if digits == 0 || end >= bytes.len() {
        return None; // no number, or it may go on in the next frame
    }
    std::str::from_utf8(&bytes[at..end]).ok()?.parse().ok()
}

/// Which key ends just before `NEEDLE` at `at`, if any.
fn kind_before(bytes: &[u8], at: usize) -> Option<Kind> {
    let before = &bytes[..at];
    if before.ends_with(b"\"prompt") || before.ends_with(b"\"input") {
        Some(Kind::Prompt)
    } else if before.ends_with(b"\"completion") || before.ends_with(b"\"output") {
        Some(Kind::Completion)
    } else {
        None
    }
}

impl UsageScanner {
    /// Looks at the next frame.
    pub fn feed(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // Keys and numbers that cross from the previous frame into this one: read them from a joint window.
        let mut joint = [0u8; 2 * TAIL];
        let head = data.len().min(TAIL);
        joint[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        joint[self.tail_len..self.tail_len + head].copy_from_slice(&data[..head]);
        let window = &joint[..self.tail_len + head];
        let mut counts = [self.prompt, self.completion];
        let mut read = |bytes: &[u8], at: usize| {
            if let (Some(kind), Some(n)) =
                (kind_before(bytes, at), number_at(bytes, at + NEEDLE.len()))
            {
                counts[kind as usize] = Some(n);
            }
        };
        // Every hit in the window (one wholly inside the frame is read again below, to the same value), then every
        // hit in the frame. No allocation: the finder walks the bytes in place.
        self.finder
            .find_iter(window)
            .for_each(|at| read(window, at));
        self.finder.find_iter(data).for_each(|at| read(data, at));
        [self.prompt, self.completion] = counts;
        let keep = data.len().min(TAIL);
        if keep == TAIL {
            self.tail.copy_from_slice(&data[data.len() - TAIL..]);
            self.tail_len = TAIL;
        } else {
            // A short frame: slide it onto what was kept.
            let old = (TAIL - keep).min(self.tail_len);
            self.tail.copy_within(self.tail_len - old..self.tail_len, 0);
            self.tail[old..old + keep].copy_from_slice(data);
            self.tail_len = old + keep;
        }
    }

    /// The counts, when the stream reported both.
    pub fn tokens(&self) -> Option<Tokens> {
        Some(Tokens {
            prompt: self.prompt?,
            completion: self.completion?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(frames: &[&[u8]]) -> Option<Tokens> {
        let mut s = UsageScanner::default();
        frames.iter().for_each(|f| s.feed(f));
        s.tokens()
    }

    const LAST: &[u8] = b"data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":120,\
\"total_tokens\":129}}\n\ndata: [DONE]\n\n";

    #[test]
    fn counts_survive_every_split_into_two_and_three_frames() {
        let want = Some(Tokens {
            prompt: 9,
            completion: 120,
        });
        for i in 0..=LAST.len() {
            assert_eq!(scan(&[&LAST[..i], &LAST[i..]]), want, "split at {i}");
            for j in i..=LAST.len() {
                assert_eq!(
                    scan(&[&LAST[..i], &LAST[i..j], &LAST[j..]]),
                    want,
                    "split at {i},{j}"
                );
            }
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = LAST.chunks(1).collect();
        assert_eq!(scan(&bytes), want);
    }

    #[test]
    fn text_that_mentions_the_keys_is_not_usage() {
        let forged =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"prompt_tokens\\\":5\"}}]}\n\n";
        assert_eq!(scan(&[forged]), None);
        assert_eq!(
            scan(&[b"data: {\"usage\":{\"prompt_tokens\":3}}\n\n"]),
            None,
            "both counts needed"
        );
        assert_eq!(
            scan(&[b"data: {\"usage\":{\"prompt_tokens\": 3, \"completion_tokens\": 4}}\n\n"]),
            Some(Tokens {
                prompt: 3,
                completion: 4
            }),
            "spaces after the colon"
        );
    }

    #[test]
    fn responses_api_and_anthropic_usage_count_too() {
        let responses = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":\
{\"input_tokens\":9,\"output_tokens\":8,\"total_tokens\":17,\"input_tokens_details\":{\"cached_tokens\":2},\
\"output_tokens_details\":{\"reasoning_tokens\":3}}}}\n\n";
        let want = Some(Tokens {
            prompt: 9,
            completion: 8,
        });
        for i in 0..=responses.len() {
            assert_eq!(
                scan(&[&responses[..i], &responses[i..]]),
                want,
                "split at {i}"
            );
        }
        let anthropic: &[&[u8]] = &[
            b"event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":15}}\n\n",
        ];
        assert_eq!(
            scan(anthropic),
            Some(Tokens {
                prompt: 25,
                completion: 15
            })
        );
    }
}
