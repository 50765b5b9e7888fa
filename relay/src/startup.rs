//! Startup wiring, in one place for every entry point (`relay`, `relay --demo`, the tests' in-process relays):
//! a [`Config`] checked into [`Prepared`] (vendor TLS set up), the listeners bound ([`Listeners`], the demo's admin
//! port moved when taken), the metrics recorder installed, the limit store connected, and the workers, the admin
//! listener, the lease renewals and the log-drop reports run until shutdown ([`serve`]).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use std::os::fd::AsFd;
use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

mod reload;
mod upgrade;

pub use reload::{ConfigSource, Live, ReloadError, Worker};
pub use upgrade::LISTENER_VAR;

use crate::auth::Authenticator;
use crate::auth::jwt::Verifier;
use crate::config::{Config, ConfigError, JwtSettings, StoreServers, StoreSettings};
use crate::limit::store::{StoreClient, StoreConfig};
use crate::server::ServeError;
use crate::server::{Handler, Shutdown};
use crate::upstream::TlsError;
use crate::{admin, config, demo, limit, logs, metrics, server, stack, upstream};

/// A configuration that passed every startup check, with the runtime objects built from its plain data: the vendor
/// TLS settings, the JWT verifier (its JWKS file read) and the limit store's client. Ready to serve.
pub struct Prepared {
    config: Arc<Config>,
    tls: crate::upstream::VendorTls,
    jwt: Option<Arc<Verifier>>,
    store: Option<StoreConfig>,
    /// Where `SIGHUP` and `POST /admin/reload` read the config again; `None`: nothing to reload.
    source: Option<ConfigSource>,
}

impl Prepared {
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reloads read the config again from `source` (its file, the command line's overrides).
    pub fn reloadable_from(mut self, source: ConfigSource) -> Self {
        self.source = Some(source);
        self
    }

    /// What the request path is built from: the config, the vendor TLS settings and the credentials' checker.
    fn into_request_path(self) -> (Arc<Config>, crate::upstream::VendorTls, Authenticator) {
        let auth = Authenticator::with(self.config.clients.clone(), self.jwt);
        (self.config, self.tls, auth)
    }

    /// What `--check-config` prints.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let jwt = self
            .jwt
            .as_ref()
            .map(|j| format!(", JWTs checked against {} keys", j.key_count()))
            .unwrap_or_default();
        format!(
            "config ok ({} routes, {} client keys{jwt}, {} tenants)",
            c.routes.len(),
            c.clients.len(),
            c.tenants.len()
        )
    }
}

/// Why a configuration cannot be served (`main` exits 64).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Checks what can be checked before binding and builds the runtime objects: the two listeners' addresses (after
/// command-line overrides), the vendor TLS settings (an `https` route without CA roots is refused here), the JWT
/// verifier (an unreadable or unusable JWKS file is `auth.jwt.jwks_file`'s error) and the store client (its CA
/// file read with rustls' PEM reader). Nothing connects yet.
pub fn prepare(config: Config) -> Result<Prepared, StartError> {
    config::check_admin(config.listen, config.admin_listen)?;
    let tls = upstream::tls_config(&config.routes)?;
    let jwt = config
        .jwt
        .as_ref()
        .map(|settings| jwt_verifier(settings, &config.tenants))
        .transpose()?;
    let store = config.store.as_ref().map(store_config).transpose()?;
    Ok(Prepared {
        config: Arc::new(config),
        tls,
        jwt,
        store,
        source: None,
    })
}

/// The JWT verifier, its JWKS file read once.
fn jwt_verifier(
    settings: &JwtSettings,
    tenants: &[Arc<str>],
) -> Result<Arc<Verifier>, ConfigError> {
    Verifier::load(settings.clone(), tenants)
        .map(Arc::new)
        .map_err(|e| ConfigError::field("auth.jwt.jwks_file", e.to_string()))
}

/// The limit store's Redis client (one server or a cluster), not yet connected.
fn store_config(settings: &StoreSettings) -> Result<StoreConfig, ConfigError> {
    let certs = settings.ca_file.as_deref().map(store_roots).transpose()?;
    let client = match &settings.servers {
        StoreServers::One(url) => {
            let opened = match &certs {
                Some(certs) => redis::Client::build_with_tls(url.as_str(), certs.clone()),
                None => redis::Client::open(url.as_str()),
            };
            let client = opened.map_err(|e| ConfigError::field("store.url", e.to_string()))?;
            StoreClient::Single(Box::new(client))
        }
        StoreServers::Cluster(nodes) => {
            let mut builder =
                redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str));
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder
                .build()
                .map_err(|e| ConfigError::field("store.cluster_nodes", e.to_string()))?;
            StoreClient::Cluster(Box::new(client))
        }
    };
    Ok(StoreConfig {
        client,
        timeout: settings.timeout,
        on_error: settings.on_error,
        key_prefix: settings.key_prefix.clone(),
        stream_lease: settings.stream_lease,
    })
}

