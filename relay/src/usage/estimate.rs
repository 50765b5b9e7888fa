//! Token estimates, for what the vendor did not count for us: the reservation a request makes before the vendor is
//! called (its prompt, [`request_tokens`]), and the charge of an answer that ended without the vendor's usage (its
//! text so far, [`AnswerTokens`]).
//!
//! The rule (docs/tenants.md, "Tokens per tenant"): a quarter of a token per ASCII byte (English runs about four
//! characters a token in OpenAI's and Anthropic's tokenizers), half a token per two-byte UTF-8 character (accented
//! Latin, Cyrillic, Greek, Hebrew, Arabic), one token per wider character (Chinese, Japanese, Korean characters are
//! one token or a little less each; emoji a little more), rounded up. JSON escapes count as the character they
//! stand for (`\u4f60` is one token, not six quarters).
//!
//! - A request counts all of its body (keys and punctuation too, which stands in for the few tokens a vendor adds
//!   per message) except string values that start with `data:` (base64 images and files: vendors bill them by
//!   size in pixels or pages, not by their base64 text).
//! - An answer counts the string values of the keys that carry generated text (`content`, `text`, `delta`,
//!   `arguments`, `refusal`, `thinking`, `partial_json`: chat completions, the Responses API, Anthropic), however the
//!   bytes are framed (SSE `data:` lines or one JSON body) and split across reads. Nothing is kept but a few bytes
//!   of state: the estimate costs no memory per stream and no copy.
//!
//! Why not a tokenizer crate: the answer's text is not kept (only the bounded audit text), so a tokenizer would
//! need a copy of every answer; and a BPE pass over a 1 MiB prompt costs milliseconds on the request path, where
//! this walk costs about a nanosecond a byte. The estimate is used for the few answers without usage, and for a
//! reservation that is settled to the vendor's count when the answer ends.

use memchr::{memchr, memchr2};

/// Keys whose string values are generated text.
const ANSWER_KEYS: [&[u8]; 7] = [
    b"content",
    b"text",
    b"delta",
    b"arguments",
    b"refusal",
    b"thinking",
    b"partial_json",
];
/// Bytes of a string kept to tell keys and `data:` values apart.
const KEPT: usize = 16;

/// Quarter tokens of one byte of UTF-8 text: ASCII 1, a two-byte character's lead 2, a wider one's lead 4,
/// continuation bytes 0.
fn quarters(b: u8) -> u64 {
    match b {
        0x00..=0x7F => 1,
        0x80..=0xBF => 0,
        0xC0..=0xDF => 2,
        _ => 4,
    }
}

/// Quarter tokens of the character `\uXXXX` stands for.
fn escaped_quarters(code: u32) -> u64 {
    match code {
        0..=0x7F => 1,
        0x80..=0x7FF => 2,
        _ => 4,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Outside,
    Inside,
    /// After a backslash inside a string.
    Escape,
    /// Inside `\uXXXX`: hex digits still to come, and the value so far.
    Hex(u8, u32),
}

/// Between two strings: what the bytes since the last one said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum After {
    /// Nothing that makes the next string a value of interest.
    #[default]
    Nothing,
    /// A string just closed; `true`: it names an answer key (if a colon follows, it was that key).
    String(bool),
    /// `"key":` seen; `true`: the key is an answer key.
    Colon(bool),
}

/// Walks JSON text split at any byte; what it counts depends on `all`.
#[derive(Debug, Default)]
struct Walker {
    /// Count everything (a request) rather than the answer keys' values only.
    all: bool,
    state: State,
    after: After,
    /// The current string is counted (until it turns out to be `data:`).
    counting: bool,
    /// Its quarters so far, added to `total` when it closes.
    string: u64,
    kept: [u8; KEPT],
    kept_len: usize,
    total: u64,
}

impl Walker {
    fn feed(&mut self, mut data: &[u8]) {
        while let Some(&first) = data.first() {
            match self.state {
                State::Outside => {
                    let next = memchr(b'"', data);
                    let between = &data[..next.unwrap_or(data.len())];
                    if self.all {
                        self.total += between.len() as u64;
                    }
                    self.between(between);
                    let Some(at) = next else { return };
                    data = &data[at + 1..];
                    self.open();
                }
                State::Inside => {
                    let next = memchr2(b'"', b'\\', data);
                    let text = &data[..next.unwrap_or(data.len())];
                    self.text(text);
                    let Some(at) = next else { return };
                    let closing = data[at] == b'"';
                    data = &data[at + 1..];
                    if closing {
                        self.close();
                    } else {
                        self.state = State::Escape;
                    }
                }
                State::Escape => {
                    data = &data[1..];
                    if first == b'u' {
                        self.state = State::Hex(4, 0);
                    } else {
                        self.state = State::Inside;
                        self.char_quarters(1);
                        self.keep(&[first]);
                    }
                }
                State::Hex(left, value) => {
                    data = &data[1..];
                    let digit = char::from(first).to_digit(16).unwrap_or(0);
                    let value = value * 16 + digit;
                    self.state = if left > 1 {
                        State::Hex(left - 1, value)
                    } else {
                        self.char_quarters(escaped_quarters(value));
                        State::Inside
                    };
                }
            }
        }
    }

