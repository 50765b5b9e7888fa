//! The tap alone, with scripted upstream bodies and paused time: every deadline fires at exactly its instant, and
//! every ending is reported exactly once. Time never passes for real: the runtime jumps to the next timer when
//! nothing else can run.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;

/// An upstream body played from a channel: `Ok` frames, an `Err` reset; dropping the sender ends it.
struct Script {
    rx: mpsc::UnboundedReceiver<Result<Bytes, &'static str>>,
}

impl Body for Script {
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
        self.rx.poll_recv(cx).map(|step| match step {
            Some(Ok(data)) => Some(Ok(Frame::data(data))),
            Some(Err(e)) => Some(Err(e.to_owned())),
            None => None,
        })
    }
}

type Ends = Arc<Mutex<Vec<(End, Seen)>>>;

/// Records every end the tap reports.
struct Recorder(Ends);

impl OnEnd for Recorder {
    fn on_end(self, end: End, seen: Seen) {
        self.0.lock().unwrap().push((end, seen));
    }
}

struct Tapped {
    upstream: mpsc::UnboundedSender<Result<Bytes, &'static str>>,
    body: TapBody<Script, Recorder>,
    ends: Ends,
    drain: CancellationToken,
    started: Instant,
}

/// Limits of the tapped streams below, from the moment the tap is made.
#[derive(Clone, Copy)]
struct Limits {
    first_byte: Duration,
    idle: Duration,
    total: Duration,
    keepalive: Option<Duration>,
    event_stream: bool,
    hide_usage: bool,
}

const LIMITS: Limits = Limits {
    first_byte: Duration::from_secs(1),
    idle: Duration::from_secs(2),
    total: Duration::from_secs(60),
    keepalive: None,
    event_stream: true,
    hide_usage: false,
};

fn tap(l: Limits) -> Tapped {
    tap_with(l, None)
}

fn tap_with(l: Limits, added_delay: Option<AddedDelay>) -> Tapped {
    let (upstream, rx) = mpsc::unbounded_channel();
    let ends = Ends::default();
    let drain = CancellationToken::new();
    let started = Instant::now();
    let parts = TapParts {
        timers: Timers::starting(started, l.first_byte, l.idle, l.total, l.keepalive),
        scanner: l
            .event_stream
            .then(|| EventScanner::new(Some("data: [DONE]"), 1024)),
        text_max: Some(64),
        drain: drain.clone(),
        trace_id: Arc::from("trace-1"),
        error_shape: crate::tap::ErrorShape::Openai,
        chunk_gap: None,
        added_delay,
        hide_usage: l.hide_usage,
        usage: crate::usage::UsageScanner::default(),
        on_end: Recorder(ends.clone()),
    };
    Tapped {
        upstream,
        body: TapBody::new(Script { rx }, parts),
        ends,
        drain,
        started,
    }
}

impl Tapped {
    fn send(&self, data: &'static str) -> Bytes {
        let bytes = Bytes::from_static(data.as_bytes());
        self.upstream.send(Ok(bytes.clone())).unwrap();
        bytes
    }

    /// The next frame's bytes, `Err` for an aborted body, `None` at the end.
    async fn next(&mut self) -> Option<Result<Bytes, String>> {
        match self.body.frame().await? {
            Ok(frame) => Some(Ok(frame.into_data().unwrap())),
            Err(e) => Some(Err(e.to_string())),
        }
    }

    async fn next_data(&mut self) -> Bytes {
        self.next().await.unwrap().unwrap()
    }

    fn since_start(&self) -> Duration {
        self.started.elapsed()
    }

    /// The one reported end (fails when there were none or several).
    fn end(&self) -> (End, u64, Option<Instant>) {
        let ends = self.ends.lock().unwrap();
        assert_eq!(ends.len(), 1, "ends reported: {:?}", *ends);
        let (end, seen) = &ends[0];
        (end.clone(), seen.pings, seen.first_byte)
    }
}

