//! Reading the request body, bounded: the whole body is read (it is small: a prompt) before the vendor is called,
//! because failover may send it more than once. More than `max_request_body_bytes` is refused, up front when
//! `Content-Length` says so, else as soon as the count passes the limit. Generic over the body type, so the stage
//! can be driven by an in-memory body in tests. The next stage is [`crate::upstream`].

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// Why a request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("cannot read request body")]
    Unreadable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Reads the whole body, refusing more than `limit` bytes.
pub async fn read_body<B>(headers: &HeaderMap, body: B, limit: u64) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Unreadable(e)),
    }
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
        let ok = read_body(&HeaderMap::new(), body(), 10).await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"0123456789"));
        let over = read_body(&HeaderMap::new(), body(), 9).await;
        assert!(
            matches!(over, Err(BodyError::TooLarge { limit: 9 })),
            "{over:?}"
        );
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        // The body is empty: only the header can have refused it.
        let r = read_body(&declared(11), Full::new(Bytes::new()), 10).await;
        assert!(matches!(r, Err(BodyError::TooLarge { limit: 10 })), "{r:?}");
    }
}
