//! Startup wiring, in one place for every entry point (`relay`, `relay --demo`, the tests' in-process relays):
//! a [`Config`] checked into [`Prepared`] (vendor TLS set up), the listeners bound ([`Listeners`], the demo's admin
//! port moved when taken), the metrics recorder installed, the limit store connected, and the workers, the admin
//! listener, the lease renewals and the log-drop reports run until shutdown ([`serve`]).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::server::ServeError;
use crate::server::{Handler, Shutdown};
use crate::upstream::TlsError;
use crate::{admin, config, demo, limit, logs, metrics, server, stack, upstream};

/// A configuration that passed every startup check (its vendor TLS settings included), ready to serve.
pub struct Prepared {
    config: Arc<Config>,
    tls: crate::upstream::VendorTls,
}

impl Prepared {
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What `--check-config` prints.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let jwt = c
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

/// Checks what can be checked before binding: the two listeners' addresses (after command-line overrides) and the
/// vendor TLS settings (an `https` route without CA roots is refused here).
pub fn prepare(config: Config) -> Result<Prepared, StartError> {
    config::check_admin(config.listen, config.admin_listen)?;
    let tls = upstream::tls_config(&config.routes)?;
    Ok(Prepared {
        config: Arc::new(config),
        tls,
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
        let public = bind(config.listen).await?;
        let wanted = config.admin_listen;
        let (admin, admin_taken) = match bind(wanted).await {
            Ok(admin) => (admin, None),
            Err(e) if admin_may_move && e.source.kind() == std::io::ErrorKind::AddrInUse => {
                let free = std::net::SocketAddr::new(wanted.ip(), 0);
                (bind(free).await?, Some(wanted))
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
    prepared: Prepared,
    listeners: Listeners,
    stop: CancellationToken,
    wrap: impl Fn(stack::Relay) -> H,
    ready: impl FnOnce(),
) -> Result<(), RunError> {
    let Prepared { config, tls } = prepared;
    // Before any handle is looked up: handles taken earlier would record nowhere.
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
    let shutdown = Shutdown {
        stop: stop.clone(),
        drain: CancellationToken::new(),
    };
    for route in &config.routes {
        // Which way each route's vendor calls go, so an operator can check it (credentials are never shown).
        tracing::info!(route = %route.path, egress = %route.egress, "vendor calls");
    }
    let store = match &config.store {
        None => None,
        Some(c) => {
            let store = limit::store::RedisStore::new(c.clone())?;
            // Unreachable now is not fatal: `on_store_error` applies until it answers.
            if let Err(e) = store.ping().await {
                tracing::warn!(error = %e, "the limit store does not answer at startup; on_store_error applies until it does");
            }
            Some(Arc::new(store))
        }
    };
    let relay =
        stack::Relay::with_store(config.clone(), tls, shutdown.drain.clone(), store.clone());
    let make = || Arc::new(wrap(relay.for_worker()));
    let (workers, pinned, limits) = (config.workers, config.pin_connections, config.limits);
    let done = CancellationToken::new();
    let serving = async {
        let public = listeners.public;
        let served =
            server::serve_workers(public, workers, pinned, make, limits, shutdown, ready).await;
        done.cancel();
        served
    };
    let usage = admin::UsageAccess {
        account: relay.account(),
        key_sha256: config.admin_key,
    };
    let admin = async {
        if let Some(l) = listeners.admin {
            admin::serve(l, registry, usage, stop, done.clone()).await;
        }
    };
    // The leases of streams this replica holds, renewed until it stops serving.
    let renewing = async {
        if let Some(store) = &store {
            store.renew_until(done.clone()).await;
        }
    };
    let (served, (), (), ()) =
        tokio::join!(serving, admin, renewing, logs::report_drops(done.clone()));
    Ok(served?)
}
