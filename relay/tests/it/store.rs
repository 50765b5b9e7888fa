//! Limits shared by replicas through a real redis-server: two relays count one tenant's requests together, and
//! Redis going away applies `on_store_error` until it is back.

use testkit::redis::{self, Redis};
use tokio::time::{Duration, Instant};

use crate::support::*;

fn store_config(mock: &Mock, url: &str, on_error: &str) -> relay::config::Config {
    let top = format!(
        "[[tenants]]\nname = \"acme\"\nrequests_per_minute = 30\n\n[store]\nurl = {url:?}\non_store_error = \"{on_error}\"\n"
    );
    config_with(&mock.addr.to_string(), &top, "")
}

#[tokio::test]
async fn two_replicas_admit_exactly_the_tenants_requests_per_minute_between_them() {
    let Some(bin) = redis::available() else {
        return;
    };
    let redis = Redis::start(bin).unwrap();
    let mock = start_mock().await;
    let a = start_relay(store_config(&mock, &redis.url(), "allow")).await;
    let b = start_relay(store_config(&mock, &redis.url(), "allow")).await;
    let short = [("x-mock-chunks", "1")];
    let sends = (0..50).map(|i| chat(if i % 2 == 0 { &a } else { &b }, &short).send());
    let mut admitted = 0;
    for res in futures_util::future::join_all(sends).await {
        let res = res.unwrap();
        assert_eq!(res.headers()["x-ratelimit-limit-requests"], "30");
        match res.status().as_u16() {
            200 => admitted += 1,
            429 => assert_eq!(res.headers()["x-ratelimit-remaining-requests"], "0"),
            other => panic!("status {other}"),
        }
        res.bytes().await.unwrap();
    }
    assert_eq!(admitted, 30);
    assert_eq!(mock.app.stats.counters().requests, 30);
}

#[tokio::test]
async fn redis_down_allows_or_denies_as_configured_and_the_relay_recovers_when_it_returns() {
    let Some(bin) = redis::available() else {
        return;
    };
    let mut redis = Redis::start(bin).unwrap();
    let mock = start_mock().await;
    let allow = start_relay(store_config(&mock, &redis.url(), "allow")).await;
    let deny = start_relay(store_config(&mock, &redis.url(), "deny")).await;
    let short = [("x-mock-chunks", "1")];
    // One count for both: the second replica sees the first one's request.
    for (relay, remaining) in [(&allow, "29"), (&deny, "28")] {
        let res = chat(relay, &short).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-ratelimit-remaining-requests"], remaining);
        res.bytes().await.unwrap();
    }
    redis.stop();
    let res = chat(&allow, &short).send().await.unwrap();
    assert_eq!(res.status(), 200, "allow: the request goes on");
    assert!(res.headers().get("x-ratelimit-limit-requests").is_none());
    res.bytes().await.unwrap();
    let before = mock.app.stats.counters().requests;
    let res = chat(&deny, &short).send().await.unwrap();
    assert_eq!(res.status(), 503, "deny: refused");
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["type"], "store_unavailable", "{v}");
    assert_eq!(
        mock.app.stats.counters().requests,
        before,
        "a denied request reached the vendor"
    );

    // Back, empty (nothing was saved): the relay reconnects by itself and counts again.
    redis.start_again().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = chat(&deny, &short).send().await.unwrap();
        let status = res.status();
        res.bytes().await.unwrap();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "the relay did not reconnect to Redis"
        );
    }
}

