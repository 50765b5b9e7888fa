//! Every rule allowed, refused and rewritten, on bodies as clients send them.

use super::*;
use crate::config::{Policy, RawPolicy};

fn policy(toml_text: &str) -> Policy {
    let raw: RawPolicy = toml::from_str(toml_text).unwrap();
    Policy::compile("p", &raw).unwrap()
}

fn body(allowed: &Allowed) -> serde_json::Value {
    serde_json::from_slice(allowed.body.as_deref().expect("rewritten")).unwrap()
}

const CHAT: &str = r#"{"model":"gpt-4o-mini", "stream":true,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"你好 \u00e9"}],"temperature":0.70}"#;

#[test]
fn an_allowed_request_goes_byte_for_byte() {
    let p = policy("models = [\"gpt-4o-mini\", \"gpt-4.1*\"]\nmax_tokens = 4096");
    let with_cap = CHAT.replace("\"stream\"", "\"max_tokens\":100,\"stream\"");
    let allowed = apply(&p, with_cap.as_bytes()).unwrap();
    assert!(allowed.body.is_none() && allowed.rewrites.is_empty());
    let prefixed = with_cap.replace("gpt-4o-mini", "gpt-4.1-nano");
    assert!(apply(&p, prefixed.as_bytes()).unwrap().body.is_none());
    // No rules at all: nothing is parsed beyond the top level, nothing changes.
    let none = policy("");
    assert!(apply(&none, CHAT.as_bytes()).unwrap().body.is_none());
}

#[test]
fn models_not_allowed_or_missing_are_refused() {
    let p = policy(r#"models = ["gpt-4o-mini", "gpt-4.1*"]"#);
    let other = CHAT.replace("gpt-4o-mini", "gpt-4o");
    let e = apply(&p, other.as_bytes()).unwrap_err();
    assert_eq!(e, PolicyError::ModelNotAllowed("gpt-4o".into()));
    assert_eq!(
        (e.status(), e.rule(), e.param()),
        (StatusCode::FORBIDDEN, "models", Some("model"))
    );
    // A prefix is a prefix, not a substring; an escaped name is read as the vendor reads it.
    let tricky = CHAT.replace("gpt-4o-mini", "x-gpt-4.1");
    assert!(apply(&p, tricky.as_bytes()).is_err());
    let escaped = CHAT.replace("gpt-4o-mini", "gpt-4o\\u002dmini");
    assert!(apply(&p, escaped.as_bytes()).unwrap().body.is_none());
    let missing = r#"{"messages":[]}"#;
    let e = apply(&p, missing.as_bytes()).unwrap_err();
    assert_eq!(
        (e, StatusCode::BAD_REQUEST),
        (
            PolicyError::ModelRequired,
            PolicyError::ModelRequired.status()
        )
    );
    let not_a_string = r#"{"model":["gpt-4o-mini"]}"#;
    assert_eq!(
        apply(&p, not_a_string.as_bytes()).unwrap_err(),
        PolicyError::ModelRequired
    );
}

#[test]
fn an_alias_becomes_its_model_and_nothing_else_moves() {
    let p = policy(
        r#"models = ["gpt-4o-mini"]
        aliases = { fast = "gpt-4o-mini" }"#,
    );
    let aliased = CHAT.replace("gpt-4o-mini", "fast");
    let allowed = apply(&p, aliased.as_bytes()).unwrap();
    assert_eq!(allowed.rewrites, Rewrites::ALIAS);
    let sent = std::str::from_utf8(allowed.body.as_deref().unwrap()).unwrap();
    // Every other member exactly as the client wrote it (escapes and number spelling included), in its order.
    assert_eq!(
        sent,
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"你好 \u00e9"}],"temperature":0.70}"#
    );
    // An alias to a model the list refuses cannot be configured.
    let raw: RawPolicy = toml::from_str("models = [\"a\"]\naliases = { fast = \"b\" }").unwrap();
    let e = Policy::compile("p", &raw).unwrap_err().to_string();
    assert!(e.contains("policies.p.aliases.fast"), "{e}");
}

