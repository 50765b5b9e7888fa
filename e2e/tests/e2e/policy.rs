//! Request policies through nginx and the relay binary: a tenant's policy refuses (403/400 in OpenAI's error shape,
//! naming the rule, no vendor call) or rewrites (the vendor receives exactly the rewritten bytes); a tenant without
//! its own gets the route's; every decision is in the audit log and the metric.

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::admin::sample;
use crate::stack::{Front, Options, stack};
use crate::support::*;

/// The e2e tenant (`CLIENT_KEY`) gets `strict`; `other` (its own key) gets the route's `open`.
const OTHER_KEY: &str = "client-CANARY-e2e-other-77f0";
const TOP: &str = r#"
[policies.strict]
models = ["mock-1", "gpt-4o*"]
aliases = { fast = "gpt-4o-mini" }
max_tokens = 64
max_messages = 4
remove = ["logit_bias"]
deny_patterns = ['(?i)\bpassword\b']
force = { stream_options.include_usage = true }

[policies.open]
max_prompt_bytes = 65536

[[tenants]]
name = "e2e"
policy = "strict"

[[clients]]
tenant = "other"
key_sha256 = "OTHER_DIGEST"
"#;

async fn post(base: &str, key: &str, body: &str) -> Result<(u16, String, String)> {
    let res = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-mock-chunks", "3")
        .body(body.to_owned())
        .send()
        .await?;
    let status = res.status().as_u16();
    let id = res
        .headers()
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((status, id, res.text().await?))
}

#[tokio::test]
async fn policies_refuse_and_rewrite_through_nginx() -> Result<()> {
    let top = TOP.replace("OTHER_DIGEST", &sha256_hex(OTHER_KEY));
    let top: &'static str = Box::leak(top.into_boxed_str());
    let options = Options {
        relay_top: top,
        relay_route: "policy = \"open\"",
        ..Options::default()
    };
    let Some(stack) = stack(Front::Nginx, options).await? else {
        return Ok(());
    };
    let base = stack.base();

    // Refused: a model the tenant may not use, then denied text. OpenAI's error shape through nginx; no vendor call.
    let other_model =
        r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, body) = post(&base, CLIENT_KEY, other_model).await?;
    let v: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
    ensure!(status == 403, "{status} {body}");
    let e = &v["error"];
    ensure!(
        e["type"] == "policy_refused" && e["code"] == "models" && e["param"] == "model",
        "{v}"
    );
    ensure!(
        e["message"].as_str().is_some_and(|m| m.contains("gpt-4.1")),
        "{v}"
    );
    let denied = r#"{"model":"mock-1","stream":true,"messages":[{"role":"user","content":"my PASSWORD is x"}]}"#;
    let (status, _, body) = post(&base, CLIENT_KEY, denied).await?;
    ensure!(
        status == 403 && body.contains("\"code\":\"deny_patterns[0]\""),
        "{status} {body}"
    );
    ensure!(
        !body.contains("password"),
        "the refusal names the rule, not the pattern: {body}"
    );
    let many = format!(
        r#"{{"model":"mock-1","stream":true,"messages":[{}]}}"#,
        [r#"{"role":"user","content":"x"}"#; 5].join(",")
    );
    let (status, _, body) = post(&base, CLIENT_KEY, &many).await?;
    ensure!(
        status == 400 && body.contains("\"code\":\"max_messages\""),
        "{status} {body}"
    );
    let stats = mock_stats(&stack.mock).await?;
    ensure!(
        stats["requests"] == 0,
        "a refused request reached the vendor: {stats}"
    );

    // Rewritten: the alias, the cap, the removed and the forced member; the vendor got exactly these bytes and the
    // stream came back whole.
    let sent = r#"{"model":"fast", "stream":true,"max_tokens":1000,"logit_bias":{"1":-100},"messages":[{"role":"user","content":"你好"}]}"#;
    let (status, id, body) = post(&base, CLIENT_KEY, sent).await?;
    ensure!(
        status == 200 && body.ends_with("data: [DONE]\n\n"),
        "{status} {body}"
    );
    let record = mock_record(&stack.mock, &id).await?;
    let want = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"你好"}],"stream_options":{"include_usage":true}}"#;
    ensure!(
        record["request_body"] == want,
        "the vendor got {}",
        record["request_body"]
    );

    // Another tenant: the route's policy, which only bounds the prompt; its bytes go untouched.
    let (status, id, body) = post(&base, OTHER_KEY, sent).await?;
    ensure!(
        status == 200 && body.ends_with("data: [DONE]\n\n"),
        "{status} {body}"
    );
    let record = mock_record(&stack.mock, &id).await?;
    ensure!(
        record["request_body"] == sent,
        "the vendor got {}",
        record["request_body"]
    );

    // The audit log names the policy and rule of each decision; the metric counts them.
    let logs = stack
        .relay
        .await_logs(|l| l.matches("stream ended").count() >= 2)
        .await?;
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request refused by policy"))
        .collect();
    ensure!(refusals.len() == 3, "{logs}");
    ensure!(
        refusals
            .iter()
            .all(|l| l.contains("ssegate::audit") && l.contains("strict") && l.contains("e2e")),
        "{refusals:?}"
    );
    ensure!(
        refusals[0].contains("models") && refusals[1].contains("deny_patterns[0]"),
        "{refusals:?}"
    );
    let rewritten = logs
        .lines()
        .find(|l| l.contains("stream ended") && l.contains("policy_rewrites"))
        .context("no audit line with the rewrites")?;
    ensure!(
        rewritten.contains("aliases,max_tokens,force,remove") && rewritten.contains("strict"),
        "{rewritten}"
    );
    let metrics = stack.relay.metrics().await?;
    let count = |labels: &[&str]| sample(&metrics, "ssegate_policy_total", labels).unwrap_or(0.0);
    ensure!(
        count(&["tenant=\"e2e\"", "rule=\"models\"", "action=\"refused\""]) == 1.0,
        "{metrics}"
    );
    ensure!(
        count(&["rule=\"aliases\"", "action=\"rewritten\""]) == 1.0,
        "{metrics}"
    );
    ensure!(
        count(&["tenant=\"other\""]) == 0.0,
        "nothing to count for the open policy: {metrics}"
    );
    Ok(())
}
