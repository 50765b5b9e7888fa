//! A leaf: token counts read from the relayed bytes as they pass (streams and JSON bodies alike), for the token
//! limits' settlement, the usage records and the tokens metric; what an answer is charged ([`charged`]: the
//! vendor's usage, else an [`estimate`]); the usage rows ([`Totals`]). OpenAI-style streams end with a chunk carrying `"usage":{"prompt_tokens":N,"completion_tokens":M}`
//! (when the request asked for `stream_options.include_usage`); OpenAI's Responses API (`response.completed`) and
//! Anthropic's messages stream say `"input_tokens"` / `"output_tokens"` (the last value of each wins, so
//! Anthropic's running `output_tokens` ends at its final count); [`UsageScanner`] finds those numbers without
//! copying or parsing the events: a `memmem` for `_tokens"` over each frame, and at most 64 bytes kept from the
//! previous frame so that a key or a number split across two frames is still read. Inside JSON strings a quote is
//! always escaped, so the text of an answer cannot forge the key.

pub mod estimate;

use bytes::Bytes;
use memchr::memmem;

const NEEDLE: &[u8] = b"_tokens\"";
/// Gemini's `usageMetadata` keys (`promptTokenCount`, `candidatesTokenCount`, `thoughtsTokenCount`).
const GEMINI_NEEDLE: &[u8] = b"TokenCount\"";
/// Gemini's end of an answer: a `finishReason` (the last chunk) or `blockReason` (a prompt refused).
const REASON_NEEDLE: &[u8] = b"Reason\"";
/// Bytes kept from the end of the previous frame: enough for `"completion_tokens": ` and a number.
const TAIL: usize = 64;

/// Which count a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Prompt = 0,
    Completion = 1,
    /// Gemini's thinking tokens: billed as output, reported apart.
    Thoughts = 2,
}

/// How a vendor reports usage in its stream (a route's dialect decides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Keys {
    /// `prompt_tokens`/`completion_tokens` (OpenAI, Azure OpenAI), `input_tokens`/`output_tokens` (Anthropic, the
    /// Responses API); the last value of each wins.
    #[default]
    Tokens,
    /// Gemini's running `usageMetadata` (`promptTokenCount`, `candidatesTokenCount` plus `thoughtsTokenCount`);
    /// the last value of each wins. The answer is complete only once a `finishReason` or `blockReason` passed.
    TokenCount,
}

/// The token counts a stream reported, if it reported any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

/// What streams added up to, for one tenant, route and model (usage accounting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Streams that ended (however they ended).
    pub streams: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Streams that ended without reporting usage (cancelled, truncated, or a vendor that reports none): their
    /// tokens are unknown, their bytes and events are counted.
    pub streams_without_usage: u64,
    /// Body bytes relayed from the vendor, and complete events.
    pub bytes: u64,
    pub events: u64,
    /// Of the prompt and completion tokens, those estimated ([`estimate`]) rather than reported by the vendor:
    /// answers without usage, and answers cut before their usage was final.
    pub estimated_tokens: u64,
}

impl Totals {
    /// Field names, in [`Totals::values`] order (the store's hash fields).
    pub const FIELDS: [&'static str; 7] = [
        "streams",
        "prompt_tokens",
        "completion_tokens",
        "streams_without_usage",
        "bytes",
        "events",
        "estimated_tokens",
    ];

    /// One answer's share: the tokens it was charged, its bytes and events.
    pub fn stream(charged: Charged, bytes: u64, events: u64) -> Self {
        let t = charged.tokens;
        Self {
            streams: 1,
            prompt_tokens: t.prompt,
            completion_tokens: t.completion,
            streams_without_usage: u64::from(charged.source != Source::Reported),
            bytes,
            events,
            estimated_tokens: charged.estimated,
        }
    }

    pub fn values(&self) -> [u64; 7] {
        [
            self.streams,
            self.prompt_tokens,
            self.completion_tokens,
            self.streams_without_usage,
            self.bytes,
            self.events,
            self.estimated_tokens,
        ]
    }

    fn fields_mut(&mut self) -> [&mut u64; 7] {
        [
            &mut self.streams,
            &mut self.prompt_tokens,
            &mut self.completion_tokens,
            &mut self.streams_without_usage,
            &mut self.bytes,
            &mut self.events,
            &mut self.estimated_tokens,
        ]
    }