#[test]
fn caps_lower_larger_values_and_a_default_fills_an_absent_one() {
    let p = policy("max_tokens = 1000\ndefault_max_tokens = 256");
    let big = CHAT.replace(
        "\"stream\"",
        "\"max_completion_tokens\":5000,\"max_tokens\":10,\"stream\"",
    );
    let allowed = apply(&p, big.as_bytes()).unwrap();
    assert_eq!(allowed.rewrites, Rewrites::MAX_TOKENS);
    let v = body(&allowed);
    assert_eq!(
        (
            v["max_completion_tokens"].as_u64(),
            v["max_tokens"].as_u64()
        ),
        (Some(1000), Some(10))
    );
    let absent = apply(&p, CHAT.as_bytes()).unwrap();
    assert_eq!(absent.rewrites, Rewrites::DEFAULT_MAX_TOKENS);
    assert_eq!(body(&absent)["max_tokens"], 256);
    let null = CHAT.replace("\"stream\"", "\"max_tokens\":null,\"stream\"");
    assert_eq!(
        body(&apply(&p, null.as_bytes()).unwrap())["max_tokens"],
        256
    );
    // A cap alone is also the default (an absent cap is the vendor's largest); the field is configurable.
    let p = policy("max_tokens = 1000\nmax_tokens_field = \"max_output_tokens\"");
    assert_eq!(
        body(&apply(&p, CHAT.as_bytes()).unwrap())["max_output_tokens"],
        1000
    );
    // Gemini's cap is inside generationConfig: lowered there, or written there as the default.
    let p = policy("max_tokens = 1000\nmax_tokens_field = \"generationConfig.maxOutputTokens\"");
    let gemini = r#"{"contents":[],"generationConfig":{"temperature":0.5,"maxOutputTokens":8192}}"#;
    let v = body(&apply(&p, gemini.as_bytes()).unwrap());
    assert_eq!(
        v["generationConfig"],
        serde_json::json!({"temperature": 0.5, "maxOutputTokens": 1000})
    );
    let v = body(&apply(&p, br#"{"contents":[]}"#).unwrap());
    assert_eq!(v["generationConfig"]["maxOutputTokens"], 1000);
    let v = body(&apply(&p, br#"{"generationConfig":{"topK":3}}"#).unwrap());
    assert_eq!(
        v["generationConfig"],
        serde_json::json!({"topK": 3, "maxOutputTokens": 1000})
    );
    let p = policy("max_tokens = 1000\nmax_tokens_field = \"max_output_tokens\"");
    for bad in ["\"5000\"", "-1", "1.5", "1e9"] {
        let b = CHAT.replace("\"stream\"", &format!("\"max_tokens\":{bad},\"stream\""));
        let e = apply(&p, b.as_bytes()).unwrap_err();
        assert_eq!(
            (e.rule(), e.status()),
            ("max_tokens", StatusCode::BAD_REQUEST),
            "{bad}"
        );
    }
}

#[test]
fn forced_members_merge_and_removed_ones_go() {
    let p = policy(
        r#"remove = ["logit_bias", "stream_options.include_obfuscation", "absent.member"]
        [force]
        temperature = 0.2
        stream_options.include_usage = true"#,
    );
    let b = CHAT.replace(
        "\"stream\"",
        "\"logit_bias\":{\"50256\":-100},\"stream_options\":{\"include_obfuscation\":true,\"x\":1},\"stream\"",
    );
    let allowed = apply(&p, b.as_bytes()).unwrap();
    assert!(
        allowed.rewrites.contains(Rewrites::FORCE) && allowed.rewrites.contains(Rewrites::REMOVE)
    );
    assert_eq!(allowed.rewrites.joined(), "force,remove");
    let v = body(&allowed);
    assert_eq!(
        v["stream_options"],
        serde_json::json!({"include_usage": true, "x": 1})
    );
    assert_eq!(v["temperature"], 0.2);
    assert!(v.get("logit_bias").is_none());
    assert_eq!(v["messages"][1]["content"], "你好 é");
    // Forced values already there: no rewrite.
    let already = r#"{"temperature":0.2,"stream_options":{"include_usage":true}}"#;
    assert!(apply(&p, already.as_bytes()).unwrap().body.is_none());
    // Absent members are added.
    let v = body(&apply(&p, br#"{"model":"m"}"#).unwrap());
    assert_eq!(
        v,
        serde_json::json!({"model":"m","temperature":0.2,"stream_options":{"include_usage":true}})
    );
}

#[test]
fn message_count_and_prompt_size_are_bounded() {
    let p = policy("max_messages = 2\nmax_prompt_bytes = 20");
    assert!(
        apply(&p, CHAT.as_bytes()).is_ok(),
        "9 + 9 bytes, two messages"
    );
    let three = CHAT
        .replace("]}", "]},{\"role\":\"user\",\"content\":\"x\"}]}")
        .replace("]}],", "]},");
    let three = three.replacen(
        r#"{"role":"user","content":"你好 \u00e9"}"#,
        r#"{"role":"user","content":"a"},{"role":"user","content":"b"}"#,
        1,
    );
    let e = apply(&p, three.as_bytes()).unwrap_err();
    assert_eq!(e, PolicyError::TooManyMessages { got: 3, limit: 2 });
    // Text in parts, `system` (Anthropic), `input` (Responses), Gemini's `contents`: all counted.
    let parts = r#"{"system":"0123456789","messages":[{"role":"user","content":[{"type":"text","text":"0123456789a"}]}]}"#;
    let e = apply(&p, parts.as_bytes()).unwrap_err();
    assert_eq!(
        (e.rule(), e.status()),
        ("max_prompt_bytes", StatusCode::BAD_REQUEST)
    );
    assert_eq!(e, PolicyError::PromptTooLarge { got: 21, limit: 20 });
    let gemini =
        r#"{"contents":[{"role":"user","parts":[{"text":"0123456789"},{"text":"0123456789a"}]}]}"#;
    assert!(matches!(
        apply(&p, gemini.as_bytes()),
        Err(PolicyError::PromptTooLarge { got: 21, .. })
    ));
    let input = r#"{"input":"0123456789012345678901"}"#;
    assert!(apply(&p, input.as_bytes()).is_err());
}

#[test]
fn deny_rules_name_the_rule_and_read_text_as_the_vendor_does() {
    let p = policy(
        r#"deny_substrings = ["internal-only"]
        deny_patterns = ['(?i)\bssn\s*\d{3}-\d{2}-\d{4}']"#,
    );
    assert!(apply(&p, CHAT.as_bytes()).is_ok());
    let leak = CHAT.replace("Be brief.", "my SSN 123-45-6789");
    let e = apply(&p, leak.as_bytes()).unwrap_err();
    assert_eq!(e, PolicyError::Denied("deny_patterns[0]".into()));
    assert_eq!(
        (e.status(), e.rule()),
        (StatusCode::FORBIDDEN, "deny_patterns[0]")
    );
    // Escaped in JSON, the text is still the text: `\u002d` is `-`.
    let escaped = CHAT.replace("Be brief.", "internal\\u002donly");
    assert_eq!(
        apply(&p, escaped.as_bytes()).unwrap_err(),
        PolicyError::Denied("deny_substrings[0]".into())
    );
    // In a content part, and in Anthropic's system blocks.
    let part = r#"{"system":[{"type":"text","text":"internal-only"}],"messages":[]}"#;
    assert!(apply(&p, part.as_bytes()).is_err());
    // A member named like text but outside the prompt is not looked at.
    let elsewhere = r#"{"metadata":{"text":"internal-only"},"messages":[]}"#;
    assert!(apply(&p, elsewhere.as_bytes()).is_ok());
}

#[test]
fn bodies_the_relay_and_the_vendor_could_read_differently_are_refused() {
    let p = policy(r#"models = ["gpt-4o-mini"]"#);
    for bad in [
        r#"{"model":"gpt-4o-mini","model":"gpt-4o"}"#,
        r#"[{"model":"gpt-4o-mini"}]"#,
        r#"{"model":"gpt-4o-mini""#,
        "",
    ] {
        let e = apply(&p, bad.as_bytes()).unwrap_err();
        assert_eq!(
            (e.rule(), e.status()),
            ("body", StatusCode::BAD_REQUEST),
            "{bad}"
        );
    }
    // Many members: still each once, and a repeat far in is still found (in linear time).
    let many: Vec<String> = (0..200_000).map(|i| format!("\"k{i}\":1")).collect();
    let wide = format!("{{\"model\":\"gpt-4o-mini\",{}}}", many.join(","));
    let started = tokio::time::Instant::now();
    assert!(apply(&p, wide.as_bytes()).unwrap().body.is_none());
    let repeated = wide.replacen("\"k199999\"", "\"k7\"", 1);
    assert_eq!(apply(&p, repeated.as_bytes()).unwrap_err().rule(), "body");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A repeated key inside a message is read twice (both texts looked at).
    let p = policy(r#"deny_substrings = ["evil"]"#);
    let twice = r#"{"messages":[{"role":"user","content":"fine","content":"evil"}]}"#;
    assert!(apply(&p, twice.as_bytes()).is_err());
}

#[test]
fn bad_policies_are_refused_at_load_naming_the_key() {
    for (text, key) in [
        ("models = [\"a*b*\"]", "policies.p.models"),
        ("max_tokens = 0", "policies.p.max_tokens"),
        (
            "max_tokens = 10\ndefault_max_tokens = 20",
            "policies.p.default_max_tokens",
        ),
        (
            "max_tokens_field = \"length\"",
            "policies.p.max_tokens_field",
        ),
        ("deny_patterns = [\"(\"]", "policies.p.deny_patterns[0]"),
        ("deny_patterns = [\"a*\"]", "policies.p.deny_patterns[0]"),
        ("deny_substrings = [\"\"]", "policies.p.deny_substrings[0]"),
        ("remove = [\"model\"]", "policies.p.remove[0]"),
        ("force = { model = \"x\" }", "policies.p.force.model"),
        ("max_messages = 0", "policies.p.max_messages"),
        ("remove = [\"messages\"]", "policies.p.remove[0]"),
        ("force = { system = \"x\" }", "policies.p.force.system"),
    ] {
        let raw: RawPolicy = toml::from_str(text).unwrap();
        let e = Policy::compile("p", &raw).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}
