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
    let key = printed
        .split("Bearer ")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .context("no demo key in the printed command")?;

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
