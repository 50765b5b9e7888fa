//! `relay`: parse the command line, load the config (exit 64 when invalid), bind (exit 1), serve until a signal.

use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use relay::config::{Config, ProcessEnv};
use relay::upstream::chain;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

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
    /// Run with an embedded configuration, an in-process mock vendor and a demo page (cargo feature `demo`).
    #[arg(long)]
    demo: bool,
    /// Address to listen on (overrides the config's `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the admin listener: /metrics, /healthz, /readyz (overrides the config's `admin_listen`).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    relay::alloc::return_freed_memory();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(serve(cli)).unwrap_or_else(|code| code),
        Err(e) => fail(&format!("cannot start the runtime: {e}"), 1),
    }
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("relay: {message}");
    ExitCode::from(code)
}

/// Runs the relay; `Err` carries the exit code of an early exit, its reason printed.
async fn serve(cli: Cli) -> Result<ExitCode, ExitCode> {
    let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
    let usage = |e: &(dyn std::error::Error + 'static)| fail(&chain(e), EX_USAGE);
    let mut config = match &cli.config {
        Some(path) => Config::load(path, &ProcessEnv).map_err(|e| usage(&e))?,
        None => relay::demo::start(&tracker, stop.clone())
            .await
            .map_err(|e| usage(&e))?,
    };
    config.listen = cli.listen.unwrap_or(config.listen);
    config.admin_listen = cli.admin_listen.unwrap_or(config.admin_listen);
    let mut prepared = relay::prepare(config).map_err(|e| usage(&e))?;
    if let Some(path) = &cli.config {
        prepared = prepared.reloadable_from(relay::ConfigSource {
            path: path.clone(),
            listen: cli.listen,
            admin_listen: cli.admin_listen,
        });
    }
    let c = prepared.config();
    if cli.check_config {
        return Ok(fail(&prepared.summary(), 0));
    }
    let logging = relay::logs::init(c.log_format, c.log_queue_lines, c.otel.as_ref())
        .map_err(|e| usage(&e))?;
    // A second `--demo` on one machine: its admin listener moves to a free port (printed) rather than exit.
    let listeners = relay::Listeners::bind(c, cli.demo)
        .await
        .map_err(|e| fail(&chain(&e), 1))?;
    let signals = relay::shutdown::Signals::new()
        .map_err(|e| fail(&format!("cannot watch signals: {e}"), 1))?;
    let announcement = listeners.announcement(cli.demo);
    let ready = || {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{announcement}").and_then(|()| out.flush());
    };
    let serving = relay::serve_main(prepared, listeners, stop.clone(), cli.demo, ready);
    let served = relay::shutdown::until_signalled(serving, stop.clone(), signals).await;
    served
        .map_err(|_forced| ExitCode::from(EX_FORCED))?
        .map_err(|e| fail(&chain(&e), 1))?;
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    logging.finish().await;
    Ok(ExitCode::SUCCESS)
}
