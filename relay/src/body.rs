//! Reading the request body, bounded: the whole body is read (it is small: a prompt) before the vendor is called,
//! because failover may send it more than once. More than `max_request_body_bytes` is refused, up front when
//! `Content-Length` says so, else as soon as the count passes the limit. Generic over the body type, so the stage
//! can be driven by an in-memory body in tests. The next stage is [`crate::upstream`].

use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, header};
use http_body::Body;
use http_body_util::BodyExt;

/// Why a request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("cannot read request body")]
    Unreadable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Reads the whole body, refusing more than `limit` bytes. On an error the caller still holds the body, so that
/// what is left of it can be [`discard`]ed before the answer.
pub async fn read_body<B>(headers: &HeaderMap, body: &mut B, limit: u64) -> Result<Bytes, BodyError>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if declared_len(headers).is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let (mut parts, mut total) = (Vec::new(), 0u64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Unreadable(e.into()))?;
        if let Ok(mut data) = frame.into_data() {
            total += data.remaining() as u64;
            if total > limit {
                return Err(BodyError::TooLarge { limit });
            }
            // `Bytes` (hyper's frames) is taken as it is, without a copy.
            parts.push(data.copy_to_bytes(data.remaining()));
        }
    }
    Ok(match parts.len() {
        // One frame (the usual case for a small body): passed on without a copy.
        1 => parts.swap_remove(0),
        _ => parts.concat().into(),
    })
}

/// The `Content-Length` a request declared, if any.
pub fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads and drops what is left of a body that will not be used (the request was refused before or while reading
/// it): at most `max` bytes, for at most `within`. Answering while the client (or nginx, which streams request
/// bodies with `proxy_request_buffering off`) is still sending would close the connection on unread bytes, and the
/// kernel answers those with a reset that can destroy the answer. True when the body ended within the bounds.
pub async fn discard<B>(body: &mut B, max: u64, within: Duration) -> bool
where
    B: Body + Unpin,
{
    let drain = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            seen += frame.data_ref().map_or(0, |d| d.remaining() as u64);
            if seen > max {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(within, drain).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn declared(n: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, n.into());
        h
    }

    #[tokio::test]
    async fn reads_up_to_the_limit_and_refuses_past_it() {
        let body = || Full::new(Bytes::from_static(b"0123456789"));
        let ok = read_body(&HeaderMap::new(), &mut body(), 10).await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"0123456789"));
        let over = read_body(&HeaderMap::new(), &mut body(), 9).await;
        assert!(
            matches!(over, Err(BodyError::TooLarge { limit: 9 })),
            "{over:?}"
        );
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        // The body is empty: only the header can have refused it.
        let r = read_body(&declared(11), &mut Full::new(Bytes::new()), 10).await;
        assert!(matches!(r, Err(BodyError::TooLarge { limit: 10 })), "{r:?}");
    }

    #[tokio::test]
    async fn discard_reads_to_the_end_within_its_bounds() {
        let body = || Full::new(Bytes::from_static(b"0123456789"));
        let mut whole = body();
        assert!(discard(&mut whole, 10, Duration::from_secs(1)).await);
        assert!(whole.is_end_stream());
        assert!(!discard(&mut body(), 9, Duration::from_secs(1)).await);
    }
}