/// `store.ca_file`: PEM certificates, at least one, read with rustls' PEM reader.
fn store_roots(path: &Path) -> Result<redis::TlsCertificates, ConfigError> {
    let bad = |reason: String| ConfigError::field("store.ca_file", reason);
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read `{shown}`: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("`{shown}` is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(format!("`{shown}` holds no PEM certificate")));
    }
    Ok(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    })
}

/// Why the relay stopped serving, or never started.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot set up the limit store")]
    Store(#[from] limit::store::StoreError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
}

/// The listeners `main` bound: the public one and, unless the caller serves none, the admin one.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: Option<TcpListener>,
    /// The admin address asked for, when it was taken and the admin listener took a free port instead.
    pub admin_taken: Option<std::net::SocketAddr>,
}

/// A listener that could not be bound (`main` exits 1).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindError {
    addr: std::net::SocketAddr,
    #[source]
    source: std::io::Error,
}

impl Listeners {
    /// Binds the configured `listen` and `admin_listen` addresses. `admin_may_move`: when the admin address is
    /// taken, take a free port on the same interface instead (`--demo`, so that a second demo on one machine
    /// starts; the announcement says where it went); otherwise a taken address is an error.
    pub async fn bind(config: &Config, admin_may_move: bool) -> Result<Self, BindError> {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { addr, source })
        };
        // A successor of a relay that is upgrading takes over its public socket (`upgrade.rs`).
        let public = match upgrade::inherited_listener() {
            Ok(Some(listener)) => listener,
            Ok(None) => bind(config.listen).await?,
            Err(source) => {
                return Err(BindError {
                    addr: config.listen,
                    source,
                });
            }
        };
        let wanted = config.admin_listen;
        // Shared with the successor during an upgrade (both bind it, SO_REUSEPORT); a demo's moves instead.
        let admin = |addr| async move {
            if admin_may_move {
                return bind(addr).await;
            }
            bind_shared(addr).map_err(|source| BindError { addr, source })
        };
        let (admin, admin_taken) = match admin(wanted).await {
            Ok(admin) => (admin, None),
            Err(e) if admin_may_move && e.source.kind() == std::io::ErrorKind::AddrInUse => {
                let free = std::net::SocketAddr::new(wanted.ip(), 0);
                (admin(free).await?, Some(wanted))
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            public,
            admin: Some(admin),
            admin_taken,
        })
    }

    /// The public address (the bound one, when the configuration asked for port 0).
    pub fn public_addr(&self) -> Option<std::net::SocketAddr> {
        self.public.local_addr().ok()
    }

    /// What `main` prints once every worker serves: `listening on ADDR`, then `admin listening on ADDR`, then,
    /// for `--demo`, what to paste into a terminal.
    pub fn announcement(&self, demo: bool) -> String {
        let public = self.public_addr();
        let mut text =
            public.map_or_else(|| "listening".to_owned(), |a| format!("listening on {a}"));
        if let Some(admin) = self.admin.as_ref().and_then(|a| a.local_addr().ok()) {
            text.push_str(&format!("\nadmin listening on {admin}"));
            if let Some(taken) = self.admin_taken {
                text.push_str(&format!(" ({taken} is taken by another process)"));
            }
        }
        if let (true, Some(addr)) = (demo, public) {
            text.push('\n');
            text.push_str(&demo::instructions(addr));
        }
        text
    }
}

/// Serves the relay on `listener` until `stop` is cancelled, then drains in-flight streams for the configured grace
/// period and ends the rest with a `shutdown` error event. No admin listener. Fails when a worker cannot start.
pub async fn run(
    prepared: Prepared,
    listener: TcpListener,
    stop: CancellationToken,
) -> Result<(), RunError> {
    let listeners = Listeners {
        public: listener,
        admin: None,
        admin_taken: None,
    };
    serve(prepared, listeners, stop, |relay| relay, || {}).await
}

/// What `main` runs: [`serve`] with the demo page in front when `demo` is set, `ready` called once every worker
/// is up.
pub async fn serve_main(
    prepared: Prepared,
    listeners: Listeners,
    stop: CancellationToken,
    demo: bool,
    ready: impl FnOnce(),
) -> Result<(), RunError> {
    if demo {
        return serve(prepared, listeners, stop, demo::DemoPage::new, ready).await;
    }
    serve(prepared, listeners, stop, |relay| relay, ready).await
}

