//! HTTPS for the mock vendor: a private CA made at start ([`Pki`]), leaf certificates for the mock's loopback
//! names, and a server loop that speaks TLS (ALPN `http/1.1`) in front of the same routes.
//!
//! [`Pki`] also makes the broken certificates tests need: an expired one and one for another host name. A second
//! `Pki` is a CA the relay does not trust.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// What went wrong making or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot make a certificate")]
    Generate(#[from] rcgen::Error),
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM")]
    Pem { path: String, what: &'static str },
    #[error("the certificate and key do not make a TLS server")]
    Rustls(#[from] rustls::Error),
}

/// The leaf certificates a [`Pki`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    /// For `127.0.0.1`, `::1` and `localhost`, valid from 1975 to 4096.
    Loopback,
    /// For the loopback names, but expired in 2021.
    Expired,
    /// Valid, for `vendor.invalid` only.
    OtherHost,
    /// A client certificate (for mutual TLS), named `ssegate-relay`.
    Client,
}

/// A private certificate authority.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Result<Self, TlsSetupError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_pem: cert.pem(),
        })
    }

    /// The CA certificate, PEM: what a client must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A leaf certificate and its key, both PEM.
    pub fn leaf(&self, leaf: Leaf) -> Result<(String, String), TlsSetupError> {
        let names = match leaf {
            Leaf::Loopback | Leaf::Expired => vec!["127.0.0.1", "::1", "localhost"],
            Leaf::OtherHost => vec!["vendor.invalid"],
            Leaf::Client => vec!["ssegate-relay"],
        };
        let mut params =
            CertificateParams::new(names.into_iter().map(String::from).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "mock-upstream");
        params.extended_key_usages = vec![if leaf == Leaf::Client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if leaf == Leaf::Expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A TLS server configuration from PEM text (certificate chain, private key); ALPN `http/1.1`. With `client_ca`
/// (PEM), every client must present a certificate signed by it (mutual TLS).
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca: Option<&str>,
    origin: &str,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            path: origin.to_owned(),
            what: "certificate",
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsSetupError::Pem {
            path: origin.to_owned(),
            what: "private key",
        })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(
                CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok),
            );
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Reads a file for [`server_config`].
pub fn read(path: &str) -> Result<String, TlsSetupError> {
    std::fs::read_to_string(path).map_err(|source| TlsSetupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// Marks a request that came over TLS (a request extension): the stream record says so.
#[derive(Clone, Copy, Debug)]
pub struct OverTls;

/// Serves `router` over TLS on `listener` until `shutdown` resolves: one task per connection, HTTP/1.1. A failed
/// handshake ends only its connection (and is counted by the client, not here).
///
/// A connection whose first byte is not a TLS handshake record is served as plain HTTP: test clients read the
/// inspection endpoints (`/stats`, `/streams/…`) without trusting the mock's CA, and each stream record says
/// whether its request came over TLS (`tls`), so a test of the relay's HTTPS path fails if the relay spoke plain
/// HTTP.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: rustls::ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let tracker = tokio_util::task::TaskTracker::new();
    let over_tls = router.clone().layer(axum::Extension(OverTls));
    let accept = async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, say: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let (plain, over_tls) = (router.clone(), over_tls.clone());
            tracker.spawn(async move {
                let http = hyper::server::conn::http1::Builder::new();
                let mut first = [0u8; 1];
                if !matches!(tcp.peek(&mut first).await, Ok(1) if first[0] == TLS_HANDSHAKE) {
                    let _ = http
                        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(plain))
                        .await;
                    return;
                }
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = http
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(over_tls))
                    .await;
            });
        }
    };
    tokio::select! {
        () = accept => Ok(()),
        () = shutdown => Ok(()),
    }
}
