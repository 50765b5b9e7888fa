//! The task that reads a resumable answer: it owns the tapped vendor body (so the tap's timers, error events and
//! end-of-stream report work as on any stream) and pushes its frames into the answer's [`StreamLog`], whether or not
//! a client is reading. It stops reading, which drops the body and so cancels the vendor call, when the log says so
//! ([`StreamLog::step`]); after the end it keeps the log for the window, then forgets it, and the registry drops it
//! one window later (until then a resume is told `410 Gone` rather than `404`).

use std::sync::Arc;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::Streams;
use super::log::{LogEnd, Retain, Step, StreamLog};

/// Reads `body` into `log` until the answer ends or is cancelled, keeps it for the window, then removes it from
/// `streams`.
pub async fn produce<B>(log: Arc<StreamLog>, body: B, streams: Arc<Streams>)
where
    B: Body<Data = Bytes> + Unpin,
{
    let end = read(&log, body).await;
    log.end(end);
    retain(log, streams).await;
}

/// After the answer's end: keeps it for the window after its last follower leaves, then forgets it, and removes it
/// from `streams` one window later (until then a resume is told it is gone).
pub async fn retain(log: Arc<StreamLog>, streams: Arc<Streams>) {
    if !log.cancelled() {
        loop {
            match log.retain(Instant::now()) {
                Retain::Over => break,
                Retain::Followed => log.changed().await,
                Retain::Until(at) => {
                    tokio::select! {
                        () = log.changed() => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
        log.forget();
    }
    tokio::time::sleep(log.window()).await;
    streams.remove(log.id());
}

/// Reads the answer until its end, or until the log says to cancel it (the body is dropped on return).
async fn read<B>(log: &StreamLog, mut body: B) -> LogEnd
where
    B: Body<Data = Bytes> + Unpin,
{
    loop {
        let until = match log.step(Instant::now()) {
            Step::Cancel(why) => {
                crate::metrics::resume_detached(why);
                return LogEnd::Cancelled;
            }
            Step::Wait => {
                log.changed().await;
                continue;
            }
            Step::Read(until) => until,
        };
        let far = Instant::now() + log.window();
        tokio::select! {
            biased;
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        log.push(data);
                    }
                }
                Some(Err(_)) => return LogEnd::Failed,
                None => return LogEnd::Done,
            },
            () = log.changed() => {}
            () = tokio::time::sleep_until(until.unwrap_or(far)), if until.is_some() => {}
        }
    }
}
