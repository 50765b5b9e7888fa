//! Traces from the real binary to a real OTLP/HTTP receiver (in this test, decoding the export requests with the
//! protocol's own message types): a request sent with a W3C `traceparent`, directly and through nginx, becomes a
//! `request` span in the client's trace under the client's span, with a child `upstream` span whose context the
//! vendor received; the attributes say what happened; every log line of the request carries the trace id.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::sync::mpsc;

use crate::stack::{Front, Options, stack_env};
use crate::support::*;

/// An OTLP/HTTP traces endpoint on a free loopback port; every span it receives, with its service name, arrives on
/// the channel. It lives as long as the test's runtime.
async fn otlp_receiver() -> Result<(SocketAddr, mpsc::UnboundedReceiver<(String, Span)>)> {
    use axum::http::StatusCode;
    let (tx, rx) = mpsc::unbounded_channel();
    let export = move |body: Bytes| async move {
        let Ok(req) = ExportTraceServiceRequest::decode(body) else {
            return StatusCode::BAD_REQUEST;
        };
        for resource in req.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                let _ = tx.send((service.clone(), span));
            }
        }
        StatusCode::OK
    };
    let app = axum::Router::new().route("/v1/traces", axum::routing::post(export));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, rx))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn str_attr(span: &Span, key: &str) -> String {
    attr(span, key).and_then(text).unwrap_or_default()
}

fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key)? {
        Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// Spans of trace `trace_id` (hex) as they arrive, until `done` holds for the ones so far (15 s at most).
async fn spans_of(
    rx: &mut mpsc::UnboundedReceiver<(String, Span)>,
    trace_id: &str,
    done: impl Fn(&[Span]) -> bool,
) -> Result<Vec<Span>> {
    let mut found = Vec::new();
    let wait = async {
        while !done(&found) {
            let (service, span) = rx.recv().await.context("the receiver stopped")?;
            if hex(&span.trace_id) == trace_id {
                assert_eq!(service, "ssegate-e2e", "service.name");
                found.push(span);
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(15), wait).await {
        Ok(r) => r.map(|()| found),
        Err(_) => bail!("15 s and the spans of {trace_id} are not all there: {found:#?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE: &str = "5c8e9f0a1b2c3d4e5f60718293a4b5c6";
const REJECTED: &str = "ffff9f0a1b2c3d4e5f60718293a4b5c6";
const CLIENT_SPAN: &str = "a1b2c3d4e5f60718";

async fn a_client_traceparent_becomes_the_parent(front: Front) -> Result<()> {
    let (receiver, mut rx) = otlp_receiver().await?;
    let top = format!("[otel]\nendpoint = \"http://{receiver}\"\nservice_name = \"ssegate-e2e\"\n");
    let options = Options {
        relay_top: Box::leak(top.into_boxed_str()),
        relay_route: "propagate_trace = true",
        ..Options::default()
    };
    // Export within 50 ms of a span's end rather than the default 5 s.
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let Some(s) = stack_env(front, options, &env).await? else {
        return Ok(());
    };
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let scenario = [("x-mock-chunks", "4")];
    let got =
        receive(chat_with_usage(&s.base(), &scenario).header("traceparent", &traceparent)).await?;
    let body = String::from_utf8(got.bytes)?;
    assert!(body.ends_with("data: [DONE]\n\n"));
    let events = body.matches("\n\n").count() as i64;

    let spans = spans_of(&mut rx, TRACE, |spans| spans.len() >= 2).await?;
    let request = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .context("no server span")?;
    let upstream = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .context("no client span")?;
    assert_eq!(request.name, "POST /v1/chat/completions");
    assert_eq!(
        hex(&request.parent_span_id),
        CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(upstream.name, "chat mock-1");
    assert_eq!(
        upstream.parent_span_id, request.span_id,
        "the vendor call is the request's child"
    );
    assert!(request.start_time_unix_nano <= upstream.start_time_unix_nano);
    assert!(request.end_time_unix_nano >= upstream.end_time_unix_nano);
    for span in [request, upstream] {
        assert_eq!(str_attr(span, "gen_ai.system"), "openai");
        assert_eq!(str_attr(span, "gen_ai.request.model"), "mock-1");
        assert_eq!(str_attr(span, "ssegate.outcome"), "complete");
        assert!(
            int_attr(span, "gen_ai.usage.input_tokens").is_some_and(|t| t > 0),
            "{span:#?}"
        );
        assert!(int_attr(span, "gen_ai.usage.output_tokens").is_some_and(|t| t > 0));
        assert!(int_attr(span, "ssegate.bytes").is_some_and(|b| b > 0));
        assert_eq!(int_attr(span, "ssegate.events"), Some(events));
        let first = span.events.iter().find(|e| e.name == "first_byte");
        let first = first.context("no first_byte event")?;
        let (start, end, at) = (
            span.start_time_unix_nano,
            span.end_time_unix_nano,
            first.time_unix_nano,
        );
        assert!(
            (start..=end).contains(&at),
            "{}: {start} {at} {end}",
            span.name
        );
    }
    assert_eq!(int_attr(request, "http.response.status_code"), Some(200));
    assert_eq!(str_attr(request, "http.route"), "/v1/chat/completions");
    assert_eq!(str_attr(request, "ssegate.tenant"), "e2e");
    assert_eq!(int_attr(upstream, "http.response.status_code"), Some(200));
    assert_eq!(str_attr(upstream, "server.address"), "127.0.0.1");

    // The vendor got the upstream span's context (the route propagates), not the client's.
    let record = mock_record(&s.mock, &got.trace_id).await?;
    let sent = record["request_headers"]["traceparent"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(sent, format!("00-{TRACE}-{}-01", hex(&upstream.span_id)));

    // A rejected request is traced too, and its log line names the trace.
    let rejected = format!("00-{REJECTED}-{CLIENT_SPAN}-01");
    let res = chat(&s.base(), "wrong-key", &[])
        .header("traceparent", &rejected)
        .send()
        .await?;
    assert_eq!(res.status(), 401);
    let spans = spans_of(&mut rx, REJECTED, |spans| !spans.is_empty()).await?;
    assert_eq!(int_attr(&spans[0], "http.response.status_code"), Some(401));

    let logs = s.relay.await_logs(|l| l.contains("stream ended")).await?;
    let audit = logs
        .lines()
        .find(|l| l.contains("stream ended"))
        .context("no audit line")?;
    assert!(audit.contains(&format!("trace_id={TRACE}")), "{audit}");
    assert!(
        audit.contains(&format!("vendor_trace_id={}", got.trace_id)),
        "{audit}"
    );
    let error = logs
        .lines()
        // `status=401`, not just `401`: a random trace or vendor id in another line may contain those digits.
        .find(|l| l.contains("status=401"))
        .context("no log line for the 401")?;
    assert!(error.contains(REJECTED), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_client_traceparent_becomes_the_parent_direct() -> Result<()> {
    a_client_traceparent_becomes_the_parent(Front::Relay).await
}

#[tokio::test]
async fn a_client_traceparent_becomes_the_parent_through_nginx() -> Result<()> {
    a_client_traceparent_becomes_the_parent(Front::Nginx).await
}

/// Traces off (the default) and `propagate_trace` off (the default): the client's trace id still names the request
/// in the logs, and the vendor sees no trace context.
#[tokio::test]
async fn by_default_the_vendor_sees_no_trace_context() -> Result<()> {
    let s = stack_env(Front::Relay, Options::default(), &[])
        .await?
        .context("no stack")?;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let got = receive(chat(&s.base(), CLIENT_KEY, &[]).header("traceparent", &traceparent)).await?;
    let record = mock_record(&s.mock, &got.trace_id).await?;
    let headers = record["request_headers"]
        .as_object()
        .context("no headers")?;
    assert!(
        !headers.contains_key("traceparent") && !headers.contains_key("tracestate"),
        "{headers:?}"
    );
    let logs = s.relay.await_logs(|l| l.contains("stream ended")).await?;
    let audit = logs
        .lines()
        .find(|l| l.contains("stream ended"))
        .context("no audit line")?;
    assert!(audit.contains(&format!("trace_id={TRACE}")), "{audit}");
    Ok(())
}

/// A collector that is down costs the streams nothing: they complete, and the spans that could not be exported are
/// counted on `/metrics`.
#[tokio::test]
async fn a_collector_that_is_down_costs_only_counted_drops() -> Result<()> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let top = format!("[otel]\nendpoint = \"http://{closed}\"\nservice_name = \"ssegate-e2e\"\n");
    let options = Options {
        relay_top: Box::leak(top.into_boxed_str()),
        ..Options::default()
    };
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let s = stack_env(Front::Relay, options, &env)
        .await?
        .context("no stack")?;
    for _ in 0..3 {
        let got = receive(chat(&s.base(), CLIENT_KEY, &[("x-mock-chunks", "3")])).await?;
        assert!(String::from_utf8(got.bytes)?.ends_with("data: [DONE]\n\n"));
    }
    let metrics = format!("http://{}/metrics", s.relay.admin().context("no admin")?);
    let count = |text: &str, result: &str| {
        let name = format!("ssegate_trace_spans_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&name)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Three streams, two spans each: wait (polling the counter, 15 s at most) until all six failed to export.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = client().get(&metrics).send().await?.text().await?;
        let (ended, failed) = (count(&text, "ended"), count(&text, "export_failed"));
        if failed >= 6.0 {
            assert_eq!(ended, 6.0, "{text}");
            assert_eq!(count(&text, "exported"), 0.0);
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("spans ended {ended}, failed {failed}: the failed exports were not counted");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
