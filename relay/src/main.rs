//! `relay`: parse the command line, load the config (exit 64 when invalid), bind, serve until a signal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use relay::config::{Config, ProcessEnv};
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(cli))
}

async fn serve(cli: Cli) -> ExitCode {
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let loaded = match &cli.config {
        Some(path) => Config::load(path, &ProcessEnv).map_err(|e| e.to_string()),
        None => relay::demo::start(&tracker, shutdown.clone())
            .await
            .map_err(|e| e.to_string()),
    };
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relay: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if cli.check_config {
        eprintln!(
            "relay: config ok ({} routes, {} client keys)",
            config.routes.len(),
            config.clients.len()
        );
        return ExitCode::SUCCESS;
    }
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    relay::init_tracing(config.log_format);
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("relay: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    if cli.demo {
        let _ = writeln!(out, "{}", relay::demo::instructions(addr));
    }
    let _ = out.flush();
    drop(out);
    let mut signals = match relay::shutdown::Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("relay: cannot watch signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = shutdown.clone();
    let watch = async move {
        let first = signals.next().await;
        tracing::info!(
            signal = first,
            "shutting down gracefully (send it again to exit now)"
        );
        stop.cancel();
        signals.next().await
    };
    tokio::select! {
        () = relay::run(Arc::new(config), listener, shutdown.clone()) => {}
        second = watch => {
            tracing::warn!(signal = second, "second signal: exiting now");
            return ExitCode::from(EX_FORCED);
        }
    }
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    ExitCode::SUCCESS
}
