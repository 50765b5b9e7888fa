//! Header policy, both directions: which request headers may reach the vendor and which response headers may
//! reach the client. A leaf: [`crate::config`] checks a route's `forward_headers` against it, [`crate::upstream`]
//! applies it to every call, and [`crate::stack`] to every answer.

use http::header::{self, HeaderMap, HeaderName};

/// Request headers forwarded when present (plus a route's `forward_headers`). Everything else is dropped:
/// hop-by-hop headers, `Host`, cookies and the client's own `Authorization` never reach the vendor.
pub const DEFAULT_FORWARD: &[&str] = &[
    "content-type",
    "accept",
    "accept-language",
    "user-agent",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "anthropic-version",
    "anthropic-beta",
];

/// Headers no configuration may forward: hop-by-hop (RFC 9110 §7.6.1), framing, credentials, routing.
pub const NEVER_FORWARD: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "cookie",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    // W3C trace context: a route's `propagate_trace` decides, and the relay writes its own.
    "traceparent",
    "tracestate",
];

/// Vendor response headers passed to the client (besides the ones the relay sets itself).
const RESPONSE_ALLOW: &[&str] = &[
    "content-type",
    "retry-after",
    "x-request-id",
    "openai-processing-ms",
];
/// Vendor response header prefixes passed to the client (rate-limit information helps clients back off).
const RESPONSE_ALLOW_PREFIX: &[&str] = &["x-ratelimit-", "anthropic-ratelimit-"];

/// Whether a `forward_headers` entry (a name, or a `prefix*` pattern) would let a never-forwarded header through.
pub fn refused_pattern(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => NEVER_FORWARD.iter().any(|n| n.starts_with(prefix)),
        None => NEVER_FORWARD.contains(&pattern),
    }
}

/// The inbound headers the vendor may see under `extra` (the route's `forward_headers`). Names listed in
/// `Connection` are hop-by-hop for this message and are dropped too.
pub fn forwarded<'a>(
    inbound: &'a HeaderMap,
    extra: &'a [String],
) -> impl Iterator<Item = (&'a HeaderName, &'a http::HeaderValue)> {
    let listed = connection_listed(inbound);
    inbound.iter().filter(move |(name, _)| {
        forwardable(name, extra) && !listed.iter().any(|l| l == name.as_str())
    })
}

/// True when `name` may be forwarded upstream under `extra` (`x-foo-*` patterns allowed).
fn forwardable(name: &HeaderName, extra: &[String]) -> bool {
    let n = name.as_str();
    DEFAULT_FORWARD.contains(&n)
        || extra.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => n.starts_with(prefix),
            None => n == p,
        })
}

fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Copies the allow-listed vendor response headers (never hop-by-hop ones, `Set-Cookie` or `Server`).
pub fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let n = name.as_str();
        if RESPONSE_ALLOW.contains(&n) || RESPONSE_ALLOW_PREFIX.iter().any(|p| n.starts_with(p)) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The size of a request head as sent in the usual form (`METHOD target HTTP/1.1`, `name: value` lines, CRLFs):
/// what [`crate::config::ServerLimits::max_header_bytes`] limits. hyper enforces that limit only on a head it had
/// to read in several parts (its buffer cap); a head that arrived in one read is measured here. Optional
/// whitespace the parser dropped is not counted, so this never exceeds the bytes on the wire.
pub fn head_len(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let target = match (uri.scheme(), uri.path_and_query()) {
        (None, Some(pq)) => pq.as_str().len(),
        (None, None) => uri.authority().map_or(1, |a| a.as_str().len()),
        (Some(_), _) => uri.to_string().len(),
    };
    let request_line = method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + 2)
        .sum();
    request_line + fields + 2
}

/// Whether a response is an event stream (`Content-Type: text/event-stream`, any parameters).
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_len_counts_the_usual_wire_form() {
        let head = "POST /v1/chat/completions?a=1 HTTP/1.1\r\nhost: x\r\nx-pad: 0123456789\r\n\r\n";
        let mut headers = HeaderMap::new();
        headers.insert("host", http::HeaderValue::from_static("x"));
        headers.insert("x-pad", http::HeaderValue::from_static("0123456789"));
        let uri: http::Uri = "/v1/chat/completions?a=1".parse().unwrap_or_default();
        assert_eq!(head_len(&http::Method::POST, &uri, &headers), head.len());
    }
}
