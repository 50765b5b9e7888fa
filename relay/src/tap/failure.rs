//! What the client is told when its stream fails after the head was sent: one SSE `event: error`.
//!
//! Its `data` is read by three kinds of clients, so it carries three things at once:
//!
//! - an `error` object in the vendor's own shape, so that the official SDKs raise instead of yielding an empty
//!   chunk: the `openai` SDK raises `APIError` for any event whose data has an `error` member (chat completions
//!   and the Responses API alike), the `anthropic` SDK raises for `event: error`. OpenAI's object is
//!   `{"message","type","code"}`; Anthropic's is `{"type","message"}` inside `{"type":"error"}`, which is also the
//!   `type` a Responses API client dispatches on; Gemini's is Google's `{"code","message","status"}` (the
//!   `google-genai` SDK raises `APIError` for a streamed chunk with an `error` member);
//! - `kind`, `message` and `trace_id` at the top level, as before (the demo page, scripts, the error table);
//! - `code` = `kind` at the top level, which completes the Responses API's own `error` event shape.

use bytes::Bytes;

use crate::outcome::Failure;

/// Whose error shape a route's error events take (its dialect's, [`ErrorShape::for_dialect`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorShape {
    /// OpenAI's: `error.type` is `server_error` (a timeout: `timeout`), `error.code` the kind.
    #[default]
    Openai,
    /// Anthropic's: `error.type` is `api_error`, `timeout_error` or, for a relay shutting down, `overloaded_error`
    /// (the types its SDK retries).
    Anthropic,
    /// Google's: `error.code` an HTTP status (504 for a timeout, 503 for a vendor failure or a relay shutting
    /// down, 500 otherwise) and `error.status` its name.
    Gemini,
}

impl ErrorShape {
    /// The shape of a route's vendor: its dialect's.
    pub fn for_dialect(dialect: crate::config::Dialect) -> Self {
        use crate::config::Dialect;
        match dialect {
            Dialect::Openai | Dialect::AzureOpenai => ErrorShape::Openai,
            Dialect::Anthropic => ErrorShape::Anthropic,
            Dialect::Gemini => ErrorShape::Gemini,
        }
    }

    /// What the relay sends while the vendor is silent: an SSE comment, or for Gemini a bare blank line (the
    /// `google-genai` SDK reads every line that is not `data: …` as raw JSON and fails on a comment; a blank line
    /// with no data before it dispatches nothing in any SSE reader).
    pub fn keepalive(self) -> &'static [u8] {
        match self {
            ErrorShape::Gemini => b"\n",
            ErrorShape::Openai | ErrorShape::Anthropic => b": keep-alive\n\n",
        }
    }

    fn error_type(self, failure: Failure) -> &'static str {
        let timeout = matches!(
            failure,
            Failure::UpstreamFirstByteTimeout
                | Failure::UpstreamIdleTimeout
                | Failure::TotalTimeout
        );
        match (self, failure) {
            (ErrorShape::Openai, _) if timeout => "timeout",
            (ErrorShape::Openai, _) => "server_error",
            (ErrorShape::Anthropic, Failure::Shutdown) => "overloaded_error",
            (ErrorShape::Anthropic, _) if timeout => "timeout_error",
            (ErrorShape::Anthropic, _) => "api_error",
            (ErrorShape::Gemini, _) if timeout => "DEADLINE_EXCEEDED",
            (ErrorShape::Gemini, Failure::UpstreamProtocol) => "INTERNAL",
            (ErrorShape::Gemini, _) => "UNAVAILABLE",
        }
    }
}

