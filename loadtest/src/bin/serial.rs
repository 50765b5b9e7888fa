//! `serial`: one stream at a time on one kept-alive HTTP/1.1 connection, with hyper's client, the next request
//! sent as soon as the previous answer is over: the pattern of a replica that serves few streams at a time (a
//! chat front end, a batch job). Prints one JSON object: time to first byte (from the moment the request could be
//! sent), each content event's one-way delay (the mock's `ts=` stamp), and the time from `[DONE]` to the end of
//! the response (the chunked body's last chunk), after which the connection takes the next request. The perf gate
//! runs it against nginx and the relay (`perf`, `SERIAL`). Variants of the client's pattern, for chasing a
//! low-load regression by hand: `--early` (the next request's clock starts at `[DONE]`, before the body's end),
//! `--fresh` (a new connection per stream), `--nodelay`, `--first-chunk-ms` (first event after a pause).

#![expect(clippy::print_stdout, reason = "serial prints its summary on stdout")]

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use mock_upstream::dialect::unix_nanos;
use testkit::sse::{EventReader, delay};
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    /// The chat completions URL (`http://127.0.0.1:PORT/v1/chat/completions`).
    #[arg(long)]
    url: String,
    #[arg(long)]
    key: String,
    #[arg(long, default_value_t = 30)]
    streams: usize,
    #[arg(long, default_value_t = 20)]
    chunks: u64,
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Set TCP_NODELAY on the client's socket (hyper-util's connector leaves it off by default).
    #[arg(long)]
    nodelay: bool,
    /// Send the next request as soon as `[DONE]` arrives (the rest of the body is read by the connection task).
    #[arg(long)]
    early: bool,
    /// The mock's delay between the response head and the first event (`x-mock-first-chunk-ms`).
    #[arg(long, default_value_t = 0)]
    first_chunk_ms: u64,
    /// A new connection for every stream.
    #[arg(long)]
    fresh: bool,
}

const BODY: &str =
    r#"{"model":"mock-1","stream":true,"messages":[{"role":"user","content":"你好"}]}"#;

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Connects and hands the connection to `tasks`, which drives it.
async fn connect(
    authority: &str,
    nodelay: bool,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    tcp.set_nodelay(nodelay)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tasks.spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let uri: http::Uri = a.url.parse()?;
    let authority = uri.authority().context("no host in --url")?.clone();
    // The connections' tasks and the `--early` body readers; aborted when the run ends.
    let mut tasks = tokio::task::JoinSet::new();
    let mut sender = connect(authority.as_str(), a.nodelay, &mut tasks).await?;
    let (mut ttfb, mut delays, mut tails) = (Vec::new(), Vec::new(), Vec::new());
    // Answers that ended without `[DONE]`.
    let mut missing = 0_usize;
    // When the previous answer's `[DONE]` arrived (`--early`: the next request's clock starts there).
    let mut previous_done: Option<Instant> = None;
    for _ in 0..a.streams {
        if a.fresh {
            sender = connect(authority.as_str(), a.nodelay, &mut tasks).await?;
        }
        let started = previous_done.take().unwrap_or_else(Instant::now);
        sender.ready().await?;
        let req = http::Request::post(uri.clone())
            .header(http::header::HOST, authority.as_str())
            .header(http::header::AUTHORIZATION, format!("Bearer {}", a.key))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-mock-chunks", a.chunks.to_string())
            .header("x-mock-interval-ms", a.interval_ms.to_string())
            .header("x-mock-first-chunk-ms", a.first_chunk_ms.to_string())
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))?;
        let res = sender.send_request(req).await?;
        anyhow::ensure!(res.status().is_success(), "status {}", res.status());
        let mut body = res.into_body();
        let (mut reader, mut first, mut done) = (EventReader::default(), None, None);
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            let (now, arrived) = (Instant::now(), unix_nanos());
            first.get_or_insert(now);
            reader.feed(&data, |event| {
                if let Some(d) = delay(event, arrived) {
                    delays.push(d.as_secs_f64() * 1e3);
                }
                if event.starts_with(b"data: [DONE]") {
                    done = Some(now);
                }
            });
            if a.early && done.is_some() {
                break;
            }
        }
        missing += usize::from(done.is_none());
        if let Some(first) = first {
            ttfb.push(first.duration_since(started).as_secs_f64() * 1e3);
        }
        if a.early {
            previous_done = done;
            // The rest of the body (its last chunk) is read while the next request waits for the connection.
            tasks.spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
            continue;
        }
        let end = Instant::now();
        if let Some(done) = done {
            tails.push(end.duration_since(done).as_secs_f64() * 1e3);
        }
    }
    drop(sender);
    let summary = serde_json::json!({
        "streams": ttfb.len(),
        "ttfb_ms": {"p50": quantile(&mut ttfb, 0.5), "p99": quantile(&mut ttfb, 0.99), "max": quantile(&mut ttfb, 1.0)},
        "chunk_delay_ms": {"p50": quantile(&mut delays, 0.5), "p99": quantile(&mut delays, 0.99), "p99_9": quantile(&mut delays, 0.999), "max": quantile(&mut delays, 1.0)},
        "done_to_end_ms": {"p50": quantile(&mut tails, 0.5), "max": quantile(&mut tails, 1.0)},
        "events": delays.len(),
        // In the goose summary's terms (a non-2xx answer or a transport error ends the run with an error instead).
        "failures": {"non_2xx": 0, "transport_errors": 0, "error_events": 0, "missing_terminal": missing},
    });
    println!("{summary}");
    Ok(())
}