    /// Adds `value` to the field named `name` (unknown names are ignored).
    pub fn add_field(&mut self, name: &str, value: u64) {
        let at = Self::FIELDS.iter().position(|f| *f == name);
        if let Some(field) = at.and_then(|i| self.fields_mut().into_iter().nth(i)) {
            *field = field.saturating_add(value);
        }
    }

    pub fn add(&mut self, other: &Totals) {
        for (field, value) in self.fields_mut().into_iter().zip(other.values()) {
            *field = field.saturating_add(value);
        }
    }
}

/// Where an answer's charged tokens come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// The vendor's usage.
    #[default]
    Reported,
    /// An estimate ([`estimate`]): the answer ended without usage.
    Estimated,
    /// The vendor's prompt count with an estimated completion: the answer was cut after a usage that was not
    /// final yet (Anthropic's running count), and its text so far is longer than that count.
    Partial,
}

impl Source {
    /// The fixed name logs and metrics use.
    pub fn name(self) -> &'static str {
        match self {
            Source::Reported => "reported",
            Source::Estimated => "estimated",
            Source::Partial => "partial",
        }
    }
}

/// What an answer is charged, and how it was known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charged {
    pub tokens: Tokens,
    pub source: Source,
    /// How many of `tokens` are estimates.
    pub estimated: u64,
}

impl Charged {
    pub fn total(&self) -> u64 {
        self.tokens.prompt.saturating_add(self.tokens.completion)
    }
}

/// What an answer is charged: the vendor's usage when the answer ended complete with one; else the estimate of
/// the request's prompt (`prompt_estimate`) and of the answer's text so far (`answer_estimate`), keeping whichever
/// counts the vendor did report and the larger completion when the answer was cut after a running count.
pub fn charged(
    reported: Option<Tokens>,
    complete: bool,
    prompt_estimate: u64,
    answer_estimate: u64,
) -> Charged {
    match reported {
        Some(tokens) if complete || tokens.completion >= answer_estimate => Charged {
            tokens,
            source: Source::Reported,
            estimated: 0,
        },
        Some(tokens) => Charged {
            tokens: Tokens {
                prompt: tokens.prompt,
                completion: answer_estimate,
            },
            source: Source::Partial,
            estimated: answer_estimate,
        },
        None => Charged {
            tokens: Tokens {
                prompt: prompt_estimate,
                completion: answer_estimate,
            },
            source: Source::Estimated,
            estimated: prompt_estimate + answer_estimate,
        },
    }
}

/// What the relay knows of an OpenAI-style request body before calling the vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The request's `model` (at most 128 bytes, control characters replaced), for the usage records.
    pub model: Option<String>,
    /// `"stream": true`.
    pub stream: bool,
    /// `stream_options.include_usage` is `true`: the client wants the usage chunk.
    pub usage: bool,
    /// The answer's cap: `max_tokens`, `max_completion_tokens` (chat completions), `max_output_tokens` (the
    /// Responses API) or `generationConfig.maxOutputTokens` (Gemini), the largest if several are given.
    pub max_output: Option<u64>,
}

/// Reads `model`, `stream` and `stream_options.include_usage` (`None`: not a JSON object).
pub fn asked(body: &[u8]) -> Option<Asked> {
    #[derive(serde::Deserialize)]
    struct Options {
        include_usage: Option<bool>,
    }
    /// Gemini's answer cap.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Generation {
        max_output_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        model: Option<String>,
        stream: Option<bool>,
        stream_options: Option<Options>,
        max_tokens: Option<u64>,
        max_completion_tokens: Option<u64>,
        max_output_tokens: Option<u64>,
        #[serde(rename = "generationConfig")]
        generation_config: Option<Generation>,
    }
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let p: Probe = serde_json::from_slice(body).ok()?;
    let model = p.model.map(|m| {
        let mut m: String = m
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if m.len() > 128 {
            let cut = (0..=128)
                .rev()
                .find(|i| m.is_char_boundary(*i))
                .unwrap_or(0);
            m.truncate(cut);
        }
        m
    });
    Some(Asked {
        model,
        stream: p.stream == Some(true),
        usage: p.stream_options.and_then(|o| o.include_usage) == Some(true),
        max_output: [
            p.max_tokens,
            p.max_completion_tokens,
            p.max_output_tokens,
            p.generation_config.and_then(|g| g.max_output_tokens),
        ]
        .into_iter()
        .flatten()
        .max(),
    })
}

