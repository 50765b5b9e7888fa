//! What the client is told when its stream fails after the head was sent: one SSE `event: error`.

use bytes::Bytes;

use crate::outcome::Failure;

/// The SSE error event for `failure`, preceded by a blank line unless the stream is at an event boundary.
pub fn error_event(failure: Failure, trace_id: &str, at_boundary: bool) -> Bytes {
    let data = serde_json::json!({
        "kind": failure.kind(),
        "message": failure.message(),
        "trace_id": trace_id,
    });
    let lead = if at_boundary { "" } else { "\n\n" };
    Bytes::from(format!("{lead}event: error\ndata: {data}\n\n"))
}
