//! The same assertions on every request path: directly to the relay, through nginx configured from
//! `deploy/nginx/ssegate.conf`, and through HAProxy configured from `deploy/haproxy/ssegate.cfg`.

use std::time::Duration;

use anyhow::Result;

use crate::stack::{Front, Options, Stack, stack};
use crate::support::*;

/// Declares one test per path (direct, nginx, HAProxy) for an `async fn(Stack) -> Result<()>`.
macro_rules! on_every_path {
    (@path $module:ident, $front:ident, $($check:ident),*) => {
        mod $module {
            $(#[tokio::test]
            async fn $check() -> anyhow::Result<()> {
                match super::stack(super::Front::$front, super::Options::default()).await? {
                    Some(s) => super::$check(s).await,
                    None => Ok(()),
                }
            })*
        }
    };
    ($($check:ident),* $(,)?) => {
        on_every_path!(@path direct, Relay, $($check),*);
        on_every_path!(@path via_nginx, Nginx, $($check),*);
        on_every_path!(@path via_haproxy, Haproxy, $($check),*);
    };
}

on_every_path!(
    oversize_bodies_get_the_relays_413,
    frames_arrive_incrementally_and_unchanged,
    wrong_client_key_is_401_and_costs_nothing,
    keys_never_cross,
    vendor_errors_pass_through,
    client_disconnect_cancels_the_upstream,
    audit_line_is_right_and_logs_hold_no_secret,
);

async fn frames_arrive_incrementally_and_unchanged(s: Stack) -> Result<()> {
    let scenario = [
        ("x-mock-chunks", "10"),
        ("x-mock-interval-ms", "300"),
        ("x-mock-first-chunk-ms", "500"),
    ];
    let got = receive(chat(&s.base(), CLIENT_KEY, &scenario)).await?;
    // The head is not held back until the first token (a buffering proxy holds both).
    assert!(
        got.first_byte.saturating_sub(got.head) > Duration::from_millis(300),
        "head at {:?}, first byte at {:?}: the response head waited for the body",
        got.head,
        got.first_byte
    );
    // Unbuffered: the first chunk is in the client's hands long before the last one is even sent.
    assert!(
        got.end.saturating_sub(got.first_byte) > Duration::from_secs(1),
        "first byte at {:?}, end at {:?}: the stream was buffered",
        got.first_byte,
        got.end
    );
    assert_eq!(got.delays.len(), 10, "one timed event per content chunk");
    let (p50, max) = got.p50_max();
    let path = s.path();
    eprintln!("per-chunk one-way delay, {path}: p50 {p50:?}, max {max:?}");
    // A chunk held until the next one is sent would show at least the 300 ms interval; the bound leaves room for
    // a loaded CI machine (a debug build sharing two cores with the other tests).
    assert!(
        max < Duration::from_millis(250),
        "a chunk was held back: {:?}",
        got.delays
    );
    // A proxy that holds every small write for a while (HAProxy without `option http-no-delay`: ~200 ms each)
    // stays under that bound; the median does not (unheld, it is a millisecond or two).
    assert!(
        p50 < Duration::from_millis(100),
        "chunks are held back: median one-way delay {p50:?}: {:?}",
        got.delays
    );

    // The bytes the client got are the bytes the vendor sent, split characters included.
    let record = mock_record(&s.mock, &got.trace_id).await?;
    assert_eq!(record["bytes"], got.bytes.len() as u64);
    assert_eq!(
        record["sha256"],
        sha256_hex(&got.bytes).as_str(),
        "relayed bytes differ from the vendor's"
    );
    assert!(
        record["frames"].as_u64().unwrap_or(0) > 10,
        "the mock split events across frames"
    );
    let text = String::from_utf8(got.bytes)?;
    assert!(text.contains("你好") && text.ends_with("data: [DONE]\n\n"));
    Ok(())
}

async fn wrong_client_key_is_401_and_costs_nothing(s: Stack) -> Result<()> {
    let res = chat(&s.base(), "not-a-key", &[]).send().await?;
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("x-trace-id").is_some());
    let v: serde_json::Value = res.json().await?;
    assert_eq!(v["error"]["type"], "unauthorized");
    let stats = mock_stats(&s.mock).await?;
    assert_eq!(
        stats["requests"], 0,
        "a rejected client must not cost a vendor call"
    );
    Ok(())
}

async fn keys_never_cross(s: Stack) -> Result<()> {
    let res = chat(&s.base(), CLIENT_KEY, &[("x-mock-chunks", "3")])
        .send()
        .await?;
    let head = format!("{:?}", res.headers());
    let trace_id = res.headers()["x-trace-id"].to_str()?.to_owned();
    let body = res.text().await?;
    assert!(
        !head.contains(VENDOR_KEY) && !body.contains(VENDOR_KEY),
        "the client saw the vendor key"
    );
    let record = mock_record(&s.mock, &trace_id).await?;
    let seen = record["request_headers"].to_string();
    assert!(
        !seen.contains(CLIENT_KEY),
        "the vendor saw the client key: {seen}"
    );
    assert_eq!(
        record["request_headers"]["authorization"],
        format!("Bearer {VENDOR_KEY}").as_str()
    );
    Ok(())
}

