//! `mock-upstream --listen ADDR [--tls | --tls-cert F --tls-key F]`: prints `listening on ADDR` once bound (with
//! `--tls`, then `ca certificate: PATH`), then serves until killed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use mock_upstream::tls::{self, Leaf, Pki};

#[derive(Parser)]
#[command(version, about = "Scripted SSE vendor for ssegate", after_help = mock_upstream::SCENARIO_HELP)]
struct Cli {
    /// Address to bind (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Vendor key to require (Bearer on /v1/chat/completions, x-api-key on /api/send-message).
    #[arg(long, env = "MOCK_API_KEY", default_value = mock_upstream::DEFAULT_API_KEY, hide_env_values = true)]
    api_key: String,
    /// Speak HTTPS, with a certificate for 127.0.0.1/localhost from a private CA made at start. The CA's
    /// certificate is written to --tls-ca-out and its path printed after the `listening on` line.
    #[arg(long, conflicts_with = "tls_cert")]
    tls: bool,
    /// Where --tls writes the CA certificate (PEM). Default: ssegate-mock-ca-PORT.pem in the temp directory.
    #[arg(long, requires = "tls")]
    tls_ca_out: Option<PathBuf>,
    /// Speak HTTPS with this certificate chain (PEM) ...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<String>,
    /// ... and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<String>,
    /// Require a client certificate signed by this CA (PEM): mutual TLS, as an internal gateway may.
    #[arg(long)]
    tls_client_ca: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    let addr = listener.local_addr()?;
    let client_ca = cli.tls_client_ca.as_deref().map(tls::read).transpose()?;
    let client_ca = client_ca.as_deref();
    let (config, ca) = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            let (cert_pem, key_pem) = (tls::read(cert)?, tls::read(key)?);
            let config = tls::server_config(&cert_pem, &key_pem, client_ca, cert)?;
            (Some(config), None)
        }
        _ if cli.tls => {
            let pki = Pki::new("ssegate mock CA")?;
            let (cert, key) = pki.leaf(Leaf::Loopback)?;
            let path = cli.tls_ca_out.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("ssegate-mock-ca-{}.pem", addr.port()))
            });
            std::fs::write(&path, pki.ca_pem())?;
            let config = tls::server_config(&cert, &key, client_ca, "the generated certificate")?;
            (Some(config), Some(path))
        }
        _ => (None, None),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    if let Some(path) = ca {
        writeln!(out, "ca certificate: {}", path.display())?;
    }
    out.flush()?;
    drop(out);
    let pending = std::future::pending();
    match config {
        Some(config) => mock_upstream::serve_tls(listener, cli.api_key, config, pending).await?,
        None => mock_upstream::serve(listener, cli.api_key, pending).await?,
    }
    Ok(())
}
