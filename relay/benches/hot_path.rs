//! Hot-path benchmarks: what every relayed byte or request passes through.
//!
//! `cargo bench -p relay --bench hot_path` prints throughput: the SSE scanner and the audit decoder in bytes/s over
//! realistic OpenAI frames, the client-key check per request, and frames/s through the tap (the body wrapper that
//! forwards every upstream frame), and the audit text written into a text-format record line (`str`'s `Debug`
//! against [`relay::logfields::Quoted`]).

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::BodyExt;
use relay::auth::Authenticator;
use relay::config::{ClientKey, parse_sha256};
use relay::logfields::Quoted;
use relay::record::Record;
use relay::tap::{TapBody, TapParts, Timers};
use relay::text::AuditText;
use relay_wire::sse::EventScanner;

/// OpenAI-style events of about 230 bytes, Chinese content, cut into frames of `frame` bytes regardless of event
/// boundaries (as TCP delivers them).
fn frames(total: usize, frame: usize) -> Vec<Bytes> {
    let mut stream = Vec::with_capacity(total + 512);
    let mut i = 0u64;
    while stream.len() < total {
        let event = format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1795644902,\
             \"model\":\"mock-1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"ts={};你好，这是流式回答\"}},\
             \"finish_reason\":null}}]}}\n\n",
            1_795_644_902_000_000_000u64 + i
        );
        stream.extend_from_slice(event.as_bytes());
        i += 1;
    }
    let stream = Bytes::from(stream);
    (0..stream.len())
        .step_by(frame)
        .map(|at| stream.slice(at..(at + frame).min(stream.len())))
        .collect()
}

fn scanner_and_audit(c: &mut Criterion) {
    let mut group = c.benchmark_group("observe");
    for frame in [230usize, 4096] {
        let input = frames(1 << 20, frame);
        let bytes: usize = input.iter().map(Bytes::len).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(
            BenchmarkId::new("sse_scanner", frame),
            &input,
            |b, input| {
                b.iter(|| {
                    let mut s = EventScanner::new(Some("data: [DONE]"), 8 << 20);
                    for f in input {
                        s.feed(f).unwrap_or_default();
                    }
                    s.events()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("audit_decoder", frame),
            &input,
            |b, input| {
                b.iter(|| {
                    let mut a = AuditText::new(usize::MAX / 2);
                    for f in input {
                        a.push(f);
                    }
                    a.finish().0.len()
                })
            },
        );
    }
    group.finish();
}

fn client_key_check(c: &mut Criterion) {
    let keys: Vec<ClientKey> = (0..10)
        .map(|i| ClientKey {
            tenant: Arc::from(format!("tenant-{i}")),
            sha256: parse_sha256(&mock_upstream::sha256_hex(format!("key-{i}")))
                .unwrap_or_default(),
        })
        .collect();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Bearer key-7"),
    );
    let auth = Authenticator::with(keys, None);
    c.bench_function("client_key_check/10_keys", |b| {
        b.iter(|| auth.authenticate(&headers).is_ok())
    });
}

/// A full audit text (4 KiB, the default `audit.max_text_bytes`) of a Chinese answer, as the record line writes it.
fn record_text(c: &mut Criterion) {
    let text = "流式输出的中文答案，逐块转发。".repeat(4096 / 45);
    let mut line = String::with_capacity(8192);
    let mut group = c.benchmark_group("record_text_4k_chinese");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("str_debug", |b| {
        b.iter(|| {
            line.clear();
            std::fmt::Write::write_fmt(&mut line, format_args!("{text:?}")).is_ok()
        })
    });
    group.bench_function("quoted", |b| {
        b.iter(|| {
            line.clear();
            std::fmt::Write::write_fmt(&mut line, format_args!("{:?}", Quoted(&text))).is_ok()
        })
    });
    group.finish();
}

fn tap_forwarding(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
    let Ok(runtime) = runtime else { return };
    let input = frames(1 << 20, 230);
    let mut group = c.benchmark_group("tap");
    group.throughput(Throughput::Elements(input.len() as u64));
    group.bench_function("forward_frames", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let upstream = http_body_util::StreamBody::new(futures_util::stream::iter(
                    input
                        .iter()
                        .cloned()
                        .map(|f| Ok::<_, std::convert::Infallible>(http_body::Frame::data(f))),
                ));
                let now = tokio::time::Instant::now();
                let trace_id: Arc<str> = Arc::from("bench");
                let route = Arc::from("/v1/chat/completions");
                let mut record = Record::open(Arc::from("bench"), route, trace_id.clone(), now);
                record.answered(200, 1, None);
                let scanner = EventScanner::new(Some("data: [DONE]"), 8 << 20);
                let parts = TapParts {
                    scanner: Some(scanner),
                    text_max: Some(4096),
                    trace_id,
                    error_shape: relay::tap::ErrorShape::Openai,
                    chunk_gap: Some(std::sync::Arc::default()),
                    added_delay: None,
                    hide_usage: false,
                    usage: relay::usage::UsageScanner::default(),
                    on_end: move |end, seen| record.stream_ended(&end, false, &seen, None),
                    timers: Timers {
                        first_byte_deadline: now + std::time::Duration::from_secs(60),
                        idle: std::time::Duration::from_secs(120),
                        total_deadline: now + std::time::Duration::from_secs(1800),
                        keepalive: Some(std::time::Duration::from_secs(15)),
                    },
                    drain: tokio_util::sync::CancellationToken::new(),
                };
                let mut tap = TapBody::new(upstream, parts);
                let mut n = 0usize;
                while let Some(Ok(frame)) = tap.frame().await {
                    n += frame.data_ref().map_or(0, Bytes::len);
                }
                n
            })
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    scanner_and_audit,
    client_key_check,
    record_text,
    tap_forwarding
);
criterion_main!(benches);
