//! The relay → vendor hop over HTTPS with a private CA (the mock's `--tls`): byte-identical streams directly and
//! behind nginx, and each certificate problem named (`upstream_tls`, the reason in the log line), failed over like
//! a connect error, and a handshake that never finishes bounded by the connect timeout.

use std::time::Duration;

use tokio::time::Instant;

use anyhow::Result;
use mock_upstream::tls::{Leaf, Pki};
use tokio::process::Command;

use crate::admin::sample;
use crate::stack::{Front, Options, Stack, stack};
use crate::support::*;

#[tokio::test]
async fn an_https_vendor_streams_byte_identical_directly_and_behind_nginx() -> Result<()> {
    for front in [Front::Relay, Front::Nginx] {
        let options = Options {
            vendor_tls: true,
            ..Options::default()
        };
        let Some(s): Option<Stack> = stack(front, options).await? else {
            continue;
        };
        let got = receive(chat(&s.base(), CLIENT_KEY, &[("x-mock-chunks", "12")])).await?;
        let record = mock_record(&s.mock, &got.trace_id).await?;
        assert_eq!(record["tls"], true, "{front:?}: the relay spoke plain HTTP");
        assert_eq!(
            record["sha256"],
            sha256_hex(&got.bytes).as_str(),
            "{front:?}"
        );
        let text = String::from_utf8(got.bytes)?;
        assert!(text.contains("你好") && text.ends_with("data: [DONE]\n\n"));
    }
    Ok(())
}

/// A mock serving `leaf` from `pki` (files in `dir`).
async fn mock_with(pki: &Pki, leaf: Leaf, dir: &std::path::Path) -> Result<Proc> {
    let (cert, key) = pki.leaf(leaf)?;
    let (cert_path, key_path) = (
        dir.join(format!("{leaf:?}.crt")),
        dir.join(format!("{leaf:?}.key")),
    );
    std::fs::write(&cert_path, cert)?;
    std::fs::write(&key_path, key)?;
    let mut cmd = Command::new(binary("mock-upstream", "SSEGATE_MOCK_BIN")?);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        VENDOR_KEY,
        "--tls-cert",
    ])
    .arg(&cert_path)
    .arg("--tls-key")
    .arg(&key_path);
    spawn_listening(cmd, "mock", 0).await
}

#[tokio::test]
async fn each_certificate_problem_is_a_named_502() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (pki, stranger) = (Pki::new("trusted test CA")?, Pki::new("untrusted test CA")?);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem())?;
    let trust = format!("ca_file = {ca:?}\ntls_roots = \"ca_file\"");
    let cases = [
        (&stranger, Leaf::Loopback, "unknown_ca"),
        (&pki, Leaf::Expired, "certificate_expired"),
        (&pki, Leaf::OtherHost, "certificate_host_mismatch"),
    ];
    for (issuer, leaf, reason) in cases {
        let mock = mock_with(issuer, leaf, dir.path()).await?;
        let relay = start_relay_to(mock.addr, true, "", &trust, "info", &[]).await?;
        let (status, kind, line) = failed_request(&relay).await?;
        assert_eq!(
            (status, kind.as_str()),
            (502, "upstream_tls"),
            "{leaf:?}: {line}"
        );
        assert!(line.contains(reason), "{leaf:?}: {line}");
        assert_eq!(
            mock_stats(&mock).await?["requests"],
            0,
            "{leaf:?}: the vendor was called"
        );
        let metrics = relay.metrics().await?;
        let labels = ["route=\"/v1/chat/completions\"", "kind=\"tls\""];
        let counted = sample(&metrics, "ssegate_upstream_errors_total", &labels);
        assert_eq!(counted, Some(1.0), "{leaf:?}: not counted");
    }
    // The certificate the relay refused is fine once its CA is trusted: the failures above were the checks.
    let mock = mock_with(&stranger, Leaf::Loopback, dir.path()).await?;
    let stranger_ca = dir.path().join("stranger.pem");
    std::fs::write(&stranger_ca, stranger.ca_pem())?;
    let relay = start_relay_to(
        mock.addr,
        true,
        "",
        &format!("ca_file = {stranger_ca:?}"),
        "info",
        &[],
    )
    .await?;
    assert_eq!(drain(chat(&relay.url(""), CLIENT_KEY, &[])).await?, 200);
    Ok(())
}