fn kind_of(event: &Bytes) -> String {
    let text = std::str::from_utf8(event).unwrap();
    let data = text.split("data: ").nth(1).unwrap().trim_end();
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["trace_id"], "trace-1");
    v["kind"].as_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn a_usage_chunk_the_client_did_not_ask_for_is_dropped_and_a_held_half_event_precedes_the_error()
 {
    let mut t = tap(Limits {
        hide_usage: true,
        ..LIMITS
    });
    let sent = t.send("data: {\"choices\":[{\"delta\":{}}]}\n\n");
    let got = t.next_data().await;
    assert_eq!(
        got.as_ptr(),
        sent.as_ptr(),
        "a whole event: the vendor's buffer"
    );
    assert_eq!(got, sent);
    let usage =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1}}\n\n";
    t.upstream
        .send(Ok(Bytes::from(format!("{usage}data: [DO"))))
        .unwrap();
    // The usage event is gone; the half `[DONE]` waits for its end, which never comes: the idle timeout fires, the
    // held half goes out, then the error event after a blank line.
    assert_eq!(t.next_data().await, "data: [DO");
    assert_eq!(kind_of(&t.next_data().await), "upstream_idle_timeout");
    assert!(t.next().await.is_none());
    let ends = t.ends.lock().unwrap();
    let seen = &ends[0].1;
    assert_eq!(seen.hidden, usage.len() as u64);
    assert_eq!(seen.tokens.map(|t| (t.prompt, t.completion)), Some((9, 1)));
}

#[tokio::test(start_paused = true)]
async fn frames_pass_through_unchanged_and_complete_is_reported_once() {
    let mut t = tap(LIMITS);
    let frames = ["data: 你", "好\n\n", ": comment\n\n", "data: [DONE]\n\n"];
    for f in frames {
        let sent = t.send(f);
        let got = t.next_data().await;
        // The very same buffer, not a copy of it.
        assert_eq!(got.as_ptr(), sent.as_ptr());
        assert_eq!(got, sent);
    }
    // Replacing the only sender ends the upstream body.
    t.upstream = mpsc::unbounded_channel().0;
    assert!(t.next().await.is_none());
    assert!(t.body.is_end_stream());
    drop(t.body);
    let ends = t.ends.lock().unwrap();
    assert_eq!(
        ends.len(),
        1,
        "dropping a finished body reports nothing more"
    );
    let (end, seen) = &ends[0];
    assert_eq!(*end, End::Complete);
    assert_eq!((seen.bytes, seen.frames, seen.events), (39, 4, Some(3)));
    let (text, cut) = seen.text.clone().unwrap();
    assert!(text.starts_with("data: 你好\n\n") && !cut, "{text}");
}

