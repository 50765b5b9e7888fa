//! The vendor wire formats the mock speaks: OpenAI chat completions (Azure OpenAI's too), OpenAI's Responses API,
//! Anthropic's messages, Google Gemini's `streamGenerateContent` (`alt=sse`), and the blog post's `send-message`
//! API.
//!
//! A dialect only formats bytes; timing, splitting and faults live in [`crate::stream`].

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

/// Text the answers are cut from: mixed Chinese and ASCII so multi-byte characters land on every frame boundary.
const ANSWER: &str = "你好！这是来自模拟上游的流式回答。每个数据块都带有发送时间 ts，\
中继必须原样转发 SSE 字节。Relay 不应拆坏任何中文字符，也不应缓冲。";

/// Which vendor API a stream imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `POST /v1/chat/completions`: `data: {chat.completion.chunk}` events, then `data: [DONE]`.
    OpenAi { include_usage: bool },
    /// `POST /api/send-message`: `data: {"type":"delta","text":…}` events, then `event: done`.
    SendMessage,
    /// `POST /v1/responses`: typed events (`response.created`, `response.output_text.delta`, …), ending with
    /// `event: response.completed` (which carries the usage).
    Responses,
    /// `POST /v1/messages`: `message_start` (input tokens), `content_block_delta`s, `message_delta` (the cumulative
    /// output tokens), then `event: message_stop`.
    Anthropic,
    /// `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`: `data:` chunks each carrying the running
    /// `usageMetadata`; the last has a `finishReason`; no terminal event, the body just ends.
    Gemini,
}

/// Wall-clock nanoseconds since the Unix epoch, the clock both ends of a one-way delay measurement share.
pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The emission stamp (`ts=<unix nanos>;`) of an event the mock sent, if it has one: the reading half of the
/// wire format [`chunk_text`] writes. Arrival time minus this is the chunk's one-way delay.
pub fn event_ts(event: &[u8]) -> Option<u128> {
    let at = memchr_ts(event)? + 3;
    let end = event[at..].iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&event[at..at + end]).ok()?.parse().ok()
}

fn memchr_ts(hay: &[u8]) -> Option<usize> {
    hay.windows(3).position(|w| w == b"ts=")
}

/// The chunk text for content chunk `index`: `ts=<unix nanos>;` then the next `bytes / 3` characters of `ANSWER`
/// (about `bytes` bytes of mostly three-byte characters), so consecutive chunks read as one continuous answer.
/// Built from whole slices of the text (memcpy), since flood scenarios make megabytes of it.
pub fn chunk_text(index: u32, bytes: usize) -> String {
    let chars: Vec<usize> = ANSWER.char_indices().map(|(i, _)| i).collect();
    let total = chars.len();
    let mut want = (bytes / 3).max(1);
    let mut at = (index as usize).wrapping_mul(want) % total;
    let mut text = String::with_capacity(want * 3 + 32);
    text.push_str(&format!("ts={};", unix_nanos()));
    while want > 0 {
        let take = want.min(total - at);
        let end = chars.get(at + take).copied().unwrap_or(ANSWER.len());
        text.push_str(&ANSWER[chars[at]..end]);
        want -= take;
        at = 0;
    }
    text
}

/// The whole answer for a non-streaming request of `chunks` chunks.
pub fn full_text(chunks: u32, bytes: usize) -> String {
    (0..chunks).map(|i| chunk_text(i, bytes)).collect()
}

impl Dialect {
    /// One content event.
    pub fn content_event(self, id: &str, index: u32, text: &str) -> String {
        match self {
            Dialect::OpenAi { .. } => {
                let delta = if index == 0 {
                    json!({"role": "assistant", "content": text})
                } else {
                    json!({"content": text})
                };
                openai_chunk(
                    id,
                    json!([{"index": 0, "delta": delta, "finish_reason": null}]),
                    None,
                )
            }
            Dialect::SendMessage => format!("data: {}\n\n", json!({"type": "delta", "text": text})),
            Dialect::Anthropic => {
                let mut out = String::new();
                if index == 0 {
                    let start = json!({"type": "message_start", "message": {"id": format!("msg_{id}"),
                        "type": "message", "role": "assistant", "model": "mock-1", "content": [],
                        "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": 9, "output_tokens": 1}}});
                    out.push_str(&typed_event(&start));
                    let block = json!({"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}});
                    out.push_str(&typed_event(&block));
                }
                let delta = json!({"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": text}});
                out.push_str(&typed_event(&delta));
                out
            }
            Dialect::Gemini => gemini_chunk(id, text, None, index + 1),
            Dialect::Responses => {
                let mut out = String::new();
                if index == 0 {
                    let created = json!({"type": "response.created", "sequence_number": 0,
                                         "response": response(id, "in_progress", None, None)});
                    out.push_str(&typed_event(&created));
                }
                let delta = json!({"type": "response.output_text.delta", "sequence_number": index + 1,
                                   "item_id": format!("msg_{id}"), "output_index": 0, "content_index": 0,
                                   "delta": text, "logprobs": []});
                out.push_str(&typed_event(&delta));
                out
            }
        }
    }

