//! Egress through a real forward proxy (Debian's tinyproxy): the relay reaches the HTTPS mock through an HTTP
//! `CONNECT` tunnel set by `HTTPS_PROXY` or a route's `proxy`, honours `NO_PROXY` and `proxy = "none"`, names a
//! proxy's refusal (407, 403) or absence as 502 `upstream_proxy`, keeps the proxy's credentials out of its logs,
//! and still cancels the vendor's stream through the tunnel when the client leaves.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::*;

/// A tinyproxy on loopback, stopped (by its PID, `kill_on_drop`) when dropped.
struct Tinyproxy {
    addr: SocketAddr,
    _child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// `None` when tinyproxy is not installed (and `SSEGATE_REQUIRE_TINYPROXY` is not `1`). `extra`: more config
    /// lines (`BasicAuth`, `ConnectPort`).
    async fn start(extra: &str) -> Result<Option<Self>> {
        let Some(bin) =
            testkit::proc::installed("tinyproxy", "SSEGATE_REQUIRE_TINYPROXY", "tinyproxy")
        else {
            return Ok(None);
        };
        // tinyproxy cannot bind port 0 ("You MUST set a Port"): take a free port from the kernel, release it, and
        // try again with another if tinyproxy loses the race for it.
        for _ in 0..5 {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let dir = tempfile::Builder::new()
                .prefix("ssegate-tinyproxy-")
                .tempdir()?;
            let log = dir.path().join("tinyproxy.log");
            let conf = dir.path().join("tinyproxy.conf");
            std::fs::write(
                &conf,
                format!(
                    "Port {}\nListen 127.0.0.1\nTimeout 60\nLogLevel Info\nLogFile {:?}\nMaxClients 100\n\
                     Allow 127.0.0.1\n{extra}\n",
                    addr.port(),
                    log
                ),
            )?;
            let mut child = Command::new(&bin)
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            // With a LogFile, tinyproxy still reports a failed start on stderr and exits; a good start is in the
            // log. Wait for either (its stderr closing means it exited).
            let stderr = child.stderr.take().context("no stderr")?;
            let mut lines = BufReader::new(stderr).lines();
            let started = async {
                loop {
                    if std::fs::read_to_string(&log)
                        .is_ok_and(|l| l.contains("Accepting connections"))
                    {
                        return true;
                    }
                    match tokio::time::timeout(Duration::from_millis(50), lines.next_line()).await {
                        Ok(Ok(None)) | Ok(Err(_)) => return false,
                        _ => {}
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(10), started)
                .await
                .unwrap_or(false)
            {
                return Ok(Some(Self {
                    addr,
                    _child: child,
                    log,
                    _dir: dir,
                }));
            }
        }
        anyhow::bail!("tinyproxy did not start")
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Tunnels it was asked for: the targets of its `CONNECT` lines.
    fn connects(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.split("): CONNECT ").nth(1))
            .map(|t| t.split(' ').next().unwrap_or_default().to_owned())
            .collect()
    }
}

/// The TLS mock and a relay for it with `route` lines (its CA trusted) and `env`.
async fn relay_via(route: &str, env: &[(&str, &str)]) -> Result<(Proc, Proc)> {
    let (mock, ca) = testkit::proc::start_mock_tls(VENDOR_KEY).await?;
    let route = format!("ca_file = {ca:?}\n{route}");
    let relay = start_relay_to(mock.addr, true, "", &route, "info", env).await?;
    Ok((mock, relay))
}

#[tokio::test]
async fn https_through_a_forward_proxy_from_the_environment() -> Result<()> {
    let Some(proxy) = Tinyproxy::start("").await? else {
        return Ok(());
    };
    let (mock, relay) = relay_via("", &[("HTTPS_PROXY", &proxy.url())]).await?;
    let got = receive(chat(&relay.url(""), CLIENT_KEY, &[("x-mock-chunks", "8")])).await?;
    let record = mock_record(&mock, &got.trace_id).await?;
    assert_eq!(record["tls"], true);
    assert_eq!(record["sha256"], sha256_hex(&got.bytes).as_str());
    assert_eq!(
        proxy.connects(),
        vec![mock.addr.to_string()],
        "the proxy's log"
    );
    let said = format!("through HTTPS_PROXY={}", proxy.url());
    assert!(
        relay.await_logs(|l| l.contains(&said)).await.is_ok(),
        "no startup line saying {said}"
    );

    // NO_PROXY and `proxy = "none"` go straight to the vendor: the proxy sees nothing more.
    let (_mock_skip, skip) = relay_via(
        "",
        &[
            ("HTTPS_PROXY", &proxy.url()),
            ("NO_PROXY", "localhost,127.0.0.1"),
        ],
    )
    .await?;
    assert_eq!(drain(chat(&skip.url(""), CLIENT_KEY, &[])).await?, 200);
    let (_mock_none, none) =
        relay_via("proxy = \"none\"", &[("HTTPS_PROXY", &proxy.url())]).await?;
    assert_eq!(drain(chat(&none.url(""), CLIENT_KEY, &[])).await?, 200);
    assert_eq!(proxy.connects().len(), 1, "{:?}", proxy.connects());
    Ok(())
}

#[tokio::test]
async fn a_proxy_that_refuses_or_is_down_is_a_named_502() -> Result<()> {
    let Some(locked) = Tinyproxy::start("BasicAuth relay s3cret-CANARY-proxy").await? else {
        return Ok(());
    };
    // No credentials: 407.
    let route = format!("proxy = \"{}\"", locked.url());
    let (mock, relay) = relay_via(&route, &[]).await?;
    let (status, kind, line) = failed_request(&relay).await?;
    assert_eq!((status, kind.as_str()), (502, "upstream_proxy"), "{line}");
    assert!(line.contains("refused the tunnel (407)"), "{line}");
    assert_eq!(mock_stats(&mock).await?["requests"], 0);

    // Credentials in the URL, and from a file: through, and never in a log line.
    let dir = tempfile::tempdir()?;
    let auth = dir.path().join("proxy-auth");
    std::fs::write(&auth, "relay:s3cret-CANARY-proxy\n")?;
    let with_url = format!(
        "proxy = \"http://relay:s3cret-CANARY-proxy@{}\"",
        locked.addr
    );
    let with_file = format!("proxy = \"{}\"\nproxy_auth_file = {auth:?}", locked.url());
    for route in [with_url, with_file] {
        let (_mock, relay) = relay_via(&route, &[]).await?;
        assert_eq!(
            drain(chat(&relay.url(""), CLIENT_KEY, &[])).await?,
            200,
            "{route}: {}",
            relay.logs()
        );
        assert!(!relay.logs().contains("s3cret"), "{}", relay.logs());
    }

    // A proxy that allows tunnels to port 443 only: 403.
    let Some(strict) = Tinyproxy::start("ConnectPort 443").await? else {
        return Ok(());
    };
    let (_mock, relay) = relay_via(&format!("proxy = \"{}\"", strict.url()), &[]).await?;
    let (status, kind, line) = failed_request(&relay).await?;
    assert_eq!((status, kind.as_str()), (502, "upstream_proxy"), "{line}");
    assert!(line.contains("refused the tunnel (403)"), "{line}");

    // No proxy listening there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (_mock, relay) = relay_via("", &[("HTTPS_PROXY", &format!("http://{closed}"))]).await?;
    let (status, kind, line) = failed_request(&relay).await?;
    assert_eq!((status, kind.as_str()), (502, "upstream_proxy"), "{line}");
    assert!(line.contains("cannot connect"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_vendor_through_the_tunnel() -> Result<()> {
    let Some(proxy) = Tinyproxy::start("").await? else {
        return Ok(());
    };
    let (mock, relay) = relay_via("", &[("HTTPS_PROXY", &proxy.url())]).await?;
    let res = chat(
        &relay.url(""),
        CLIENT_KEY,
        &[("x-mock-chunks", "200"), ("x-mock-interval-ms", "50")],
    )
    .send()
    .await?;
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    body.next().await.context("no first frame")??;
    drop(body);
    assert!(
        await_counter(&mock, "streams_cancelled", 1, 5000).await?,
        "the vendor kept streaming after the client left"
    );
    assert_eq!(proxy.connects().len(), 1);
    Ok(())
}

/// A proxy that accepts and never answers `CONNECT`: 504 `upstream_proxy` at the connect timeout, which covers
/// the proxy's connect and the tunnel's set-up as well as TLS.
#[tokio::test]
async fn a_tunnel_that_is_never_set_up_is_bounded_by_the_connect_timeout() -> Result<()> {
    let (addr, held) = silent_listener().await?;
    let route = format!(
        "proxy = \"http://{addr}\"\nconnect_timeout_ms = 500\nfirst_byte_timeout_ms = 30000"
    );
    let (_mock, relay) = relay_via(&route, &[]).await?;
    let started = tokio::time::Instant::now();
    let (status, kind, line) = failed_request(&relay).await?;
    let took = started.elapsed();
    held.abort();
    assert_eq!((status, kind.as_str()), (504, "upstream_proxy"), "{line}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(line.contains("tunnel not set up"), "{line}");
    Ok(())
}