/// Bodies from just over `max_request_body_bytes` (1 MiB) to twice it get the relay's JSON 413 on every try, with a
/// declared length or chunked, also through nginx (which streams request bodies to the relay and would answer 502
/// if the relay closed on a body still arriving). None reaches the vendor.
async fn oversize_bodies_get_the_relays_413(s: Stack) -> Result<()> {
    let limit = 1usize << 20;
    let url = format!("{}/v1/chat/completions", s.base());
    for size in [limit + 1, limit + 100_000, limit * 3 / 2, 2 * limit] {
        for chunked in [false, true] {
            for _ in 0..3 {
                let body = if chunked {
                    let pieces = vec![b'a'; size]
                        .chunks(64 << 10)
                        .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                        .collect::<Vec<_>>();
                    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
                } else {
                    reqwest::Body::from(vec![b'a'; size])
                };
                let res = client()
                    .post(&url)
                    .bearer_auth(CLIENT_KEY)
                    .body(body)
                    .send()
                    .await?;
                let what = format!("{size} bytes, chunked: {chunked}");
                assert_eq!(res.status(), 413, "{what}");
                assert_eq!(res.headers()["content-type"], "application/json", "{what}");
                let v: serde_json::Value = res.json().await?;
                assert_eq!(v["error"]["type"], "payload_too_large", "{what}");
            }
        }
    }
    assert_eq!(mock_stats(&s.mock).await?["requests"], 0);
    Ok(())
}

async fn vendor_errors_pass_through(s: Stack) -> Result<()> {
    for code in [429u16, 500] {
        let res = chat(
            &s.base(),
            CLIENT_KEY,
            &[("x-mock-status", &code.to_string())],
        )
        .send()
        .await?;
        assert_eq!(res.status().as_u16(), code);
        if code == 429 {
            assert_eq!(res.headers()["retry-after"], "1");
        }
        let trace_id = res.headers()["x-trace-id"].to_str()?.to_owned();
        let v: serde_json::Value = res.json().await?;
        assert_eq!(v["error"]["code"], "mock_fault", "{v}");
        assert_eq!(mock_record(&s.mock, &trace_id).await?["status"], code);
    }
    Ok(())
}

async fn client_disconnect_cancels_the_upstream(s: Stack) -> Result<()> {
    use futures_util::StreamExt;
    let res = chat(
        &s.base(),
        CLIENT_KEY,
        &[("x-mock-chunks", "100"), ("x-mock-interval-ms", "100")],
    )
    .send()
    .await?;
    let mut body = res.bytes_stream();
    body.next().await.transpose()?;
    drop(body);
    assert!(
        await_counter(&s.mock, "streams_cancelled", 1, 1000).await?,
        "the vendor was still streaming 1 s after the client left"
    );
    Ok(())
}

async fn audit_line_is_right_and_logs_hold_no_secret(s: Stack) -> Result<()> {
    let got = receive(chat(
        &s.base(),
        CLIENT_KEY,
        &[("x-mock-chunks", "6"), ("x-mock-interval-ms", "10")],
    ))
    .await?;
    let _ = chat(&s.base(), "wrong-key", &[]).send().await?;
    let _ = chat(&s.base(), CLIENT_KEY, &[("x-mock-status", "500")])
        .send()
        .await?
        .bytes()
        .await?;
    let relayed = String::from_utf8(got.bytes)?;
    // The audit line is written by the log thread a moment after the stream's end.
    let logs = s
        .relay
        .await_logs(|l| {
            l.lines()
                .any(|l| l.contains("stream ended") && l.contains(&got.trace_id))
        })
        .await?;
    let line = logs
        .lines()
        .find(|l| l.contains("stream ended") && l.contains(&got.trace_id));
    let line = line.expect("no audit line for the stream");
    for field in [
        "tenant=e2e",
        "route=/v1/chat/completions",
        "status=200",
        "outcome=\"complete\"",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "audit line lacks {field}: {line}");
    }
    assert!(line.contains(&format!("bytes={}", relayed.len())), "{line}");
    for field in ["ttfb_ms=", "duration_ms="] {
        let value = line.split(field).nth(1).and_then(|v| v.split(' ').next());
        let decimals = value
            .and_then(|v| v.split_once('.'))
            .map_or(0, |(_, d)| d.len());
        assert!(
            decimals <= 3,
            "{field} to the microsecond, not float noise: {line}"
        );
    }
    assert!(
        !line.contains('\u{FFFD}'),
        "a character split across frames was mangled: {line}"
    );
    // Every content chunk's text, decoded across frame boundaries, is in the line.
    for piece in relayed.split("\"content\":\"").skip(1) {
        let content = piece.split('"').next().unwrap_or_default();
        assert!(line.contains(content), "audit text lacks {content:?}");
    }
    for secret in [VENDOR_KEY, CLIENT_KEY, "wrong-key"] {
        assert!(
            !logs.contains(secret),
            "the relay logged a credential ({secret})"
        );
    }
    if let Some(n) = &s.nginx {
        n.assert_no_premature_close();
    }
    if let Some(h) = &s.haproxy {
        let log = h.log();
        for secret in [VENDOR_KEY, CLIENT_KEY, "wrong-key"] {
            assert!(
                !log.contains(secret),
                "HAProxy logged a credential ({secret})"
            );
        }
    }
    Ok(())
}