#[tokio::test]
async fn a_tls_failure_fails_over_like_a_connect_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new("failover test CA")?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem())?;
    let expired = mock_with(&pki, Leaf::Expired, dir.path()).await?;
    let good = mock_with(&pki, Leaf::Loopback, dir.path()).await?;
    let route = format!(
        "ca_file = {ca:?}\n[[routes.failover]]\nupstream = \"https://{}/v1/chat/completions\"\n\
         secret_env = \"SSEGATE_E2E_VENDOR_KEY\"",
        good.addr
    );
    let relay = start_relay_to(expired.addr, true, "", &route, "info", &[]).await?;
    let got = receive(chat(&relay.url(""), CLIENT_KEY, &[])).await?;
    assert!(String::from_utf8(got.bytes)?.ends_with("data: [DONE]\n\n"));
    assert_eq!(mock_stats(&good).await?["streams_completed"], 1);
    let logs = relay
        .await_logs(|l| l.contains("trying the next endpoint") && l.contains("certificate_expired"))
        .await?;
    assert!(
        logs.contains("trying the next endpoint") && logs.contains("certificate_expired"),
        "{logs}"
    );
    Ok(())
}

/// A vendor (or anything on the way) that accepts the connection and never answers the TLS handshake: 504
/// `upstream_tls` after the connect timeout, not after the first-byte timeout.
#[tokio::test]
async fn a_handshake_that_never_finishes_is_bounded_by_the_connect_timeout() -> Result<()> {
    let (addr, held) = silent_listener().await?;
    let route = "connect_timeout_ms = 500\nfirst_byte_timeout_ms = 30000";
    let relay = start_relay_to(addr, true, "", route, "info", &[]).await?;
    let started = Instant::now();
    let (status, kind, line) = failed_request(&relay).await?;
    let took = started.elapsed();
    held.abort();
    assert_eq!((status, kind.as_str()), (504, "upstream_tls"), "{line}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(line.contains("TLS handshake timed out"), "{line}");
    Ok(())
}

/// An internal gateway that requires a client certificate (`--tls-client-ca`): the route's `client_cert` and
/// `client_key` get the stream through; without them the gateway's refusal is a named 502 and nothing is served.
#[tokio::test]
async fn mutual_tls_to_a_gateway_that_asks_for_a_client_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new("gateway test CA")?;
    let write = |name: &str, text: &str| -> Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let ca = write("ca.pem", pki.ca_pem())?;
    let (server_cert, server_key) = pki.leaf(Leaf::Loopback)?;
    let (client_cert, client_key) = pki.leaf(Leaf::Client)?;
    let (server_cert, server_key) = (write("s.crt", &server_cert)?, write("s.key", &server_key)?);
    let (client_cert, client_key) = (write("c.crt", &client_cert)?, write("c.key", &client_key)?);
    let mut cmd = Command::new(binary("mock-upstream", "SSEGATE_MOCK_BIN")?);
    cmd.args(["--listen", "127.0.0.1:0", "--api-key", VENDOR_KEY])
        .arg("--tls-cert")
        .arg(&server_cert)
        .arg("--tls-key")
        .arg(&server_key)
        .arg("--tls-client-ca")
        .arg(&ca);
    let gateway = spawn_listening(cmd, "mock", 0).await?;

    let with_cert =
        format!("ca_file = {ca:?}\nclient_cert = {client_cert:?}\nclient_key = {client_key:?}");
    let relay = start_relay_to(gateway.addr, true, "", &with_cert, "info", &[]).await?;
    let got = receive(chat(&relay.url(""), CLIENT_KEY, &[])).await?;
    assert_eq!(mock_record(&gateway, &got.trace_id).await?["tls"], true);

    let without = start_relay_to(
        gateway.addr,
        true,
        "",
        &format!("ca_file = {ca:?}"),
        "info",
        &[],
    )
    .await?;
    let (status, kind, line) = failed_request(&without).await?;
    assert_eq!((status, kind.as_str()), (502, "upstream_tls"), "{line}");
    assert!(line.contains("client_certificate_rejected"), "{line}");
    assert_eq!(
        mock_stats(&gateway).await?["requests"],
        1,
        "only the relay with a certificate got through"
    );
    Ok(())
}
