//! Two relay processes behind the shipped `deploy/nginx/ssegate-replicas.conf`, sharing one real redis-server:
//! a tenant's requests per minute hold across the replicas, as a client going through nginx sees them.

use anyhow::Result;
use mock_upstream::testkit::nginx;
use mock_upstream::testkit::redis::{self, Redis};

use crate::support::*;

#[tokio::test]
async fn two_replicas_behind_nginx_admit_exactly_the_tenants_requests_per_minute() -> Result<()> {
    let (Some(nginx_bin), Some(redis_bin)) = (nginx::available(), redis::available()) else {
        return Ok(());
    };
    let redis = Redis::start(redis_bin)?;
    let mock = start_mock().await?;
    let top = format!(
        "[[tenants]]\nname = \"e2e\"\nrequests_per_minute = 30\n\n[store]\nurl = {:?}\n",
        redis.url()
    );
    let a = start_relay_to(mock.addr, false, &top, "", "info", &[]).await?;
    let b = start_relay_to(mock.addr, false, &top, "", "info", &[]).await?;
    let opts = nginx::Options {
        second_replica: Some(b.addr),
        ..nginx::Options::default()
    };
    let front = nginx::start(&nginx_bin, a.addr, opts).await?;
    let base = front.base();
    let sends = (0..50).map(|_| drain(chat(&base, CLIENT_KEY, &[("x-mock-chunks", "1")])));
    let statuses = futures_util::future::join_all(sends).await;
    let count = |want: u16| {
        statuses
            .iter()
            .filter(|s| matches!(s, Ok(s) if *s == want))
            .count()
    };
    assert_eq!((count(200), count(429)), (30, 20), "{statuses:?}");
    assert_eq!(mock_stats(&mock).await?["requests"], 30);
    // nginx spread them (round robin: ~25 each, and 20 refusals cannot cover one replica's share): both relayed
    // streams. Which replica refused which request is timing, not asserted.
    for (name, relay) in [("first", &a), ("second", &b)] {
        assert!(
            relay.logs().contains("stream ended"),
            "the {name} replica relayed nothing"
        );
    }
    Ok(())
}

/// The replicas' site differs from the single relay's only in its upstream block.
#[test]
fn the_replicas_site_serves_like_the_single_relay_site() -> Result<()> {
    let server_block = |path: std::path::PathBuf| -> Result<String> {
        let site = std::fs::read_to_string(&path)?;
        let at = site
            .find("\nserver {")
            .ok_or_else(|| anyhow::anyhow!("{} has no server block", path.display()))?;
        Ok(site[at..].to_owned())
    };
    assert_eq!(
        server_block(nginx::replicas_site_path())?,
        server_block(nginx::site_path())?
    );
    Ok(())
}

/// `kill -9` of a replica holding streams: its slots are free again within the lease time, not before.
#[tokio::test]
async fn a_killed_replicas_stream_slots_come_back_within_the_lease() -> Result<()> {
    let Some(redis_bin) = redis::available() else {
        return Ok(());
    };
    let redis = Redis::start(redis_bin)?;
    let mock = start_mock().await?;
    let top = format!(
        "max_streams_per_tenant = 5\n\n[store]\nurl = {:?}\nstream_lease_ms = 1500\n",
        redis.url()
    );
    let doomed = start_relay_to(mock.addr, false, &top, "", "info", &[]).await?;
    let survivor = start_relay_to(mock.addr, false, &top, "", "info", &[]).await?;
    let long = [("x-mock-chunks", "1000"), ("x-mock-interval-ms", "100")];
    let mut held = Vec::new();
    for _ in 0..3 {
        let res = chat(&doomed.url(""), CLIENT_KEY, &long).send().await?;
        anyhow::ensure!(res.status() == 200, "doomed replica: {}", res.status());
        held.push(res);
    }
    for _ in 0..2 {
        let res = chat(&survivor.url(""), CLIENT_KEY, &long).send().await?;
        anyhow::ensure!(res.status() == 200, "survivor: {}", res.status());
        held.push(res);
    }
    let status = |res: &reqwest::Response| res.status().as_u16();
    let sixth = chat(&survivor.url(""), CLIENT_KEY, &long).send().await?;
    assert_eq!(status(&sixth), 429, "five slots, five streams");

    doomed.signal("KILL")?;
    let killed = tokio::time::Instant::now();
    let res = chat(&survivor.url(""), CLIENT_KEY, &long).send().await?;
    assert_eq!(
        status(&res),
        429,
        "the dead replica's leases are still unexpired"
    );
    let deadline = killed + std::time::Duration::from_secs(10);
    let mut admitted = 0;
    while admitted < 3 {
        let res = chat(&survivor.url(""), CLIENT_KEY, &long).send().await?;
        match status(&res) {
            200 => {
                admitted += 1;
                held.push(res);
            }
            429 => assert!(
                tokio::time::Instant::now() < deadline,
                "the dead replica's slots never came back"
            ),
            other => panic!("status {other}"),
        }
    }
    // The lease ran from the dead replica's last renewal, at most 1.5 s before the kill.
    let freed = killed.elapsed();
    assert!(
        freed <= std::time::Duration::from_millis(2500),
        "slots came back after {freed:?}"
    );
    // Five again, all on the survivor, which renews its leases: for twice the lease time not one slot frees.
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let res = chat(&survivor.url(""), CLIENT_KEY, &long).send().await?;
        assert_eq!(status(&res), 429, "a live replica's lease expired");
    }
    Ok(())
}
