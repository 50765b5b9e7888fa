//! The admin listener of the real binary: after a complete stream, a vendor reset, a vendor 503 and a rejected
//! key, `/metrics` counts each of them (and the tokens the complete one reported), on the admin port and never on
//! the public one.

use anyhow::{Context, Result};

use crate::stack::{Front, Options, Stack, stack};
use crate::support::*;

/// The value of the first sample of `name` whose labels include every `label="value"` in `labels`.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    samples(text, name, labels).next()
}

/// Every sample of `name` whose labels include every `label="value"` in `labels`.
fn samples<'a>(text: &'a str, name: &'a str, labels: &'a [&str]) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(move |l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A stack with the relay in front, and the base URL of the relay's admin listener.
async fn relay_with_admin() -> Result<(Stack, String)> {
    let s = stack(Front::Relay, Options::default())
        .await?
        .context("no stack")?;
    let admin = format!("http://{}", s.relay.admin().context("no admin line")?);
    Ok((s, admin))
}

#[tokio::test]
async fn metrics_count_what_the_streams_did() -> Result<()> {
    let (s, admin) = relay_with_admin().await?;
    let get = |path: &str| client().get(format!("{admin}{path}")).send();
    assert_eq!(get("/healthz").await?.status(), 200);
    assert_eq!(get("/readyz").await?.status(), 200);
    // Every known label value is there from the start, at 0: rate() has a series before the first event.
    let fresh = get("/metrics").await?.text().await?;
    for reason in ["unauthorized", "payload_too_large", "headers_too_large"] {
        let want = [format!("reason=\"{reason}\"")];
        let wanted: Vec<&str> = want.iter().map(String::as_str).collect();
        assert_eq!(
            sample(&fresh, "ssegate_rejections_total", &wanted),
            Some(0.0),
            "{reason}"
        );
    }

    // What is running: the relay binary is built with this test's profile; an unoptimized one says so at startup.
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let label = format!("profile=\"{profile}\"");
    assert_eq!(
        sample(&fresh, "ssegate_build_info", &[&label]),
        Some(1.0),
        "{fresh}"
    );
    if profile == "debug" {
        s.relay
            .await_logs(|l| l.contains("this relay is a debug build"))
            .await?;
    }

    let base = s.base();
    let complete = receive(chat_with_usage(&base, &[("x-mock-chunks", "5")])).await?;
    assert!(String::from_utf8(complete.bytes)?.ends_with("data: [DONE]\n\n"));
    let reset = [("x-mock-chunks", "5"), ("x-mock-reset-after", "2")];
    drain(chat(&base, CLIENT_KEY, &reset)).await?;
    let failing = chat(&base, CLIENT_KEY, &[("x-mock-status", "503")])
        .send()
        .await?;
    assert_eq!(failing.status(), 503);
    assert_eq!(chat(&base, "wrong", &[]).send().await?.status(), 401);
    // The Responses API reports its usage as input/output tokens in `response.completed`: counted the same way.
    let responses = client()
        .post(format!("{base}/v1/responses"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .header("x-mock-chunks", "4")
        .body(r#"{"model":"mock-1","stream":true,"input":"你好"}"#);
    assert_eq!(drain(responses).await?, 200);

    let text = get("/metrics").await?.text().await?;
    // name, labels the sample must carry, value. The vendor's 503 body, relayed to its end, is a complete stream
    // too (its status says the rest), so it counts in `complete` and in the first-byte histograms.
    let expect = r#"
        ssegate_stream_outcomes_total route="/v1/chat/completions" outcome="complete" 2
        ssegate_stream_outcomes_total route="/v1/chat/completions" outcome="upstream_reset" 1
        ssegate_rejections_total reason="unauthorized" 1
        ssegate_requests_total route="/v1/chat/completions" tenant="e2e" status_class="2xx" 2
        ssegate_requests_total route="/v1/chat/completions" tenant="e2e" status_class="5xx" 1
        ssegate_requests_total route="/v1/chat/completions" tenant="none" status_class="4xx" 1
        ssegate_upstream_errors_total route="/v1/chat/completions" kind="status_5xx" 1
        ssegate_streams_in_flight route="/v1/chat/completions" 0
        ssegate_client_first_byte_seconds_count route="/v1/chat/completions" 3
        ssegate_upstream_first_byte_seconds_count route="/v1/chat/completions" 3
        ssegate_relay_overhead_seconds_count route="/v1/chat/completions" 3
        ssegate_tokens_total route="/v1/chat/completions" tenant="e2e" type="prompt" source="reported" 9
        ssegate_tokens_total route="/v1/chat/completions" tenant="e2e" type="completion" source="reported" 5
        ssegate_tokens_total route="/v1/responses" tenant="e2e" type="prompt" source="reported" 9
        ssegate_tokens_total route="/v1/responses" tenant="e2e" type="completion" source="reported" 4
    "#;
    for line in expect.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let words: Vec<&str> = line.split(' ').collect();
        let (name, labels, want) = (words[0], &words[1..words.len() - 1], words[words.len() - 1]);
        let got = sample(&text, name, labels);
        assert_eq!(got, Some(want.parse()?), "{line} in:\n{text}");
    }
    // The reset stream ended without usage: charged an estimate, counted apart.
    for kind in ["prompt", "completion"] {
        let labels = [
            r#"route="/v1/chat/completions""#.to_owned(),
            r#"tenant="e2e""#.to_owned(),
            format!(r#"type="{kind}""#),
            r#"source="estimated""#.to_owned(),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let estimated = sample(&text, "ssegate_tokens_total", &labels).unwrap_or(0.0);
        assert!(
            estimated > 0.0,
            "no estimated {kind} tokens in:
{text}"
        );
    }
    let positive = [
        "ssegate_relayed_bytes_total",
        "ssegate_relayed_events_total",
        "ssegate_upstream_chunk_gap_seconds_count",
        "ssegate_relay_added_delay_seconds_count",
        "ssegate_stream_duration_seconds_count",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ];
    for name in positive {
        let route = [r#"route="/v1/chat/completions""#];
        let labels: &[&str] = if name.starts_with("ssegate_") {
            &route
        } else {
            &[]
        };
        // Summed: a series may be split further (a duration by outcome class), in any order.
        let got: f64 = samples(&text, name, labels).sum();
        assert!(got > 0.0, "{name} = {got} in:\n{text}");
    }
    // The public listener does not serve the admin endpoints.
    let public = client().get(format!("{base}/metrics")).send().await?;
    assert_eq!(public.status(), 404);
    Ok(())
}

/// `_sum / _count` of a histogram on the chat route.
fn mean(text: &str, name: &str) -> Option<f64> {
    let route = [r#"route="/v1/chat/completions""#];
    let sum = sample(text, &format!("{name}_sum"), &route)?;
    let count = sample(text, &format!("{name}_count"), &route)?;
    (count > 0.0).then(|| sum / count)
}

#[tokio::test]
async fn the_relay_added_delay_agrees_with_what_a_client_measures() -> Result<()> {
    let (s, admin) = relay_with_admin().await?;
    let scenario = [("x-mock-chunks", "30"), ("x-mock-interval-ms", "20")];
    let got = receive(chat(&s.base(), CLIENT_KEY, &scenario)).await?;
    assert_eq!(got.delays.len(), 30);
    // Outside: the mock's emission to the client's arrival, which contains the relay's share and more.
    let outside = got.delays.iter().map(|d| d.as_secs_f64()).sum::<f64>() / 30.0;
    let text = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let count = sample(
        &text,
        "ssegate_relay_added_delay_seconds_count",
        &[r#"route="/v1/chat/completions""#],
    );
    assert!(
        count.is_some_and(|c| c >= 30.0),
        "every frame measured: {count:?}"
    );
    let inside = mean(&text, "ssegate_relay_added_delay_seconds").context("no added delay")?;
    eprintln!(
        "relay-added delay mean {:.1} us, client-measured one-way delay mean {:.1} us",
        inside * 1e6,
        outside * 1e6
    );
    assert!(
        inside > 0.0 && inside <= outside,
        "inside {inside} outside {outside}"
    );
    Ok(())
}