/// The body with `stream_options.include_usage` set to `true`, for a streaming request that did not ask for usage
/// (`None`: leave the body as it is). Without `stream_options` the key is added as the object's first member and
/// every other byte stays as the client sent it; when `stream_options` is there (without `include_usage: true`) the
/// body is written again from its parsed form (same members and values; key order and number spelling may
/// change).
pub fn ask_for_usage(body: &[u8], asked: &Asked) -> Option<Bytes> {
    if !asked.stream || asked.usage {
        return None;
    }
    let mut value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).ok()?;
    match value.get_mut("stream_options") {
        None => {
            let open = body.iter().position(|b| *b == b'{')?;
            let member = b"\"stream_options\":{\"include_usage\":true},";
            let rest = &body[open + 1..];
            // `{}` would need no comma; a streaming request always has members.
            let mut out = Vec::with_capacity(body.len() + member.len());
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(member);
            out.extend_from_slice(rest);
            Some(Bytes::from(out))
        }
        Some(serde_json::Value::Object(options)) => {
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            serde_json::to_vec(&value).ok().map(Bytes::from)
        }
        // `stream_options: null` or another non-object: replaced.
        Some(other) => {
            *other = serde_json::json!({"include_usage": true});
            serde_json::to_vec(&value).ok().map(Bytes::from)
        }
    }
}

/// Incremental scanner over one stream's bytes.
#[derive(Debug)]
pub struct UsageScanner {
    keys: Keys,
    finder: memmem::Finder<'static>,
    /// Gemini: the end-of-answer key.
    reason: Option<memmem::Finder<'static>>,
    tail: [u8; TAIL],
    tail_len: usize,
    counts: [Option<u64>; 3],
    reason_seen: bool,
}

