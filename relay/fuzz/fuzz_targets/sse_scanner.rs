//! Arbitrary bytes in arbitrary chunkings: the scanner never panics, and however the input is cut it reports what
//! it reports for the whole input in one piece. The first byte seeds the chunk sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_wire::sse::EventScanner;

fn observe(s: &EventScanner) -> (u64, bool, bool, bool) {
    (s.events(), s.terminal_seen(), s.at_boundary(), s.truncated_at_eof())
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else { return };
    let mut whole = EventScanner::new(Some("data: [DONE]"), 1 << 16);
    let whole_ok = whole.feed(input).is_ok();

    let mut split = EventScanner::new(Some("data: [DONE]"), 1 << 16);
    let mut split_ok = true;
    let mut rest = input;
    let mut size = usize::from(seed % 17) + 1;
    while !rest.is_empty() && split_ok {
        let (head, tail) = rest.split_at(size.min(rest.len()));
        split_ok = split.feed(head).is_ok();
        rest = tail;
        size = size * 7 % 31 + 1;
    }
    assert_eq!(whole_ok, split_ok);
    if whole_ok {
        assert_eq!(observe(&whole), observe(&split));
    }
});
