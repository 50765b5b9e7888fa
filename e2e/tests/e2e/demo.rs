//! The README's first command: `relay --demo` streams an answer to the printed curl command and serves the page.

use anyhow::{Context, Result};

use crate::support::*;

#[tokio::test]
async fn demo_streams_to_the_printed_command_and_serves_the_page() -> Result<()> {
    let demo = start_demo(8).await?;
    let printed = demo.stdout_rest.join("\n");
    let curl = printed
        .lines()
        .find(|l| l.starts_with("curl -N"))
        .context("no curl command printed")?;
    assert!(curl.contains(&demo.url("/v1/chat/completions")), "{curl}");
    let key = demo_key(&printed)?;

    let got = receive(chat(
        &format!("http://{}", demo.addr),
        key,
        &[("x-mock-chunks", "5")],
    ))
    .await?;
    let text = String::from_utf8(got.bytes)?;
    assert_eq!(got.delays.len(), 5);
    assert!(
        text.contains("你好") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );

    let page = client().get(demo.url("/")).send().await?;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()?
            .starts_with("text/html")
    );
    let html = page.text().await?;
    assert!(html.contains("ssegate demo") && html.contains(&format!("\"{key}\"")));
    Ok(())
}

/// A second demo on the same machine: the admin address is taken, so the demo's admin listener takes a free port,
/// says so, and serves there.
#[tokio::test]
async fn a_demo_whose_admin_address_is_taken_moves_it_and_says_where() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken_addr = taken.local_addr()?;
    let mut cmd = tokio::process::Command::new(binary("relay", "SSEGATE_RELAY_BIN")?);
    cmd.args(["--demo", "--listen", "127.0.0.1:0", "--admin-listen"])
        .arg(taken_addr.to_string());
    let demo = spawn_listening(cmd, "demo", 8).await?;
    let admin_line = demo
        .stdout_rest
        .iter()
        .find(|l| l.starts_with("admin listening on "))
        .context("no admin line")?;
    assert!(
        admin_line.contains(&format!("({taken_addr} is taken")),
        "{admin_line}"
    );
    let moved: std::net::SocketAddr = admin_line["admin listening on ".len()..]
        .split(' ')
        .next()
        .context("no address")?
        .parse()?;
    assert_ne!(moved, taken_addr);
    let health = client()
        .get(format!("http://{moved}/healthz"))
        .send()
        .await?;
    assert_eq!(health.status(), 200);
    // The demo itself streams.
    let got = receive(chat(
        &format!("http://{}", demo.addr),
        demo_key(&demo.stdout_rest.join("\n"))?,
        &[("x-mock-chunks", "3")],
    ))
    .await?;
    assert_eq!(got.delays.len(), 3);
    drop(taken);
    Ok(())
}

/// The client key in the printed curl command.
fn demo_key(printed: &str) -> Result<&str> {
    printed
        .split("Bearer ")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .context("no demo key in the printed command")
}
