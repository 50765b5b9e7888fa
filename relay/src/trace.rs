//! The trace id: names a request in every log line, in the `x-trace-id` response header and in error bodies.
//!
//! A fresh random id is made when a request arrives ([`new_trace_id`]); once the vendor answers with an
//! `x-trace-id` of its own that passes [`upstream_trace_id`]'s filter, that id replaces it, so the client, the
//! relay's logs and the vendor's logs name the stream the same way. A leaf: [`crate::error`] and
//! [`crate::stack`] use it.

use http::HeaderMap;

/// Header carrying the trace id, both from the vendor and to the client.
pub const TRACE_ID: &str = "x-trace-id";

/// A random 128-bit id, 32 lower-case hex digits.
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The vendor's trace id, when it is a short printable token (anything else could forge log lines or headers).
pub fn upstream_trace_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(TRACE_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn fresh_ids_are_unique_hex() {
        let (a, b) = (new_trace_id(), new_trace_id());
        assert_ne!(a, b);
        assert!(
            a.len() == 32 && a.bytes().all(|c| c.is_ascii_hexdigit()),
            "{a}"
        );
    }

    #[test]
    fn only_short_printable_vendor_ids_are_taken() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(TRACE_ID, HeaderValue::from_static(v));
            upstream_trace_id(&h).map(str::to_owned)
        };
        assert_eq!(with("mock-1-2").as_deref(), Some("mock-1-2"));
        assert_eq!(with(""), None);
        assert_eq!(with("a b"), None);
        assert_eq!(with(Box::leak("x".repeat(129).into_boxed_str())), None);
    }
}
