//! The log alone: frames split at event starts without copying, each follower's view (`id:` lines, resume after an
//! event), the bounds past `max_bytes`, and what the producer is told to do, on paused time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::log::{BACKLOG, LogEnd, Retain, Step, StreamLog};
use crate::config::Resume;

fn log(max_bytes: usize) -> Arc<StreamLog> {
    let resume = Resume {
        window: Duration::from_secs(10),
        max_bytes,
    };
    Arc::new(StreamLog::new("s".into(), "acme".into(), resume, None))
}

/// Everything a follower has now, as one string, and whether the answer ended.
async fn drain(f: &mut super::Follower) -> String {
    let mut out = Vec::new();
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_millis(10), f.frame()).await {
        out.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(start_paused = true)]
async fn frames_are_split_at_event_starts_and_followers_get_them_with_id_lines() {
    let log = log(1 << 20);
    let mut first = log.first_follower();
    // Events across frames, two in one frame, a comment block.
    for f in ["data: a\n\nda", "ta: b\n\ndata: c\n", "\n: ping\n\n"] {
        log.push(Bytes::from_static(f.as_bytes()));
    }
    assert_eq!(
        drain(&mut first).await,
        "id: s:1\ndata: a\n\nid: s:2\ndata: b\n\nid: s:3\ndata: c\n\nid: s:4\n: ping\n\n"
    );
    let mut later = log.resume(2).unwrap();
    assert_eq!(
        drain(&mut later).await,
        "id: s:3\ndata: c\n\nid: s:4\n: ping\n\n"
    );
    log.end(LogEnd::Done);
    assert!(later.frame().await.is_none(), "ends with the answer");
    assert_eq!(log.resumes(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_vendors_bytes_are_the_same_buffers() {
    let log = log(1 << 20);
    let mut f = log.first_follower();
    let frame = Bytes::from_static(b"data: a\n\ndata: b\n\n");
    let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
    log.push(frame);
    let mut pieces = Vec::new();
    while let Ok(Some(Ok(fr))) = tokio::time::timeout(Duration::from_millis(10), f.frame()).await {
        pieces.push(fr.into_data().unwrap());
    }
    let vendor: Vec<&Bytes> = pieces.iter().filter(|p| !p.starts_with(b"id: ")).collect();
    assert_eq!(vendor.len(), 2);
    for p in vendor {
        assert!(
            range.contains(&(p.as_ptr() as usize)),
            "a vendor piece was copied"
        );
    }
    // Once sent, the log keeps a copy of its own: a resume does not pin the vendor connection's buffer.
    let mut later = log.resume(0).unwrap();
    while let Ok(Some(Ok(fr))) =
        tokio::time::timeout(Duration::from_millis(10), later.frame()).await
    {
        let fr = fr.into_data().unwrap();
        assert!(
            !range.contains(&(fr.as_ptr() as usize)),
            "still the vendor's buffer"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn resume_refuses_events_the_answer_never_had_and_answers_past_max_bytes() {
    let log = log(1024);
    let _f = log.first_follower();
    log.push(Bytes::from_static(b"data: a\n\n"));
    assert!(log.resume(2).is_err(), "event 2 has not come");
    assert!(log.resume(1).is_ok());
    log.push(Bytes::from(format!("data: {}\n\n", "x".repeat(2000))));
    assert!(log.resume(0).is_err(), "over max_bytes: gone");
}

#[tokio::test(start_paused = true)]
async fn past_max_bytes_the_log_holds_only_what_its_follower_has_not_read() {
    let log = log(1024);
    let mut f = log.first_follower();
    let event = Bytes::from(format!("data: {}\n\n", "x".repeat(1000)));
    for _ in 0..100 {
        log.push(event.clone());
        if log.step(Instant::now()) == Step::Wait {
            drain(&mut f).await;
        }
        assert_ne!(
            log.step(Instant::now()),
            Step::Wait,
            "the follower read it all"
        );
    }
    // A follower that reads nothing: the producer is told to wait once BACKLOG is held.
    let mut pushed = 0;
    while log.step(Instant::now()) != Step::Wait {
        log.push(event.clone());
        pushed += event.len();
        assert!(pushed <= BACKLOG + event.len());
    }
    drop(f);
    assert_eq!(log.step(Instant::now()), Step::Cancel("not_resumable"));
}

#[tokio::test(start_paused = true)]
async fn without_a_client_the_answer_is_read_for_the_window_then_cancelled_and_kept_after_its_end()
{
    let log = log(1 << 20);
    let f = log.first_follower();
    assert_eq!(log.step(Instant::now()), Step::Read(None));
    drop(f);
    let until = Instant::now() + Duration::from_secs(10);
    assert_eq!(log.step(Instant::now()), Step::Read(Some(until)));
    tokio::time::advance(Duration::from_secs(5)).await;
    // A client on another replica was heard of: the window starts over from its last word.
    log.followed_elsewhere(Instant::now() + Duration::from_secs(3));
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(matches!(log.step(Instant::now()), Step::Read(Some(_))));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(log.step(Instant::now()), Step::Cancel("expired"));
    log.end(LogEnd::Done);
    assert_eq!(log.retain(Instant::now()), Retain::Over);
    assert!(log.stop().eq(&false), "an ended answer cannot be stopped");
}
