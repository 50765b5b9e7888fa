//! `relay`: parse the command line, load the config (exit 64 when invalid), bind, serve until a signal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use relay::config::{Config, ProcessEnv};
use relay::shutdown::{Ended, run_until_signalled};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// BSD `EX_USAGE`: the configuration (or command line) is wrong.
const EX_USAGE: u8 = 64;
/// Exit status after a second signal cut the drain short (128 + SIGINT, as shells report it).
const EX_FORCED: u8 = 130;

#[derive(Parser)]
#[command(
    version,
    about = "ssegate: authenticating, zero-copy SSE relay for LLM APIs"
)]
struct Cli {
    /// TOML configuration file (RELAY_* environment variables override it).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "demo",
        conflicts_with = "demo"
    )]
    config: Option<PathBuf>,
    /// Validate the configuration and exit (0 when valid, 64 when not).
    #[arg(long)]
    check_config: bool,
    /// Run with an embedded configuration, an in-process mock vendor and a demo page.
    #[arg(long)]
    demo: bool,
    /// Address to listen on (overrides the config's `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Signals (and the demo's mock vendor) only: the relay serves on its own worker threads (`relay::run`).
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(serve(cli)).unwrap_or_else(|code| code),
        Err(e) => fail(format!("cannot start the runtime: {e}"), ExitCode::FAILURE),
    }
}

fn fail(message: String, code: ExitCode) -> ExitCode {
    eprintln!("relay: {message}");
    code
}

/// Runs the relay; `Err` carries the exit code of an early exit whose reason is already printed.
async fn serve(cli: Cli) -> Result<ExitCode, ExitCode> {
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let usage = |e: String| fail(e, ExitCode::from(EX_USAGE));
    let mut config = match &cli.config {
        Some(path) => Config::load(path, &ProcessEnv).map_err(|e| usage(e.to_string()))?,
        None => relay::demo::start(&tracker, stop.clone())
            .await
            .map_err(|e| usage(e.to_string()))?,
    };
    if cli.check_config {
        let (routes, keys) = (config.routes.len(), config.clients.len());
        let ok = format!("config ok ({routes} routes, {keys} client keys)");
        return Ok(fail(ok, ExitCode::SUCCESS));
    }
    config.listen = cli.listen.unwrap_or(config.listen);
    relay::init_tracing(config.log_format);
    let failure = |e: String| fail(e, ExitCode::FAILURE);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| failure(format!("cannot listen on {}: {e}", config.listen)))?;
    let signals = relay::shutdown::Signals::new()
        .map_err(|e| failure(format!("cannot watch signals: {e}")))?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    let banner = cli.demo.then(|| relay::demo::instructions(addr));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}\n{}", banner.unwrap_or_default())
        .and_then(|()| out.flush());
    drop(out);
    let ended = run_until_signalled(Arc::new(config), listener, stop.clone(), signals).await;
    if ended == Ended::Forced {
        return Err(ExitCode::from(EX_FORCED));
    }
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(ExitCode::SUCCESS)
}
