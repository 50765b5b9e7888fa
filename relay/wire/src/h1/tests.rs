use super::*;
use proptest::prelude::*;

/// Feeds `wire` to a head parser and then a decoder in reads of the given sizes (cycled), the way the exchange
/// does; returns the head, the body bytes and how it ended.
fn run(wire: &[u8], reads: &[usize]) -> Result<(Head, Vec<u8>, BytesMut), ParseError> {
    let mut buf = BytesMut::new();
    let mut input = wire;
    let mut sizes = reads.iter().copied().cycle();
    let mut feed = |buf: &mut BytesMut| -> bool {
        if input.is_empty() {
            return false;
        }
        let n = sizes.next().unwrap_or(1).clamp(1, input.len());
        buf.extend_from_slice(&input[..n]);
        input = &input[n..];
        true
    };
    let head = loop {
        if let Some(head) = parse_head(&mut buf)? {
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
                assert!(!d.is_empty(), "no empty data frames");
                body.extend_from_slice(&d);
            }
            Step::Done => return Ok((head, body, buf)),
            Step::More => {
                if !feed(&mut buf) {
                    decoder.eof()?;
                    return Ok((head, body, buf));
                }
            }
        }
    }
}

fn chunked(body: &[u8], cuts: &[usize], ext: bool) -> Vec<u8> {
    let mut wire =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    let mut at = 0;
    for &cut in cuts.iter().chain([&body.len()]) {
        let end = cut.clamp(at, body.len());
        if end > at {
            let ext = if ext { " ; name=\"v\"" } else { "" };
            wire.extend_from_slice(format!("{:X}{ext}\r\n", end - at).as_bytes());
            wire.extend_from_slice(&body[at..end]);
            wire.extend_from_slice(b"\r\n");
            at = end;
        }
    }
    wire.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
    wire
}

proptest! {
    #[test]
    fn chunked_bodies_come_out_whole_however_the_reads_fall(
        body in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(0usize..2000, 0..20),
        reads in proptest::collection::vec(1usize..300, 1..10),
        ext in any::<bool>(),
    ) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let (head, got, rest) = run(&chunked(&body, &cuts, ext), &reads).unwrap();
        prop_assert_eq!(head.framing, Framing::Chunked);
        prop_assert!(head.keep_alive);
        prop_assert_eq!(got, body);
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn length_bodies_stop_at_the_length(
        body in proptest::collection::vec(any::<u8>(), 0..2000),
        extra in proptest::collection::vec(any::<u8>(), 0..50),
        reads in proptest::collection::vec(1usize..300, 1..10),
    ) {
        let mut wire = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        wire.extend_from_slice(&body);
        wire.extend_from_slice(&extra);
        let (head, got, _) = run(&wire, &reads).unwrap();
        prop_assert_eq!(head.framing, Framing::Length(body.len() as u64));
        prop_assert_eq!(got, body);
    }

    /// Whatever the bytes, the reader gives the same answer however the reads fall (the same head, body and
    /// leftover, or the same error, as when it gets everything in one read), never more body than it was given,
    /// and no panic. The bytes are a valid chunked response with a few bytes replaced and maybe cut short (hostile
    /// bytes that still reach the body decoder's every state), or plain random bytes.
    #[test]
    fn arbitrary_bytes_get_the_same_answer_however_the_reads_fall(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in proptest::collection::vec(0usize..300, 0..8),
        changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut_short in proptest::option::of(any::<usize>()),
        random in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..600)),
        reads in proptest::collection::vec(1usize..64, 1..5),
    ) {
        let wire = match random {
            Some(random) => random,
            None => {
                let mut cuts = cuts;
                cuts.sort_unstable();
                let mut wire = chunked(&body, &cuts, false);
                for (at, byte) in changes {
                    let at = at % wire.len();
                    wire[at] = byte;
                }
                if let Some(at) = cut_short {
                    wire.truncate(at % (wire.len() + 1));
                }
                wire
            }
        };
        let answer = |reads: &[usize]| {
            run(&wire, reads).map(|(head, body, rest)| (head.status, head.framing, body, rest.to_vec()))
        };
        let split = answer(&reads);
        if let Ok((_, _, body, _)) = &split {
            prop_assert!(body.len() <= wire.len());
        }
        prop_assert_eq!(split, answer(&[wire.len().max(1)]));
    }
}

fn err(wire: &[u8]) -> ParseError {
    run(wire, &[7]).map(|_| ()).unwrap_err()
}

#[test]
fn interim_heads_are_skipped() {
    let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi";
    let (head, body, _) = run(wire, &[5]).unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert!(!head.headers.contains_key("link"));
    assert_eq!(body, b"hi");
}

