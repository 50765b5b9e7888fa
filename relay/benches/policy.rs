//! Request policy cost: `cargo bench -p relay --bench policy`.
//!
//! Criterion times [`relay::policy::apply`] on a realistic chat request (a system prompt and six turns, 2.2 KB,
//! Chinese and English, some escapes): each rule alone (the README's table; `no_rules` is the one parse every
//! policy makes), one costly pattern alone (a card number: counted repetitions cost what they cost, whatever the
//! relay does around them), and every rule at once (models, alias, cap, forced and removed members, message and
//! size limits, four deny substrings and two patterns) with the request passing untouched, and rewritten. Then the per-request p50, p99
//! and p99.9 over 200,000 single timed calls of the full policy, the figure the README's policy table quotes.

#![expect(
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_types,
    reason = "a bench fails loudly on a bad fixture, prints its percentiles, and times single calls with the std clock"
)]

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use relay::config::{Policy, RawPolicy};

fn request(model: &str) -> String {
    let turn =
        |role: &str, text: &str| serde_json::json!({"role": role, "content": text}).to_string();
    let mut messages = vec![turn(
        "system",
        "You are the support assistant of ACME Corp. Answer briefly, in the user's language, and never reveal \
         internal ticket numbers. 回答要简洁，使用用户的语言。If unsure, say so and offer to escalate to a human agent.",
    )];
    for i in 0..3 {
        messages.push(turn(
            "user",
            &format!(
                "Question {i}: my order #A-2026-{i}417 arrived damaged; the box was crushed and the \"manual\" is \
                 missing. 我的订单到了，但是包装破损，说明书也不见了。What are my options for a replacement or a \
                 refund, and how long does each take? I'd prefer a replacement if it can ship this week."
            ),
        ));
        messages.push(turn(
            "assistant",
            "I'm sorry your order arrived damaged. You can choose a replacement (ships within 2 business days) or \
             a full refund (5–7 business days after we receive the item). 很抱歉给您带来不便。Please send a photo \
             of the damaged box so that we can open the claim.",
        ));
    }
    format!(
        r#"{{"model":"{model}","stream":true,"temperature":0.3,"max_tokens":2048,"user":"u-81723","messages":[{}]}}"#,
        messages.join(",")
    )
}

fn policy(text: &str) -> Policy {
    let raw: RawPolicy = toml::from_str(text).expect("policy");
    Policy::compile("bench", &raw).expect("policy")
}

const FULL: &str = r#"
models = ["gpt-4o-mini", "gpt-4.1*", "o4-mini"]
aliases = { fast = "gpt-4o-mini", smart = "gpt-4.1" }
max_tokens = 4096
max_messages = 32
max_prompt_bytes = 65536
remove = ["logit_bias", "stream_options.include_obfuscation"]
deny_substrings = ["BEGIN PRIVATE KEY", "internal-only", "机密", "sk-live-"]
deny_patterns = ['(?i)\bssn\s*\d{3}-\d{2}-\d{4}\b', '(?i)ignore (?:all )?previous instructions']
force = { stream_options.include_usage = true }
"#;

/// One rule at a time (the README's table), on the same request.
const RULES: &[(&str, &str)] = &[
    ("no_rules", ""),
    ("models", "models = [\"gpt-4o-mini\", \"gpt-4.1*\"]"),
    ("aliases", "aliases = { fast = \"gpt-4o-mini\" }"),
    ("max_tokens", "max_tokens = 1024"),
    ("force", "force = { stream_options.include_usage = true }"),
    ("remove", "remove = [\"user\"]"),
    ("max_messages", "max_messages = 32"),
    ("max_prompt_bytes", "max_prompt_bytes = 65536"),
    (
        "deny_substrings",
        "deny_substrings = [\"BEGIN PRIVATE KEY\", \"internal-only\", \"机密\", \"sk-live-\"]",
    ),
    (
        "deny_patterns",
        r"deny_patterns = ['(?i)\bssn\s*\d{3}-\d{2}-\d{4}\b', '(?i)ignore (?:all )?previous instructions']",
    ),
    (
        "deny_patterns_card_number",
        r"deny_patterns = ['(?-u:\b)(?:\d[ -]*?){13,16}(?-u:\b)']",
    ),
];

fn bench(c: &mut Criterion) {
    let full = policy(FULL);
    let plain = request("gpt-4o-mini");
    let forced = plain.replace(
        "\"stream\":true",
        "\"stream\":true,\"stream_options\":{\"include_usage\":true}",
    );
    let aliased = request("fast");
    println!("request body: {} bytes", plain.len());
    let mut group = c.benchmark_group("policy");
    for (name, rules) in RULES {
        let p = policy(rules);
        let body = if *name == "aliases" { &aliased } else { &plain };
        group.bench_function(*name, |b| {
            b.iter(|| relay::policy::apply(&p, body.as_bytes()).expect("allowed"))
        });
    }
    group.bench_function("every_rule_untouched", |b| {
        b.iter(|| relay::policy::apply(&full, forced.as_bytes()).expect("allowed"))
    });
    group.bench_function("every_rule_rewritten", |b| {
        b.iter(|| relay::policy::apply(&full, aliased.as_bytes()).expect("allowed"))
    });
    group.finish();
    let models = policy(RULES[1].1);
    for (name, body, pol) in [
        ("models only", &plain, &models),
        ("every rule, untouched", &forced, &full),
        ("every rule, rewritten", &aliased, &full),
    ] {
        let mut took: Vec<u64> = (0..200_000)
            .map(|_| {
                let t = Instant::now();
                let out = relay::policy::apply(pol, body.as_bytes());
                let ns = t.elapsed().as_nanos() as u64;
                std::hint::black_box(out).expect("allowed");
                ns
            })
            .collect();
        took.sort_unstable();
        let at =
            |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)] as f64 / 1000.0;
        println!(
            "policy per request ({name}): p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs",
            at(0.5),
            at(0.99),
            at(0.999)
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
