use super::*;
use proptest::prelude::*;

/// What the tap can observe of the scanner.
fn observed(s: &EventScanner) -> (u64, bool, bool, bool) {
    (
        s.events(),
        s.terminal_seen(),
        s.at_boundary(),
        s.truncated_at_eof(),
    )
}

fn scan(input: &[u8], terminal: Option<&str>) -> EventScanner {
    let mut s = EventScanner::new(terminal, usize::MAX);
    s.feed(input).unwrap();
    s
}

/// A deliberately naive reference: split into lines with copies, then count events by the WHATWG rules.
fn reference(input: &[u8], terminal: &str) -> (u64, bool) {
    let text = String::from_utf8_lossy(input)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    let mut lines: Vec<&str> = text.split('\n').collect();
    lines.pop(); // the unterminated rest is not a line yet
    let (mut events, mut open, mut terminal_seen) = (0, false, false);
    for line in lines {
        if line.is_empty() {
            events += u64::from(open);
            open = false;
        } else {
            open = true;
            terminal_seen |= line == terminal;
        }
    }
    (events, terminal_seen)
}

#[test]
fn openai_stream() {
    let s = scan(
        b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n",
        Some("data: [DONE]"),
    );
    assert_eq!(observed(&s), (3, true, true, false));
}

#[test]
fn every_line_ending_works() {
    for input in [
        &b"data: x\n\n"[..],
        b"data: x\r\n\r\n",
        b"data: x\r\r",
        b"data: x\r\n\n",
        b"data: x\n\r",
    ] {
        let s = scan(input, None);
        assert_eq!((s.events(), s.at_boundary()), (1, true), "{input:?}");
    }
}

#[test]
fn crlf_split_across_frames_is_one_line_ending() {
    let mut s = EventScanner::new(None, usize::MAX);
    s.feed(b"data: x\r").unwrap();
    assert!(
        !s.at_boundary(),
        "a pending \\r could still be followed by \\n"
    );
    s.feed(b"\n\r").unwrap();
    s.feed(b"\n").unwrap();
    assert_eq!((s.events(), s.at_boundary()), (1, true));
}

#[test]
fn comments_and_multiline_data_stay_inside_their_event() {
    let mut s = EventScanner::new(None, usize::MAX);
    s.feed(b": keep-alive\n\nevent: delta\ndata: line one\n: note\ndata: line two\n")
        .unwrap();
    assert_eq!((s.events(), s.at_boundary()), (1, false));
    s.feed(b"\n").unwrap();
    assert_eq!((s.events(), s.at_boundary()), (2, true));
}

#[test]
fn truncation_is_an_open_event_or_a_missing_terminal() {
    assert!(scan(b"data: {\"a\":1}\n\ndata: {\"b\"", None).truncated_at_eof());
    assert!(
        scan(b"data: {\"a\":1}\n", None).truncated_at_eof(),
        "no blank line: browsers drop it"
    );
    assert!(!scan(b"data: {\"a\":1}\n\n", None).truncated_at_eof());
    assert!(scan(b"data: {\"a\":1}\n\n", Some("data: [DONE]")).truncated_at_eof());
    assert!(
        scan(b"data: [DONE]x\n\n", Some("data: [DONE]")).truncated_at_eof(),
        "only the whole line counts"
    );
    assert!(!scan(b"event: done\ndata: {}\n\n", Some("event: done")).truncated_at_eof());
}

#[test]
fn multi_mib_lines_cost_no_memory_and_respect_the_cap() {
    let line = vec![b'x'; 5 << 20];
    let mut s = EventScanner::new(Some("data: [DONE]"), 8 << 20);
    s.feed(b"data: ").unwrap();
    for part in line.chunks(64 * 1024) {
        s.feed(part).unwrap();
    }
    s.feed(b"\n\ndata: [DONE]\n\n").unwrap();
    assert_eq!(observed(&s), (2, true, true, false));

    let mut small = EventScanner::new(None, 1024);
    assert_eq!(small.feed(&line[..1000]), Ok(()));
    assert_eq!(small.feed(&line[..100]), Err(EventTooLarge { limit: 1024 }));
}

/// Bytes rich in the characters the scanner cares about, with UTF-8 mixed in.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b"data: [DONE]".to_vec()),
        Just(b": ping".to_vec()),
        Just("你好".as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    /// However the stream is cut into frames, after every frame the scanner says what it says for that prefix
    /// scanned in one piece.
    #[test]
    fn same_answers_however_the_bytes_are_split(input in sse_bytes(), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
        cuts.push(input.len());
        cuts.sort_unstable();
        let mut split = EventScanner::new(Some("data: [DONE]"), usize::MAX);
        let mut last = 0;
        for cut in cuts {
            split.feed(&input[last..cut]).unwrap();
            last = cut;
            prop_assert_eq!(observed(&split), observed(&scan(&input[..cut], Some("data: [DONE]"))));
        }
    }

    /// Event counts and terminal detection agree with a naive line-splitting parser.
    #[test]
    fn agrees_with_a_naive_parser(input in sse_bytes()) {
        let s = scan(&input, Some("data: [DONE]"));
        // A trailing lone \\r is a complete line for the naive parser; the scanner agrees once the stream ends.
        prop_assert_eq!((s.events(), s.terminal_seen()), reference(&input, "data: [DONE]"));
    }
}