/// How this binary was built: `release` (optimized) or `debug` (`cfg!(debug_assertions)`, what `cargo build` and
/// `cargo test` make). Logged as a warning at startup when `debug` and exported as `ssegate_build_info{profile}`,
/// so that nobody deploys or measures an unoptimized relay without being told.
pub const PROFILE: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

/// As [`run`], with the admin listener when given, the request path wrapped by `wrap` (the demo page), and `ready`
/// called once every worker is up.
pub async fn serve<H: Handler>(
    mut prepared: Prepared,
    listeners: Listeners,
    stop: CancellationToken,
    wrap: impl Fn(Worker) -> H,
    ready: impl FnOnce(),
) -> Result<(), RunError> {
    let registry = announce(&prepared.config)?;
    let shutdown = Shutdown {
        stop: stop.clone(),
        drain: CancellationToken::new(),
    };
    let store = match prepared.store.take() {
        None => None,
        Some(c) => Some(connect_store(c).await?),
    };
    let source = prepared.source.take();
    let (config, tls, auth) = prepared.into_request_path();
    let relay = stack::Relay::with_store(
        config.clone(),
        tls,
        auth,
        shutdown.drain.clone(),
        store.clone(),
    );
    let live = Arc::new(Live::new(relay, source));
    let make = || Arc::new(wrap(live.worker()));
    let (workers, pinned, limits) = (config.workers, config.pin_connections, config.limits);
    let done = CancellationToken::new();
    // A handle on the public socket, for a successor (`SIGUSR2`); dropped once this relay stops accepting.
    let handoff = listeners.public.as_fd().try_clone_to_owned();
    let ready = || {
        ready();
        upgrade::notify_ready();
    };
    let serving = async {
        let public = listeners.public;
        let served =
            server::serve_workers(public, workers, pinned, make, limits, shutdown, ready).await;
        done.cancel();
        served
    };
    let admin = async {
        if let Some(l) = listeners.admin {
            admin::serve(l, registry, live.clone(), stop.clone(), done.clone()).await;
        }
    };
    // The leases of streams this replica holds, renewed until it stops serving.
    let renewing = async {
        if let Some(store) = &store {
            store.renew_until(done.clone()).await;
        }
    };
    let reloading = live.reload_on_hangup(done.clone());
    let upgrading = async {
        match handoff {
            Ok(fd) => upgrade::upgrade_on_signal(fd, stop.clone(), done.clone()).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep a handle on the listener: binary upgrades are off")
            }
        }
    };
    let (served, (), (), (), (), ()) = tokio::join!(
        serving,
        admin,
        renewing,
        reloading,
        upgrading,
        logs::report_drops(done.clone())
    );
    Ok(served?)
}

/// Installs the metrics recorder (before any handle is looked up: handles taken earlier would record nowhere)
/// with the build and limit gauges, and logs what an operator checks at startup: a debug build, each route's way
/// out.
fn announce(config: &Config) -> Result<&'static metrics::Registry, RunError> {
    let registry = metrics::install()?;
    metrics::set_enabled(config.metrics);
    metrics::limits(config.limits.max_streams);
    metrics::build_info(PROFILE);
    if PROFILE == "debug" {
        // A debug build costs several times the CPU per chunk of a release build and adds delay: a side-by-side
        // measurement of it against nginx says nothing about the relay (issue 23's low-load report).
        tracing::warn!(
            "this relay is a debug build (unoptimized): not for production or performance measurement; \
             build with `cargo build --release -p relay`"
        );
    }
    for route in &config.routes {
        // Which way each route's vendor calls go, so an operator can check it (credentials are never shown).
        tracing::info!(route = %route.path, egress = %route.egress, "vendor calls");
    }
    Ok(registry)
}

/// The limit store, connecting on first use. Unreachable now is not fatal: `on_store_error` applies until it
/// answers.
async fn connect_store(config: StoreConfig) -> Result<Arc<limit::store::RedisStore>, RunError> {
    let store = limit::store::RedisStore::new(config)?;
    if let Err(e) = store.ping().await {
        tracing::warn!(error = %e, "the limit store does not answer at startup; on_store_error applies until it does");
    }
    Ok(Arc::new(store))
}

/// A listener on `addr` that another process of this user may bind too (`SO_REUSEPORT`): the admin listener, which
/// a relay's successor binds while the relay drains ([`upgrade`]).
fn bind_shared(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