impl Default for UsageScanner {
    fn default() -> Self {
        Self::new(Keys::Tokens)
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

/// Which key ends just before the needle at `at`, if any.
fn kind_before(keys: Keys, bytes: &[u8], at: usize) -> Option<Kind> {
    let before = &bytes[..at];
    let is = |name: &[u8]| before.ends_with(name);
    match keys {
        Keys::Tokens if is(b"\"prompt") || is(b"\"input") => Some(Kind::Prompt),
        Keys::Tokens if is(b"\"completion") || is(b"\"output") => Some(Kind::Completion),
        Keys::TokenCount if is(b"\"prompt") => Some(Kind::Prompt),
        Keys::TokenCount if is(b"\"candidates") => Some(Kind::Completion),
        Keys::TokenCount if is(b"\"thoughts") => Some(Kind::Thoughts),
        _ => None,
    }
}

impl UsageScanner {
    /// A scanner for a vendor that reports usage as `keys` says.
    pub fn new(keys: Keys) -> Self {
        let (needle, reason) = match keys {
            Keys::Tokens => (NEEDLE, None),
            Keys::TokenCount => (GEMINI_NEEDLE, Some(memmem::Finder::new(REASON_NEEDLE))),
        };
        Self {
            keys,
            finder: memmem::Finder::new(needle),
            reason,
            tail: [0; TAIL],
            tail_len: 0,
            counts: [None; 3],
            reason_seen: false,
        }
    }

    /// Whether the stream showed its end where the vendor marks it in the data (Gemini's `finishReason` or
    /// `blockReason`); true for vendors that end with a terminal line instead.
    pub fn end_seen(&self) -> bool {
        self.reason.is_none() || self.reason_seen
    }

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
        let (keys, skip) = (self.keys, self.finder.needle().len());
        let counts = &mut self.counts;
        let mut read = |bytes: &[u8], at: usize| {
            if let (Some(kind), Some(n)) =
                (kind_before(keys, bytes, at), number_at(bytes, at + skip))
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
        if let Some(reason) = self.reason.as_ref().filter(|_| !self.reason_seen) {
            let ends = |bytes: &[u8], at: usize| {
                let before = &bytes[..at];
                before.ends_with(b"\"finish") || before.ends_with(b"\"block")
            };
            self.reason_seen = reason.find_iter(window).any(|at| ends(window, at))
                || reason.find_iter(data).any(|at| ends(data, at));
        }
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

    /// The counts, when the stream reported both (Gemini: its prompt count; it leaves out a candidates count of
    /// 0, and its thinking tokens count as completion).
    pub fn tokens(&self) -> Option<Tokens> {
        let [prompt, completion, thoughts] = self.counts;
        let completion = match self.keys {
            Keys::Tokens => completion?,
            Keys::TokenCount => completion
                .unwrap_or(0)
                .saturating_add(thoughts.unwrap_or(0)),
        };
        Some(Tokens {
            prompt: prompt?,
            completion,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_asked_for_on_streams_that_did_not_ask_and_nothing_else_changes() {
        let body = br#" {"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"1.50e3 \u00e9"}],"temperature":0.70}"#;
        let a = asked(body).unwrap();
        assert_eq!(a.model.as_deref(), Some("gpt-4o-mini"));
        assert!(a.stream && !a.usage);
        let out = ask_for_usage(body, &a).unwrap();
        let want = br#" {"stream_options":{"include_usage":true},"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"1.50e3 \u00e9"}],"temperature":0.70}"#;
        assert_eq!(&out[..], &want[..]);
        // Asked already, or not streaming: left alone.
        let yes = br#"{"stream":true,"stream_options":{"include_usage":true}}"#;
        assert_eq!(ask_for_usage(yes, &asked(yes).unwrap()), None);
        let no_stream = br#"{"model":"m","messages":[]}"#;
        assert_eq!(ask_for_usage(no_stream, &asked(no_stream).unwrap()), None);
        // stream_options without include_usage (or false): set to true, the rest kept.
        let off = br#"{"stream":true,"stream_options":{"include_usage":false,"x":1},"n":2}"#;
        let out = ask_for_usage(off, &asked(off).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
        assert_eq!(v["n"], 2);
        // Not JSON objects.
        assert_eq!(asked(b"[1]"), None);
        assert_eq!(asked(b"{"), None);
        let long = format!("{{\"model\":\"{}\\n\"}}", "é".repeat(100));
        let m = asked(long.as_bytes()).unwrap().model.unwrap();
        assert!(m.len() <= 128 && !m.contains('\n'), "{m}");
    }

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
    fn gemini_running_usage_and_its_end_are_read_at_every_split() {
        let chunk = |text: &str, n: u32, finish: &str| {
            format!(
                "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{text}\"}}],\"role\":\"model\"}}{finish}}}],\
                 \"usageMetadata\":{{\"promptTokenCount\":9,\"candidatesTokenCount\":{n},\"totalTokenCount\":{},\
                 \"promptTokensDetails\":[{{\"modality\":\"TEXT\",\"tokenCount\":9}}],\"thoughtsTokenCount\":3}}}}\n\n",
                9 + n
            )
        };
        let stream = format!(
            "{}{}",
            chunk("a \\\"finishReason\\\": x", 1, ""),
            chunk("b", 2, ",\"finishReason\":\"STOP\"")
        );
        let bytes = stream.as_bytes();
        let gemini = |frames: &[&[u8]]| {
            let mut s = UsageScanner::new(Keys::TokenCount);
            frames.iter().for_each(|f| s.feed(f));
            (s.tokens(), s.end_seen())
        };
        let want = Tokens {
            prompt: 9,
            completion: 2 + 3,
        };
        for i in 0..=bytes.len() {
            assert_eq!(
                gemini(&[&bytes[..i], &bytes[i..]]),
                (Some(want), true),
                "split at {i}"
            );
        }
        // Cut before the last chunk: the running count so far, and no end (a truncation).
        let first = chunk("a \\\"finishReason\\\": x", 1, "");
        let (tokens, ended) = gemini(&[first.as_bytes()]);
        assert_eq!(
            (tokens.map(|t| t.completion), ended),
            (Some(4), false),
            "forged text is not an end"
        );
        let blocked = b"data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"},\"usageMetadata\":{\"promptTokenCount\":9}}\n\n";
        assert_eq!(
            gemini(&[blocked]),
            (
                Some(Tokens {
                    prompt: 9,
                    completion: 0
                }),
                true
            )
        );
        // The OpenAI keys mean nothing to a Gemini scanner, and the other way round; vendors with a terminal line
        // need no end in the data.
        assert_eq!(gemini(&[LAST]).0, None);
        let mut openai = UsageScanner::default();
        openai.feed(bytes);
        assert_eq!((openai.tokens(), openai.end_seen()), (None, true));
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