#[tokio::test]
async fn an_unreachable_store_at_startup_is_not_fatal() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("unix://{}", dir.path().join("nobody.sock").display());
    let relay = start_relay(store_config(&mock, &url, "allow")).await;
    let res = chat(&relay, &[("x-mock-chunks", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn replicas_share_a_tenants_stream_slots_and_an_ended_stream_gives_its_slot_back() {
    let Some(bin) = redis::available() else {
        return;
    };
    let redis = Redis::start(bin).unwrap();
    let mock = start_mock().await;
    let top = format!(
        "max_streams_per_tenant = 3\n\n[store]\nurl = {:?}\n",
        redis.url()
    );
    let a = start_relay(config_with(&mock.addr.to_string(), &top, "")).await;
    let b = start_relay(config_with(&mock.addr.to_string(), &top, "")).await;
    let long = [("x-mock-chunks", "1000"), ("x-mock-interval-ms", "100")];
    let mut held = Vec::new();
    for relay in [&a, &a, &b] {
        let res = chat(relay, &long).send().await.unwrap();
        assert_eq!(res.status(), 200);
        held.push(res);
    }
    for relay in [&a, &b] {
        let res = chat(relay, &long).send().await.unwrap();
        assert_eq!(res.status(), 429, "a fourth stream between the replicas");
    }
    // One of the first replica's streams ends (its client leaves): the second replica may take its slot.
    drop(held.remove(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = chat(&b, &long).send().await.unwrap();
        if res.status() == 200 {
            break;
        }
        assert_eq!(res.status(), 429);
        assert!(
            Instant::now() < deadline,
            "the ended stream's slot never came back"
        );
    }
}

/// The value of `name` (no labels) on the admin listener's `/metrics`.
async fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn stream_slots_come_back_after_a_redis_restart_within_one_renewal() {
    let Some(bin) = redis::available() else {
        return;
    };
    let mut redis = Redis::start(bin).unwrap();
    let mock = start_mock().await;
    // Renewals every 300 ms.
    let top = format!(
        "max_streams_per_tenant = 2\n\n[store]\nurl = {:?}\nstream_lease_ms = 900\n",
        redis.url()
    );
    let (relay, admin) =
        start_relay_with_admin(config_with(&mock.addr.to_string(), &top, "")).await;
    let long = [("x-mock-chunks", "1000"), ("x-mock-interval-ms", "50")];
    let mut held = Vec::new();
    for _ in 0..2 {
        let res = chat(&relay, &long).send().await.unwrap();
        assert_eq!(res.status(), 200);
        held.push(res);
    }
    assert_eq!(chat(&relay, &long).send().await.unwrap().status(), 429);
    // Redis restarts empty: it no longer knows the two open streams.
    let before = metric(admin, "ssegate_store_leases_restored_total").await;
    redis.stop();
    redis.start_again().unwrap();
    let restarted = Instant::now();
    // The next renewal (within 300 ms of Redis answering) puts both slots back.
    let deadline = restarted + Duration::from_secs(5);
    while metric(admin, "ssegate_store_leases_restored_total").await < before + 2.0 {
        assert!(
            Instant::now() < deadline,
            "the open streams' slots were never restored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("slots restored {:?} after the restart", restarted.elapsed());
    // The limit holds again: still two open, so a third and a fourth are refused.
    for _ in 0..2 {
        let res = chat(&relay, &long).send().await.unwrap();
        assert_eq!(res.status(), 429, "admitted past the limit after a restart");
    }
    assert_eq!(mock.app.stats.counters().requests, 2);
    drop(held);
}

#[tokio::test]
async fn a_daily_token_quota_counts_both_replicas_streams() {
    let Some(bin) = redis::available() else {
        return;
    };
    let redis = Redis::start(bin).unwrap();
    let mock = start_mock().await;
    let top = format!(
        "{}[[tenants]]\nname = \"acme\"\ntokens_per_day = 40\nreserve_output_tokens = 5\n\n[store]\nurl = {:?}\n",
        admin_key_line(),
        redis.url()
    );
    let config = || config_with(&mock.addr.to_string(), &top, "usage = \"openai\"");
    let (a, admin_a) = start_relay_with_admin(config()).await;
    let (b, admin_b) = start_relay_with_admin(config()).await;
    // Each reserves 26 (its prompt, 21, and 5 for its answer) and uses 14: the first on each replica goes (0 + 26,
    // then 14 + 26 of 40), then no reservation fits, on either replica.
    for (i, relay) in [&a, &b].into_iter().enumerate() {
        let res = chat(relay, &[("x-mock-chunks", "5")]).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        await_usage(admin_a, i as u64 + 1).await;
    }
    for relay in [&a, &b] {
        let res = chat(relay, &[]).send().await.unwrap();
        assert_eq!(res.status(), 429);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["type"], "quota_exceeded");
    }
    assert_eq!(mock.app.stats.counters().requests, 2);
    // Either replica reports both streams, from the store.
    let report = usage_report(admin_b, "tenant=acme").await;
    assert_eq!(report["total"]["streams"], 2);
    assert_eq!(report["total"]["prompt_tokens"], 18);
    assert_eq!(report["total"]["completion_tokens"], 10);
}

/// A real Redis Cluster (three primaries): two tenants whose keys live on different shards, each held to its own
/// stream limit across two relays, and the usage of both read back from either relay.
#[tokio::test]
async fn a_redis_cluster_holds_each_tenants_limits_on_its_own_shard() {
    let Some(bin) = redis::available() else {
        return;
    };
    let cluster = redis::Cluster::start(bin, 3).unwrap();
    let mock = start_mock().await;
    const GAMMA_KEY: &str = "gamma-key-CANARY-12";
    // `{acme}` hashes to slot 11304 (the third primary), `{gamma}` to 2469 (the first).
    let top = format!(
        "{}[[clients]]\ntenant = \"gamma\"\nkey_sha256 = \"{}\"\n\
         [[tenants]]\nname = \"acme\"\nmax_streams = 3\nrequests_per_minute = 1000\n\
         [[tenants]]\nname = \"gamma\"\nmax_streams = 3\n\n[store]\ncluster_nodes = {:?}\n",
        admin_key_line(),
        sha256_hex(GAMMA_KEY),
        cluster.nodes()
    );
    let config = || config_with(&mock.addr.to_string(), &top, "usage = \"openai\"");
    let (a, admin_a) = start_relay_with_admin(config()).await;
    let (b, admin_b) = start_relay_with_admin(config()).await;
    let long = [("x-mock-chunks", "1000"), ("x-mock-interval-ms", "50")];
    let send =
        |relay: &Relay, key: &'static str| testkit::client::chat(&relay.url(""), key, &long).send();
    let sends = (0..16).map(|i| {
        let relay = if i % 2 == 0 { &a } else { &b };
        send(relay, if i < 8 { CLIENT_KEY } else { GAMMA_KEY })
    });
    let answers: Vec<reqwest::Response> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let admitted =
        |range: std::ops::Range<usize>| answers[range].iter().filter(|r| r.status() == 200).count();
    assert_eq!((admitted(0..8), admitted(8..16)), (3, 3));
    let acme = &answers[..8];
    assert!(
        acme.iter().all(
            |r| r.status() != 200 || r.headers().contains_key("x-ratelimit-remaining-requests")
        )
    );
    let shards_used = cluster.keys_per_node().iter().filter(|n| **n > 0).count();
    assert!(shards_used >= 2, "{:?}", cluster.keys_per_node());
    drop(answers);
    // The six streams were cut: charged an estimate, their slots given back in the same store call.
    await_usage(admin_a, 6).await;
    // Two short ones report their usage.
    for relay in [&a, &b] {
        let res = testkit::client::chat(&relay.url(""), GAMMA_KEY, &[("x-mock-chunks", "5")])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    await_usage(admin_a, 8).await;
    let gamma = usage_report(admin_b, "tenant=gamma").await;
    let total = &gamma["total"];
    assert_eq!(
        (&total["streams"], &total["streams_without_usage"]),
        (&5.into(), &3.into())
    );
    // Two reported 9 + 5; the three cut ones were estimated: their prompt, and what they relayed.
    let prompt = relay::usage::estimate::request_tokens(testkit::client::CHAT_BODY.as_bytes());
    assert_eq!(total["prompt_tokens"], 18 + 3 * prompt, "{gamma}");
    let completion = total["completion_tokens"].as_u64().unwrap();
    assert!(completion >= 10 + 3, "{gamma}");
    assert_eq!(
        total["estimated_tokens"],
        3 * prompt + completion - 10,
        "{gamma}"
    );
}

/// `rediss://` to a redis-server whose certificate a private CA signed: counted when `ca_file` names that CA; not
/// trusted (the store unavailable: `deny` answers 503) with the system's CAs.
#[tokio::test]
async fn rediss_with_a_private_ca_is_trusted_only_through_ca_file() {
    let Some(bin) = redis::available() else {
        return;
    };
    let redis = redis::TlsRedis::start(bin).unwrap();
    let mock = start_mock().await;
    let config = |ca: &str| {
        let top = format!(
            "[[tenants]]\nname = \"acme\"\nrequests_per_minute = 2\n\n[store]\nurl = {:?}\non_store_error = \"deny\"\n{ca}",
            redis.url()
        );
        config_with(&mock.addr.to_string(), &top, "")
    };
    let trusted = start_relay(config(&format!("ca_file = {:?}\n", redis.ca_file()))).await;
    let short = [("x-mock-chunks", "1")];
    for want in [200, 200, 429] {
        let res = chat(&trusted, &short).send().await.unwrap();
        assert_eq!(res.status(), want);
        res.bytes().await.unwrap();
    }
    let untrusted = start_relay(config("")).await;
    let res = chat(&untrusted, &short).send().await.unwrap();
    assert_eq!(
        res.status(),
        503,
        "the system's CAs do not know the test CA"
    );
    assert_eq!(mock.app.stats.counters().requests, 2);
}