#[tokio::test(start_paused = true)]
async fn silence_before_the_first_byte_fails_at_exactly_the_deadline() {
    let mut t = tap(LIMITS);
    let event = t.next_data().await;
    assert_eq!(t.since_start(), LIMITS.first_byte);
    assert_eq!(kind_of(&event), "upstream_first_byte_timeout");
    assert!(
        t.next().await.is_none(),
        "the error event is the last frame"
    );
    let (end, _, first_byte) = t.end();
    assert!(matches!(
        end,
        End::Failed(Failure::UpstreamFirstByteTimeout, _)
    ));
    assert_eq!(first_byte, None);
    assert!(t.body.is_end_stream(), "hyper may now drop the body");
    drop(t.body);
    assert!(
        t.upstream.is_closed(),
        "and dropping it cancels the upstream"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_counts_from_the_last_frame() {
    let mut t = tap(LIMITS);
    t.send("data: a\n\n");
    t.next_data().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A frame before the idle deadline pushes it back: the timer armed for 2 s fires early once and re-arms.
    t.send("data: b\n\n");
    t.next_data().await;
    let event = t.next_data().await;
    assert_eq!(t.since_start(), Duration::from_millis(1500) + LIMITS.idle);
    assert_eq!(kind_of(&event), "upstream_idle_timeout");
    assert!(
        event.starts_with(b"event: error"),
        "at a boundary: no blank line first"
    );
    assert!(matches!(
        t.end().0,
        End::Failed(Failure::UpstreamIdleTimeout, _)
    ));
}

#[tokio::test(start_paused = true)]
async fn the_total_cap_cuts_a_stream_that_is_still_sending() {
    let limits = Limits {
        total: Duration::from_secs(1),
        ..LIMITS
    };
    let mut t = tap(limits);
    let upstream = t.upstream.clone();
    let producer = async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            every.tick().await;
            if upstream
                .send(Ok(Bytes::from_static(b"data: x\n\n")))
                .is_err()
            {
                break;
            }
        }
    };
    let reader = async {
        let mut frames = 0;
        loop {
            let got = t.next_data().await;
            if got.starts_with(b"event: error") {
                return (frames, got);
            }
            frames += 1;
        }
    };
    let (frames, event) = tokio::select! {
        () = producer => unreachable!("the producer stops only when the tap has gone"),
        r = reader => r,
    };
    assert_eq!(t.since_start(), limits.total);
    assert_eq!(kind_of(&event), "stream_total_timeout");
    assert!(
        (10..=11).contains(&frames),
        "{frames} frames before the cap"
    );
}

#[tokio::test(start_paused = true)]
async fn keep_alives_fill_silence_only_at_event_boundaries() {
    let limits = Limits {
        first_byte: Duration::from_secs(10),
        keepalive: Some(Duration::from_millis(500)),
        ..LIMITS
    };
    let mut t = tap(limits);
    t.send("data: a\n\n");
    t.next_data().await;
    for n in 1..=3u32 {
        assert_eq!(&t.next_data().await[..], b": keep-alive\n\n");
        assert_eq!(t.since_start(), Duration::from_millis(500) * n);
    }
    // Pings are not upstream frames: the idle deadline still counts from the last frame.
    let event = t.next_data().await;
    assert_eq!(t.since_start(), limits.idle);
    assert_eq!(kind_of(&event), "upstream_idle_timeout");
    assert_eq!(t.end().1, 3);

    // Half an event: no comment may be inserted, so silence runs to the idle timeout with no ping.
    let mut t = tap(limits);
    t.send("data: half an ev");
    t.next_data().await;
    let event = t.next_data().await;
    assert_eq!(t.since_start(), limits.idle);
    assert!(
        event.starts_with(b"\n\nevent: error"),
        "ends the half event first"
    );
    assert_eq!(t.end().1, 0);
}

#[tokio::test(start_paused = true)]
async fn the_drain_ends_a_stream_with_a_shutdown_event() {
    let mut t = tap(LIMITS);
    t.send("data: a\n\n");
    t.next_data().await;
    t.drain.cancel();
    let event = t.next_data().await;
    assert_eq!(t.since_start(), Duration::ZERO, "at once, not at a timer");
    assert_eq!(kind_of(&event), "shutdown");
    assert!(matches!(t.end().0, End::Failed(Failure::Shutdown, _)));
}

