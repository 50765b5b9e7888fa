//! Arbitrary bytes as a vendor's HTTP/1.1 response, in arbitrary reads: the reader never panics, never yields an
//! empty piece, and reads the same body however the input is cut.
//! The first byte seeds the read sizes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use relay_wire::h1::{self, Decoder, ParseError, Step};

/// The head's status and the body, or the error, reading `input` in pieces of the sizes `next` gives.
fn read(input: &[u8], mut next: impl FnMut() -> usize) -> Result<(u16, Vec<u8>), ParseError> {
    let mut buf = BytesMut::new();
    let mut rest = input;
    let mut feed = |buf: &mut BytesMut| {
        let n = next().min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        n > 0
    };
    let head = loop {
        if let Some(head) = h1::parse_head(&mut buf)? {
            break head;
        }
        if !feed(&mut buf) {
            return Err(ParseError::EofInHead);
        }
    };
    let mut decoder = Decoder::new(head.framing);
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut buf)? {
            Step::Data(d) => {
                assert!(!d.is_empty());
                body.extend_from_slice(&d);
            }
            Step::Done => return Ok((head.status.as_u16(), body)),
            Step::More => {
                if !feed(&mut buf) {
                    decoder.eof()?;
                    return Ok((head.status.as_u16(), body));
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else { return };
    let whole = read(input, || usize::MAX);
    let mut size = usize::from(seed % 17) + 1;
    let split = read(input, || {
        let n = size;
        size = size * 7 % 31 + 1;
        n
    });
    // A head or line limit may trip at a different point when the input arrives whole, so only success is
    // compared: whatever reads successfully reads the same.
    if let (Ok(a), Ok(b)) = (&whole, &split) {
        assert_eq!(a, b);
    }
});
