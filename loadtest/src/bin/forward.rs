//! The tokio floor for `perf`: a TCP forwarder with no HTTP at all. Each accepted connection is copied both ways to
//! the upstream (`copy_bidirectional`), on a multi-thread runtime with one worker per CPU like the relay's. Its CPU
//! per chunk is what tokio and the kernel cost before any HTTP handling: the relay's lower bound in the
//! side-by-side run, where the rest of the relay's CPU per chunk is its own.
//!   forward --upstream 127.0.0.1:PORT        prints `listening on ADDR`, then serves until killed

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Result;
use clap::Parser;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    /// Where every connection goes.
    #[arg(long)]
    upstream: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    writeln!(
        std::io::stdout().lock(),
        "listening on {}",
        listener.local_addr()?
    )?;
    loop {
        let (mut client, _) = listener.accept().await?;
        #[expect(
            clippy::disallowed_methods,
            reason = "a measuring tool killed by its PID: no shutdown to await its tasks"
        )]
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(args.upstream).await else {
                return;
            };
            // As the relay and nginx do: small frames go out as they come.
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}