    /// Whether the closing events report usage (prompt 9, completion one per chunk: [`usage`]).
    pub fn reports_usage(self) -> bool {
        match self {
            Dialect::OpenAi { include_usage } => include_usage,
            Dialect::SendMessage => false,
            Dialect::Responses | Dialect::Anthropic | Dialect::Gemini => true,
        }
    }

    /// Events that end an answer the vendor's safety system stopped after `chunks` chunks (`x-mock-block-after`):
    /// a complete answer in each dialect's terms (Gemini: `finishReason: SAFETY`, or `promptFeedback.blockReason`
    /// when nothing was generated, both as a 200; OpenAI: `finish_reason: content_filter`; Anthropic:
    /// `stop_reason: refusal`).
    pub fn blocked_events(self, id: &str, chunks: u32) -> String {
        match self {
            Dialect::Gemini if chunks == 0 => {
                let chunk = json!({"promptFeedback": {"blockReason": "SAFETY",
                    "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
                    "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
                    "modelVersion": "mock-1", "responseId": id});
                format!("data: {chunk}\n\n")
            }
            Dialect::Gemini => gemini_chunk(id, "", Some("SAFETY"), chunks),
            Dialect::OpenAi { .. } => {
                let mut out = openai_chunk(
                    id,
                    json!([{"index": 0, "delta": {}, "finish_reason": "content_filter"}]),
                    None,
                );
                out.push_str("data: [DONE]\n\n");
                out
            }
            Dialect::Anthropic => anthropic_closing(chunks, "refusal"),
            Dialect::SendMessage | Dialect::Responses => self.closing_events(id, chunks),
        }
    }

    /// Events after the last content chunk of a complete answer, terminal event included.
    pub fn closing_events(self, id: &str, chunks: u32) -> String {
        match self {
            Dialect::OpenAi { include_usage } => {
                let mut out = openai_chunk(
                    id,
                    json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
                    None,
                );
                if include_usage {
                    out.push_str(&openai_chunk(id, json!([]), Some(usage(chunks))));
                }
                out.push_str("data: [DONE]\n\n");
                out
            }
            Dialect::SendMessage => "event: done\ndata: {\"type\":\"done\"}\n\n".to_owned(),
            Dialect::Anthropic => anthropic_closing(chunks, "end_turn"),
            Dialect::Gemini => gemini_chunk(id, "", Some("STOP"), chunks),
            Dialect::Responses => {
                let done = json!({"type": "response.completed", "sequence_number": chunks + 1,
                                  "response": response(id, "completed", None, Some(chunks))});
                typed_event(&done)
            }
        }
    }
}

/// Anthropic's closing events: the block's end, the final (cumulative) output tokens, `message_stop`.
fn anthropic_closing(chunks: u32, stop_reason: &str) -> String {
    let mut out = typed_event(&json!({"type": "content_block_stop", "index": 0}));
    out.push_str(&typed_event(&json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": chunks}})));
    out.push_str(&typed_event(&json!({"type": "message_stop"})));
    out
}

/// One Gemini chunk: `text`, the running usage (`candidates` tokens so far), and a `finishReason` on the last.
fn gemini_chunk(id: &str, text: &str, finish: Option<&str>, candidates: u32) -> String {
    let mut candidate =
        json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
    if let Some(reason) = finish {
        candidate["finishReason"] = json!(reason);
    }
    let chunk = json!({"candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": candidates,
                          "totalTokenCount": 9 + candidates},
        "modelVersion": "mock-1", "responseId": id});
    format!("data: {chunk}\n\n")
}

/// A non-streaming Anthropic message.
pub fn anthropic_message(id: &str, chunks: u32, bytes: usize) -> serde_json::Value {
    json!({"id": format!("msg_{id}"), "type": "message", "role": "assistant", "model": "mock-1",
           "content": [{"type": "text", "text": full_text(chunks, bytes)}],
           "stop_reason": "end_turn", "stop_sequence": null,
           "usage": {"input_tokens": 9, "output_tokens": chunks}})
}

/// A non-streaming Gemini answer (`:generateContent`).
pub fn gemini_answer(id: &str, chunks: u32, bytes: usize) -> serde_json::Value {
    json!({"candidates": [{"content": {"parts": [{"text": full_text(chunks, bytes)}], "role": "model"},
                           "finishReason": "STOP", "index": 0}],
           "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": chunks,
                             "totalTokenCount": 9 + chunks},
           "modelVersion": "mock-1", "responseId": id})
}

/// A Responses API event: `event: <type>` and the JSON as `data`.
fn typed_event(event: &serde_json::Value) -> String {
    let kind = event["type"].as_str().unwrap_or_default();
    format!("event: {kind}\ndata: {event}\n\n")
}

/// A Responses API `response` object; `text`: the whole answer (non-streaming), `chunks`: the usage to report.
pub fn response(
    id: &str,
    status: &str,
    text: Option<String>,
    chunks: Option<u32>,
) -> serde_json::Value {
    let output = match text {
        Some(t) => {
            json!([{"type": "message", "id": format!("msg_{id}"), "role": "assistant", "status": "completed",
                           "content": [{"type": "output_text", "text": t, "annotations": []}]}])
        }
        None => json!([]),
    };
    let usage = chunks.map(|c| {
        json!({"input_tokens": 9, "output_tokens": c, "total_tokens": 9 + c,
               "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}})
    });
    json!({"id": format!("resp_{id}"), "object": "response", "created_at": unix_nanos() / 1_000_000_000,
           "status": status, "model": "mock-1", "output": output, "usage": usage})
}

/// Token counts the mock reports: one completion token per chunk, a fixed prompt.
pub fn usage(chunks: u32) -> serde_json::Value {
    json!({"prompt_tokens": 9, "completion_tokens": chunks, "total_tokens": 9 + chunks})
}

fn openai_chunk(id: &str, choices: serde_json::Value, usage: Option<serde_json::Value>) -> String {
    let mut chunk = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": unix_nanos() / 1_000_000_000,
        "model": "mock-1",
        "choices": choices,
    });
    if let Some(u) = usage {
        chunk["usage"] = u;
    }
    format!("data: {chunk}\n\n")
}

/// A non-streaming chat completion.
pub fn completion(id: &str, chunks: u32, bytes: usize) -> serde_json::Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_nanos() / 1_000_000_000,
        "model": "mock-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": full_text(chunks, bytes)},
                     "finish_reason": "stop"}],
        "usage": usage(chunks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_text_starts_with_timestamp_and_holds_chinese() {
        for i in 0..200 {
            let t = chunk_text(i, 24);
            assert!(t.starts_with("ts="));
            let stamped = event_ts(format!("data: {t}\n\n").as_bytes());
            assert!(stamped.is_some_and(|ts| ts > 0), "{t}");
            assert!(t.contains(';'));
            assert!(
                t.chars().any(|c| c.len_utf8() == 3),
                "chunk {i} has no Chinese: {t}"
            );
        }
    }

    #[test]
    fn openai_closing_has_usage_only_when_asked() {
        let with = Dialect::OpenAi {
            include_usage: true,
        }
        .closing_events("x", 4);
        assert!(with.contains("\"completion_tokens\":4"));
        assert!(with.ends_with("data: [DONE]\n\n"));
        let without = Dialect::OpenAi {
            include_usage: false,
        }
        .closing_events("x", 4);
        assert!(!without.contains("usage"));
    }

    #[test]
    fn each_dialect_ends_its_own_way() {
        let anthropic = Dialect::Anthropic.closing_events("x", 4);
        assert!(
            anthropic.contains("\"output_tokens\":4")
                && anthropic
                    .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
        );
        let first = Dialect::Anthropic.content_event("x", 0, "t");
        assert!(
            first.starts_with("event: message_start\n") && first.contains("\"input_tokens\":9")
        );
        // Gemini: a running usage on every chunk, a finishReason on the last, no terminal line.
        let chunk = Dialect::Gemini.content_event("x", 2, "t");
        assert!(chunk.contains("\"candidatesTokenCount\":3") && !chunk.contains("finishReason"));
        let last = Dialect::Gemini.closing_events("x", 4);
        assert!(
            last.contains("\"finishReason\":\"STOP\"")
                && !last.contains("[DONE]")
                && last.ends_with("\n\n")
        );
        let blocked = Dialect::Gemini.blocked_events("x", 0);
        assert!(blocked.contains("\"blockReason\":\"SAFETY\""));
        assert!(
            Dialect::Gemini
                .blocked_events("x", 2)
                .contains("\"finishReason\":\"SAFETY\"")
        );
    }
}
