use proptest::prelude::*;

use super::SentBody;

/// A response as hyper writes it, and for each wire byte whether it is a body byte.
fn chunked(head: &str, frames: &[usize]) -> (Vec<u8>, Vec<bool>) {
    let mut wire = head.as_bytes().to_vec();
    let mut body = vec![false; wire.len()];
    for &n in frames {
        let size = format!("{n:X}\r\n");
        wire.extend_from_slice(size.as_bytes());
        body.extend(std::iter::repeat_n(false, size.len()));
        // Body bytes that look like framing must not confuse the follower.
        wire.extend((0..n).map(|i| b"0\r\n;HTTP/1.1 "[i % 13]));
        body.extend(std::iter::repeat_n(true, n));
        wire.extend_from_slice(b"\r\n");
        body.extend([false, false]);
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    body.extend([false; 5]);
    (wire, body)
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\
                        date: Fri, 27 Nov 2026 18:00:00 GMT\r\n\r\n";

/// Feeds `wire` cut at `cuts`; after each piece the count is the body bytes sent so far (0 once the body ended).
fn check(wire: &[u8], is_body: &[bool], cuts: &[usize]) {
    let mut sent = SentBody::default();
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let mut expected = 0;
    for p in points {
        sent.sent(&wire[at..p]);
        expected += is_body[at..p].iter().filter(|b| **b).count() as u64;
        at = p;
        if p == wire.len() {
            expected = 0;
        }
        assert_eq!(
            sent.body_bytes(),
            Some(expected),
            "after {p} of {} bytes",
            wire.len()
        );
    }
}

#[test]
fn counts_the_body_bytes_of_a_chunked_answer_at_every_cut() {
    let (wire, is_body) = chunked(SSE_HEAD, &[1, 15, 16, 300, 4096, 70_000]);
    // One byte at a time, then every cut in two pieces around the small frames.
    let every: Vec<usize> = (0..wire.len()).collect();
    check(&wire, &is_body, &every);
    for cut in 0..6000 {
        check(&wire, &is_body, &[cut]);
    }
}

#[test]
fn a_head_split_across_writes_is_followed() {
    let (wire, is_body) = chunked(SSE_HEAD, &[5, 6]);
    let cuts: Vec<usize> = (0..SSE_HEAD.len() + 8).collect();
    check(&wire, &is_body, &cuts);
}

#[test]
fn responses_on_one_connection_are_counted_one_at_a_time() {
    let mut sent = SentBody::default();
    let error = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
    sent.sent(error.as_bytes());
    assert_eq!(
        sent.body_bytes(),
        Some(0),
        "a complete answer leaves nothing at stake"
    );
    sent.sent(b"HTTP/1.1 100 Continue\r\n\r\n");
    let (wire, _) = chunked(SSE_HEAD, &[10, 20]);
    sent.sent(&wire[..SSE_HEAD.len() + 3 + 10 + 2 + 4 + 7]);
    assert_eq!(sent.body_bytes(), Some(17));
    sent.sent(&wire[SSE_HEAD.len() + 3 + 10 + 2 + 4 + 7..]);
    assert_eq!(sent.body_bytes(), Some(0));
    sent.sent(b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: x\n\n");
    assert_eq!(sent.body_bytes(), Some(9), "a body delimited by the close");
}

#[test]
fn trailers_and_chunk_extensions_are_framing() {
    let mut sent = SentBody::default();
    sent.sent(SSE_HEAD.as_bytes());
    sent.sent(b"3;ext=1\r\nabc\r\n0\r\nx-trailer: 1\r\n");
    assert_eq!(sent.body_bytes(), Some(3));
    sent.sent(b"\r\n");
    assert_eq!(sent.body_bytes(), Some(0));
    assert_eq!(sent.state, super::State::Head);
}

#[test]
fn what_it_cannot_follow_it_says() {
    for garbage in [
        &b"not a response\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut sent = SentBody::default();
        sent.sent(garbage);
        assert_eq!(
            sent.body_bytes(),
            None,
            "{}",
            String::from_utf8_lossy(garbage)
        );
    }
    // A head that never ends is not kept beyond the bound.
    let mut sent = SentBody::default();
    sent.sent(b"HTTP/1.1 200 OK\r\n");
    for _ in 0..10_000 {
        sent.sent(b"x-long: 0123456789\r\n");
    }
    assert_eq!(sent.body_bytes(), None);
    assert!(sent.head.capacity() == 0);
}

#[test]
fn vectored_writes_count_only_the_accepted_prefix() {
    let mut sent = SentBody::default();
    sent.sent(SSE_HEAD.as_bytes());
    let bufs = [
        std::io::IoSlice::new(b"A\r\n"),
        std::io::IoSlice::new(b"0123456789"),
        std::io::IoSlice::new(b"\r\n"),
    ];
    sent.sent_vectored(&bufs, 7);
    assert_eq!(sent.body_bytes(), Some(4));
    sent.sent(b"456789\r\n");
    assert_eq!(sent.body_bytes(), Some(10));
}

proptest! {
    #[test]
    fn any_frames_cut_anywhere(
        frames in proptest::collection::vec(1usize..5000, 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let (wire, is_body) = chunked(SSE_HEAD, &frames);
        check(&wire, &is_body, &cuts);
    }
}
