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
        Ok(rt) => rt.block_on(serve(cli)),
        Err(e) => fail(format!("cannot start the runtime: {e}"), ExitCode::FAILURE),
    }
}

fn fail(message: String, code: ExitCode) -> ExitCode {
    eprintln!("relay: {message}");
    code
}

async fn serve(cli: Cli) -> ExitCode {
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let loaded = match &cli.config {
        Some(path) => Config::load(path, &ProcessEnv).map_err(|e| e.to_string()),
        None => relay::demo::start(&tracker, stop.clone())
            .await
            .map_err(|e| e.to_string()),
    };
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => return fail(e, ExitCode::from(EX_USAGE)),
    };
    if cli.check_config {
        let (routes, keys) = (config.routes.len(), config.clients.len());
        return fail(
            format!("config ok ({routes} routes, {keys} client keys)"),
            ExitCode::SUCCESS,
        );
    }
    config.listen = cli.listen.unwrap_or(config.listen);
    relay::init_tracing(config.log_format);
    let (listener, signals) = match (
        tokio::net::TcpListener::bind(config.listen).await,
        relay::shutdown::Signals::new(),
    ) {
        (Ok(l), Ok(s)) => (l, s),
        (Err(e), _) => {
            return fail(
                format!("cannot listen on {}: {e}", config.listen),
                ExitCode::FAILURE,
            );
        }
        (_, Err(e)) => return fail(format!("cannot watch signals: {e}"), ExitCode::FAILURE),
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    let mut out = std::io::stdout().lock();
    let banner = if cli.demo {
        relay::demo::instructions(addr)
    } else {
        String::new()
    };
    let _ = writeln!(out, "listening on {addr}\n{banner}").and_then(|()| out.flush());
    drop(out);
    let ended = run_until_signalled(Arc::new(config), listener, stop.clone(), signals).await;
    if ended == Ended::Forced {
        return ExitCode::from(EX_FORCED);
    }
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    ExitCode::SUCCESS
}