/// The SSE error event for `failure`, preceded by a blank line unless the stream is at an event boundary.
pub fn error_event(
    failure: Failure,
    shape: ErrorShape,
    trace_id: &str,
    at_boundary: bool,
) -> Bytes {
    let (kind, message) = (failure.kind(), failure.message());
    // The SDKs show `error.message` as the exception's text: it names the failure.
    let named = format!("{message} ({kind}, trace id {trace_id})");
    let error = match shape {
        ErrorShape::Openai => serde_json::json!({
            "message": named,
            "type": shape.error_type(failure),
            "code": kind,
        }),
        ErrorShape::Anthropic => serde_json::json!({
            "type": shape.error_type(failure),
            "message": named,
        }),
        ErrorShape::Gemini => {
            let status = shape.error_type(failure);
            let code = match status {
                "DEADLINE_EXCEEDED" => 504,
                "INTERNAL" => 500,
                _ => 503,
            };
            serde_json::json!({"code": code, "message": named, "status": status})
        }
    };
    let data = serde_json::json!({
        "type": "error",
        "error": error,
        "code": kind,
        "kind": kind,
        "message": message,
        "trace_id": trace_id,
    });
    let lead = if at_boundary { "" } else { "\n\n" };
    if shape == ErrorShape::Gemini {
        // `google-genai` raises `APIError` only for a `data:` chunk whose JSON starts with `{"error":`, and fails
        // on an `event:` line (it reads every line that is not `data: …` as raw JSON): the error object first,
        // the relay's fields after it, no event name.
        // No top-level `message`: the SDK would show it instead of `error.message`, which names the kind and trace.
        let fields = serde_json::json!({"kind": kind, "trace_id": trace_id});
        let rest = fields.to_string();
        let error = data["error"].to_string();
        return Bytes::from(format!(
            "{lead}data: {{\"error\":{error},{}\n\n",
            &rest[1..]
        ));
    }
    Bytes::from(format!("{lead}event: error\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(event: &Bytes) -> serde_json::Value {
        let text = std::str::from_utf8(event).unwrap();
        let line = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn openai_clients_find_an_error_object_naming_the_failure() {
        let e = error_event(Failure::UpstreamReset, ErrorShape::Openai, "t-1", true);
        assert!(e.starts_with(b"event: error\ndata: {"));
        let d = data(&e);
        assert_eq!(d["error"]["code"], "upstream_reset");
        assert_eq!(d["error"]["type"], "server_error");
        let message = d["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("upstream_reset") && message.contains("t-1"),
            "{message}"
        );
        // The fields clients read before stay where they were.
        assert_eq!(
            (&d["kind"], &d["trace_id"], &d["type"]),
            (
                &serde_json::json!("upstream_reset"),
                &serde_json::json!("t-1"),
                &serde_json::json!("error")
            )
        );
        assert_eq!(d["message"], Failure::UpstreamReset.message());
        let idle = data(&error_event(
            Failure::UpstreamIdleTimeout,
            ErrorShape::Openai,
            "t",
            true,
        ));
        assert_eq!(idle["error"]["type"], "timeout");
    }

    #[test]
    fn anthropic_routes_get_anthropic_error_types() {
        use crate::config::Dialect;
        assert_eq!(
            ErrorShape::for_dialect(Dialect::Anthropic),
            ErrorShape::Anthropic
        );
        assert_eq!(
            ErrorShape::for_dialect(Dialect::AzureOpenai),
            ErrorShape::Openai
        );
        assert_eq!(ErrorShape::for_dialect(Dialect::Gemini), ErrorShape::Gemini);
        let d = data(&error_event(
            Failure::Shutdown,
            ErrorShape::Anthropic,
            "t",
            true,
        ));
        assert_eq!(d["type"], "error");
        assert_eq!(d["error"]["type"], "overloaded_error");
        assert!(d["error"].get("code").is_none());
        let d = data(&error_event(
            Failure::TotalTimeout,
            ErrorShape::Anthropic,
            "t",
            true,
        ));
        assert_eq!(d["error"]["type"], "timeout_error");
    }

    #[test]
    fn gemini_error_chunks_start_with_the_error_object_and_have_no_event_line() {
        let e = error_event(Failure::UpstreamReset, ErrorShape::Gemini, "t", true);
        assert!(e.starts_with(b"data: {\"error\":{"), "{e:?}");
        assert!(!e.windows(6).any(|w| w == b"event:"));
        assert_eq!(ErrorShape::Gemini.keepalive(), b"\n");
        let half = error_event(Failure::UpstreamReset, ErrorShape::Gemini, "t", false);
        assert!(half.starts_with(b"\n\ndata: {\"error\":"));
    }

    #[test]
    fn gemini_routes_get_google_s_error_object() {
        let cases = [
            (Failure::UpstreamReset, 503, "UNAVAILABLE"),
            (Failure::Shutdown, 503, "UNAVAILABLE"),
            (Failure::UpstreamIdleTimeout, 504, "DEADLINE_EXCEEDED"),
            (Failure::UpstreamProtocol, 500, "INTERNAL"),
        ];
        for (failure, code, status) in cases {
            let d = data(&error_event(failure, ErrorShape::Gemini, "t-9", true));
            assert_eq!(
                (&d["error"]["code"], &d["error"]["status"]),
                (&serde_json::json!(code), &serde_json::json!(status))
            );
            let message = d["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(failure.kind()) && message.contains("t-9"),
                "{message}"
            );
            assert_eq!(d["kind"], failure.kind());
        }
    }

    #[test]
    fn a_half_sent_event_is_closed_first() {
        let e = error_event(Failure::UpstreamTruncated, ErrorShape::Openai, "t", false);
        assert!(e.starts_with(b"\n\nevent: error\n"));
    }
}
