//! Config reload with streams in flight (`SIGHUP`, `POST /admin/reload`): the streams finish byte for byte on the
//! config they started with, new requests get the new one at once, and a config that cannot be served is refused
//! whole while the old one keeps serving.

use std::path::Path;

use anyhow::{Context, Result, ensure};

use crate::support::*;

const OLD_KEY: &str = "client-CANARY-reload-old-7a1e";
const NEW_KEY: &str = "client-CANARY-reload-new-3f9b";
const CAPPED_KEY: &str = "client-CANARY-reload-capped-52dd";
const ADMIN_KEY: &str = "admin-CANARY-reload-e81c";

/// The relay's config: the e2e tenant's key (from `start_relay_to`), a tenant `old` with its key, a tenant
/// `capped` at one request a minute, and, in the reloaded version, tenant `old`'s key revoked, a tenant `new`
/// with its key and `capped` at a thousand.
fn top(reloaded: bool) -> String {
    let client = |tenant: &str, key: &str| {
        format!(
            "[[clients]]\ntenant = \"{tenant}\"\nkey_sha256 = \"{}\"\n",
            sha256_hex(key)
        )
    };
    let (keys, rpm) = if reloaded {
        (client("new", NEW_KEY), 1000)
    } else {
        (client("old", OLD_KEY), 1)
    };
    format!(
        "admin_key_sha256 = \"{admin}\"\n[[tenants]]\nname = \"capped\"\nrequests_per_minute = {rpm}\n\n{keys}{capped}",
        admin = sha256_hex(ADMIN_KEY),
        capped = client("capped", CAPPED_KEY),
    )
}

/// Replaces the running relay's config file the way an operator's tooling should: a new file renamed over it.
fn rewrite(config: &Path, from: &str, to: &str) -> Result<()> {
    let text = std::fs::read_to_string(config)?;
    ensure!(text.contains(from), "the config has no {from:?}");
    let next = config.with_extension("next");
    std::fs::write(&next, text.replacen(from, to, 1))?;
    std::fs::rename(&next, config)?;
    Ok(())
}

async fn status(base: &str, key: &str) -> Result<u16> {
    drain(chat(base, key, &[("x-mock-chunks", "2")])).await
}

#[tokio::test]
async fn a_sighup_reload_changes_keys_and_limits_while_50_streams_finish_byte_identical()
-> Result<()> {
    let mock = start_mock().await?;
    let relay = start_relay_to(mock.addr, false, &top(false), "", "info", &[]).await?;
    let base = relay.url("");
    assert_eq!(status(&base, OLD_KEY).await?, 200);
    assert_eq!(status(&base, NEW_KEY).await?, 401);
    assert_eq!(status(&base, CAPPED_KEY).await?, 200);
    assert_eq!(
        status(&base, CAPPED_KEY).await?,
        429,
        "one request a minute"
    );

    // 50 streams of 2.5 s each; the reload comes while every one is mid-answer.
    let scenario = [("x-mock-chunks", "50"), ("x-mock-interval-ms", "50")];
    let streams: Vec<_> = (0..50)
        .map(|_| tokio::spawn(receive(chat(&base, CLIENT_KEY, &scenario))))
        .collect();
    ensure!(
        await_counter(&mock, "streams_started", 50 + 2, 10_000).await?,
        "the 50 streams did not start"
    );
    let config = relay.file("relay.toml");
    rewrite(&config, &top(false), &top(true))?;
    relay.signal("HUP")?;
    relay
        .await_logs(|l| l.contains("config reloaded"))
        .await
        .context("no reload logged")?;

    assert_eq!(
        status(&base, NEW_KEY).await?,
        200,
        "the added key works at once"
    );
    assert_eq!(
        status(&base, OLD_KEY).await?,
        401,
        "the revoked key is refused"
    );
    assert_eq!(
        status(&base, CAPPED_KEY).await?,
        200,
        "the raised limit applies"
    );
    for stream in streams {
        let got = stream.await??;
        let record = mock_record(&mock, &got.trace_id).await?;
        assert_eq!(
            record["sha256"],
            sha256_hex(&got.bytes).as_str(),
            "a stream in flight across the reload was changed or cut"
        );
        assert!(got.bytes.ends_with(b"data: [DONE]\n\n"));
    }

    // A config that does not validate is refused whole: the old one keeps serving, the log and the metrics say why.
    rewrite(
        &config,
        "requests_per_minute = 1000",
        "requests_per_minute = 0",
    )?;
    relay.signal("HUP")?;
    let logs = relay
        .await_logs(|l| l.contains("config reload refused"))
        .await
        .context("no refusal logged")?;
    assert!(
        logs.contains("tenants[0].requests_per_minute") && logs.contains("at least 1"),
        "the refusal names the key: {logs}"
    );
    assert_eq!(
        status(&base, NEW_KEY).await?,
        200,
        "the old config still serves"
    );
    let metrics = relay.metrics().await?;
    assert!(
        metrics.contains("ssegate_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ssegate_config_reloads_total{result=\"refused\"} 1"),
        "{metrics}"
    );
    let loaded = format!(
        "ssegate_config_info{{sha256=\"{}\"}} 1",
        sha256_hex(std::fs::read_to_string(&config)?.replacen(
            "requests_per_minute = 0",
            "requests_per_minute = 1000",
            1
        ))
    );
    assert!(
        metrics.contains(&loaded),
        "the serving config's hash: {metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn admin_reload_needs_the_admin_key_and_names_what_needs_a_restart() -> Result<()> {
    let mock = start_mock().await?;
    let relay = start_relay_to(mock.addr, false, &top(false), "", "info", &[]).await?;
    let admin = format!("http://{}", relay.admin().context("no admin address")?);
    let reload = |key: Option<&str>| {
        let rb = client().post(format!("{admin}/admin/reload"));
        match key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    };
    assert_eq!(reload(None).send().await?.status(), 401);
    assert_eq!(reload(Some(CLIENT_KEY)).send().await?.status(), 401);

    let config = relay.file("relay.toml");
    rewrite(&config, &top(false), &top(true))?;
    let ok = reload(Some(ADMIN_KEY)).send().await?;
    assert_eq!(ok.status(), 200);
    assert_eq!(status(&relay.url(""), NEW_KEY).await?, 200);

    // Worker threads and the relay-wide stream count cannot change under running workers: refused, named.
    rewrite(
        &config,
        "admin_key_sha256",
        "workers = 977\nmax_streams = 7\nadmin_key_sha256",
    )?;
    let refused = reload(Some(ADMIN_KEY)).send().await?;
    assert_eq!(refused.status(), 422);
    let body: serde_json::Value = refused.json().await?;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("need a restart")
            && message.contains("workers")
            && message.contains("max_streams"),
        "{body}"
    );
    assert_eq!(status(&relay.url(""), NEW_KEY).await?, 200, "still serving");
    Ok(())
}
