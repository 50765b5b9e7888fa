//! `mock-upstream --listen ADDR`: prints `listening on ADDR` once bound, then serves until killed.

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Scripted SSE vendor for ssegate", after_help = mock_upstream::SCENARIO_HELP)]
struct Cli {
    /// Address to bind (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Vendor key to require (Bearer on /v1/chat/completions, x-api-key on /api/send-message).
    #[arg(long, env = "MOCK_API_KEY", default_value = mock_upstream::DEFAULT_API_KEY, hide_env_values = true)]
    api_key: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);
    mock_upstream::serve(listener, cli.api_key, std::future::pending()).await
}