    /// Bytes between two strings: does the next string follow `"key":`?
    fn between(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.after = match (self.after, b) {
                (After::Nothing, _) => return,
                (a, b' ' | b'\t' | b'\r' | b'\n') => a,
                (After::String(key), b':') => After::Colon(key),
                _ => After::Nothing,
            };
        }
    }

    fn open(&mut self) {
        self.state = State::Inside;
        self.counting = self.all || self.after == After::Colon(true);
        self.after = After::Nothing;
        self.string = 0;
        self.kept_len = 0;
    }

    fn close(&mut self) {
        self.state = State::Outside;
        if self.counting {
            // The quotes count as syntax in a request.
            self.total += self.string + if self.all { 2 } else { 0 };
        }
        let kept = &self.kept[..self.kept_len.min(KEPT)];
        let answer_key = self.kept_len <= KEPT && ANSWER_KEYS.contains(&kept);
        self.after = After::String(answer_key);
    }

    fn text(&mut self, text: &[u8]) {
        if self.counting {
            self.string += text.iter().map(|b| quarters(*b)).sum::<u64>();
        }
        self.keep(text);
    }

    fn char_quarters(&mut self, q: u64) {
        if self.counting {
            self.string += q;
        }
    }

    /// Keeps the string's first bytes; a request's `data:` value stops counting there.
    fn keep(&mut self, bytes: &[u8]) {
        if self.kept_len <= KEPT {
            let take = bytes.len().min(KEPT + 1 - self.kept_len);
            let room = take.min(KEPT - self.kept_len.min(KEPT));
            self.kept[self.kept_len..self.kept_len + room].copy_from_slice(&bytes[..room]);
            self.kept_len += take;
        }
        if self.all && self.counting && self.kept_len >= 5 && self.kept.starts_with(b"data:") {
            self.counting = false;
        }
    }

    fn tokens(&self) -> u64 {
        self.total.div_ceil(4)
    }
}

/// The estimated tokens of a request body (its prompt).
pub fn request_tokens(body: &[u8]) -> u64 {
    let mut w = Walker {
        all: true,
        ..Walker::default()
    };
    w.feed(body);
    w.tokens().max(1)
}

/// The estimated tokens of an answer's text, fed its bytes as they are relayed.
#[derive(Debug, Default)]
pub struct AnswerTokens(Walker);

impl AnswerTokens {
    pub fn feed(&mut self, data: &[u8]) {
        self.0.feed(data);
    }

    /// The answer's text so far, in tokens (a string still open counts what it has).
    pub fn tokens(&self) -> u64 {
        let open = if self.0.state != State::Outside && self.0.counting {
            self.0.string
        } else {
            0
        };
        (self.0.total + open).div_ceil(4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(frames: &[&[u8]]) -> u64 {
        let mut a = AnswerTokens::default();
        frames.iter().for_each(|f| a.feed(f));
        a.tokens()
    }

    const CHAT: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\
\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello there, \"}}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"你好\\\"世界\\\"\"}}]}\n\n\
data: [DONE]\n\n";

    #[test]
    fn an_answer_counts_its_text_only_however_it_is_split() {
        // "Hello there, " is 13 ASCII bytes; 你好世界 four wide characters; two escaped quotes.
        let want = (13 + 4 * 4 + 2_u64).div_ceil(4);
        assert_eq!(answer(&[CHAT.as_bytes()]), want);
        let bytes = CHAT.as_bytes();
        for i in 0..=bytes.len() {
            assert_eq!(answer(&[&bytes[..i], &bytes[i..]]), want, "split at {i}");
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(answer(&one_by_one), want);
    }

    #[test]
    fn responses_and_anthropic_text_count_too() {
        let responses =
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\
\"item_id\":\"msg_1\",\"delta\":\"abcdefgh\"}\n\n";
        assert_eq!(answer(&[responses]), 2);
        let anthropic =
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\
\"delta\":{\"type\":\"text_delta\",\"text\":\"\\u4f60\\u597d\"}}\n\n";
        assert_eq!(answer(&[anthropic]), 2);
        // Keys that are not text, and values that are not strings, count nothing.
        assert_eq!(
            answer(&[b"{\"model\":\"content\",\"text\":12,\"x\":\"text\"}"]),
            0
        );
        // Spaces around the colon.
        assert_eq!(answer(&[b"{\"content\" : \"abcd\"}"]), 1);
        // A cut inside a string counts what arrived.
        assert_eq!(answer(&[b"data: {\"delta\":{\"content\":\"abcdefg"]), 2);
    }

    #[test]
    fn a_request_counts_its_body_but_not_inline_files() {
        let text = br#"{"model":"m","messages":[{"role":"user","content":"Hello"}]}"#;
        assert_eq!(request_tokens(text), (text.len() as u64).div_ceil(4));
        let wide = "{\"content\":\"你好你好\"}".as_bytes();
        // 13 bytes of syntax and key, four wide characters.
        assert_eq!(request_tokens(wide), (13 + 16_u64).div_ceil(4));
        let image = format!(
            "{{\"content\":[{{\"type\":\"image_url\",\"image_url\":{{\"url\":\"data:image/png;base64,{}\"}}}}]}}",
            "A".repeat(100_000)
        );
        assert!(request_tokens(image.as_bytes()) < 30, "the base64 counted");
        assert_eq!(request_tokens(b""), 1);
    }
}