#[tokio::test(start_paused = true)]
async fn an_early_drop_is_reported_as_cancelled_in_each_phase() {
    // Before the first byte.
    let t = tap(LIMITS);
    let (upstream, ends) = (t.upstream.clone(), t.ends.clone());
    drop(t.body);
    assert!(
        upstream.is_closed(),
        "dropping the tap drops (cancels) the upstream"
    );
    {
        let (end, seen) = &ends.lock().unwrap()[0];
        assert_eq!((end, seen.first_byte), (&End::Cancelled, None));
    }

    // Mid-stream.
    let mut t = tap(LIMITS);
    t.send("data: a\n\n");
    t.next_data().await;
    let (upstream, ends) = (t.upstream.clone(), t.ends.clone());
    drop(t.body);
    assert!(upstream.is_closed());
    {
        let ends = ends.lock().unwrap();
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].0, End::Cancelled);
        assert!(ends[0].1.first_byte.is_some());
    }

    // After the stream ended with an error event: nothing more to report.
    let mut t = tap(LIMITS);
    t.next_data().await;
    let ends = t.ends.clone();
    drop(t.body);
    assert_eq!(ends.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn upstream_faults_end_with_one_error_event() {
    // Reset mid-stream.
    let mut t = tap(LIMITS);
    t.send("data: a\n\n");
    t.next_data().await;
    t.upstream.send(Err("connection reset")).unwrap();
    assert_eq!(kind_of(&t.next_data().await), "upstream_reset");
    assert!(t.next().await.is_none());
    assert!(matches!(t.end().0, End::Failed(Failure::UpstreamReset, d) if d == "connection reset"));

    // EOF without the terminal event, at a boundary and in the middle of an event.
    for (last, lead) in [("data: a\n\n", false), ("data: a", true)] {
        let mut t = tap(LIMITS);
        t.send(last);
        t.next_data().await;
        t.upstream = mpsc::unbounded_channel().0;
        let event = t.next_data().await;
        assert_eq!(kind_of(&event), "upstream_truncated");
        assert_eq!(event.starts_with(b"\n\n"), lead, "{event:?}");
    }

    // An event over max_event_bytes is not forwarded.
    let mut t = tap(LIMITS);
    t.send(Box::leak("x".repeat(2000).into_boxed_str()));
    assert_eq!(kind_of(&t.next_data().await), "upstream_protocol");
    assert!(t.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_body_that_is_not_an_event_stream_fails_as_an_error() {
    let mut t = tap(Limits {
        event_stream: false,
        ..LIMITS
    });
    let got = t.next().await.unwrap();
    assert!(got.is_err(), "no event can be added to a non-event body");
    assert_eq!(t.since_start(), LIMITS.first_byte);
    assert!(matches!(
        t.end().0,
        End::Failed(Failure::UpstreamFirstByteTimeout, _)
    ));
}

#[tokio::test(start_paused = true)]
async fn the_added_delay_runs_from_a_frame_s_arrival_to_the_write_that_carried_it() {
    let flushed = Arc::new(crate::flushed::Flushed::default());
    let histogram = Arc::new(crate::metrics::Buckets::default());
    let mut t = tap_with(
        LIMITS,
        Some(AddedDelay::new(flushed.clone(), histogram.clone())),
    );
    // (count, sum in ms) so far.
    let recorded = || {
        let (cumulative, sum) = histogram.snapshot();
        (*cumulative.last().unwrap(), (sum * 1e3).round() as u64)
    };
    let ms = Duration::from_millis;
    let written = || flushed.mark(Instant::now());

    t.send("data: a\n\n");
    t.next_data().await; // a arrives at 0 ms
    tokio::time::sleep(ms(3)).await;
    written(); // the connection wrote a at 3 ms
    tokio::time::sleep(ms(7)).await;
    t.send("data: b\n\n");
    t.next_data().await; // b at 10 ms; a is recorded now
    tokio::time::sleep(ms(1)).await;
    t.send("data: c\n\n");
    t.next_data().await; // c at 11 ms; b is not written yet
    assert_eq!(recorded(), (1, 3));
    tokio::time::sleep(ms(4)).await;
    written(); // b and c written together at 15 ms: 5 and 4 ms
    t.send("data: [DONE]\n\n");
    t.next_data().await; // the terminal event at 15 ms; never written before the end
    t.upstream = mpsc::unbounded_channel().0;
    assert!(t.next().await.is_none());
    assert_eq!(recorded(), (3, 3 + 5 + 4));
    let cumulative = histogram.snapshot().0;
    assert_eq!(
        (cumulative[7], cumulative[8]),
        (0, 3),
        "none under 2.5 ms, all three under 5 ms"
    );
}