#[test]
fn an_upgrade_is_refused() {
    assert_eq!(
        err(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n"),
        ParseError::Upgrade
    );
}

#[test]
fn chunk_sizes_take_extensions_and_leading_zeros() {
    let wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0003;a=b;c\r\nabc\r\n02\t;x=\"y z\"\r\nde\r\n0\r\n\r\n";
    assert_eq!(run(wire, &[3]).unwrap().1, b"abcde");
}

#[test]
fn hostile_chunk_lines_are_refused() {
    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let case = |body: &str| err(format!("{head}{body}").as_bytes());
    assert_eq!(case("zz\r\nab\r\n0\r\n\r\n"), ParseError::ChunkSize);
    assert_eq!(case("-1\r\n"), ParseError::ChunkSize);
    assert_eq!(case("\r\n"), ParseError::ChunkSize);
    assert_eq!(case("1 x\r\na\r\n"), ParseError::ChunkSize);
    assert_eq!(case("2\nab\r\n"), ParseError::ChunkSize, "bare LF");
    assert_eq!(
        case("1ffffffffffffffff\r\n"),
        ParseError::ChunkSize,
        "overflow"
    );
    assert_eq!(case("2\r\nabc\r\n"), ParseError::ChunkEnd);
    let long = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE));
    assert_eq!(case(&long), ParseError::ChunkLine);
    let trailers = format!("0\r\n{}", "x-t: 1\r\n".repeat(MAX_TRAILERS / 8 + 1));
    assert_eq!(case(&trailers), ParseError::Trailers);
}

#[test]
fn a_body_cut_short_is_an_error() {
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab";
    assert_eq!(err(chunked), ParseError::EofInChunked);
    let no_last_chunk = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n";
    assert_eq!(err(no_last_chunk), ParseError::EofInChunked);
    let length = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
    assert_eq!(err(length), ParseError::EofInLength);
    assert_eq!(err(b"HTTP/1.1 200 OK\r\ncontent-le"), ParseError::EofInHead);
}

#[test]
fn framing_follows_rfc_9112() {
    let framing = |h: &str| {
        let mut buf = BytesMut::from(format!("HTTP/1.1 200 OK\r\n{h}\r\n").as_bytes());
        parse_head(&mut buf).map(|h| h.map(|h| (h.framing, h.keep_alive)).unwrap())
    };
    use Framing::*;
    // Transfer-Encoding wins over Content-Length, and the connection is not reused after it.
    assert_eq!(
        framing("content-length: 5\r\ntransfer-encoding: chunked\r\n"),
        Ok((Chunked, false))
    );
    assert_eq!(
        framing("transfer-encoding: gzip, chunked\r\n"),
        Ok((Chunked, true))
    );
    assert_eq!(framing("transfer-encoding: gzip\r\n"), Ok((Close, false)));
    assert_eq!(
        framing("transfer-encoding: chunked, gzip\r\n"),
        Err(ParseError::TransferEncoding)
    );
    assert_eq!(
        framing("transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n"),
        Err(ParseError::TransferEncoding)
    );
    assert_eq!(
        framing("content-length: 5, 5\r\ncontent-length: 5\r\n"),
        Ok((Length(5), true))
    );
    assert_eq!(
        framing("content-length: 5\r\ncontent-length: 6\r\n"),
        Err(ParseError::ContentLength)
    );
    assert_eq!(
        framing("content-length: +5\r\n"),
        Err(ParseError::ContentLength)
    );
    assert_eq!(
        framing("content-length: 99999999999999999999\r\n"),
        Err(ParseError::ContentLength)
    );
    assert_eq!(framing(""), Ok((Close, false)));
    assert_eq!(
        framing("connection: keep-alive, Close\r\ncontent-length: 0\r\n"),
        Ok((Length(0), false))
    );
    let mut no_content =
        BytesMut::from(&b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"[..]);
    assert_eq!(parse_head(&mut no_content).unwrap().unwrap().framing, Empty);
    let mut old = BytesMut::from(&b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"[..]);
    assert!(!parse_head(&mut old).unwrap().unwrap().keep_alive);
    let mut te_in_1_0 =
        BytesMut::from(&b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..]);
    assert_eq!(
        parse_head(&mut te_in_1_0).unwrap_err(),
        ParseError::TransferEncoding
    );
}

#[test]
fn heads_are_bounded() {
    let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(err(big.as_bytes()), ParseError::HeadTooLarge);
    let many = format!(
        "HTTP/1.1 200 OK\r\n{}\r\n",
        "x-a: 1\r\n".repeat(MAX_HEADERS + 1)
    );
    assert!(matches!(
        err(many.as_bytes()),
        ParseError::Head(httparse::Error::TooManyHeaders)
    ));
    assert!(matches!(
        err(b"HTTP/1.1 2x0 OK\r\n\r\n"),
        ParseError::Head(_)
    ));
    assert!(matches!(
        err(b"SSH-2.0-OpenSSH\r\n\r\n"),
        ParseError::Head(_)
    ));
}

#[test]
fn data_is_a_slice_of_the_read_buffer() {
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabcd"[..]);
    let head = parse_head(&mut buf).unwrap().unwrap();
    let start = buf.as_ptr();
    let Step::Data(data) = Decoder::new(head.framing).decode(&mut buf).unwrap() else {
        panic!("data expected");
    };
    assert_eq!(data.as_ptr(), start, "not copied");
}
