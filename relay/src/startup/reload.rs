//! Config reload without a restart: `SIGHUP` or `POST /admin/reload` re-reads the config file and what it names
//! (secret files, JWKS, CA bundles), builds the relay anew from it, and new requests go to the new relay from the
//! moment it is in place. Streams in flight finish on the relay they started on: each holds what it needs (its
//! route's settings, its vendor connection, its permit) and nothing reads the config again after the request was
//! admitted. A config that does not load, does not build, or changes a setting that needs a restart
//! ([`Config::needs_restart`]) is refused whole: the old one keeps serving, the error names the key as at startup.
//!
//! Each worker thread keeps its own copy of the relay (own vendor connection pools, [`stack::Relay::for_worker`])
//! and checks one atomic per request for a newer generation ([`Worker`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use super::{StartError, prepare};
use crate::admin::{Control, UsageAccess};
use crate::config::{Config, ConfigError, ProcessEnv};
use crate::server::{ConnState, Handler};
use crate::{metrics, stack};

/// Where a reload reads the config again: the file, and the command line's listener overrides (applied again, so
/// that they never read as a change).
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
}

/// Why a reload was refused (the old config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload (the relay was started without --config)")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("these settings need a restart, not a reload: {}", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
}

/// The relay serving now, and how many times it was replaced.
pub struct Live {
    relay: ArcSwap<stack::Relay>,
    generation: AtomicU64,
    source: Option<ConfigSource>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Live {
    pub fn new(relay: stack::Relay, source: Option<ConfigSource>) -> Self {
        if let Some(sha) = relay.config().file_sha256 {
            metrics::config_loaded(&hex::encode(sha), None);
        }
        metrics::config_reload(None);
        Self {
            relay: ArcSwap::from_pointee(relay),
            generation: AtomicU64::new(0),
            source,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The relay serving now.
    pub fn current(&self) -> Arc<stack::Relay> {
        self.relay.load_full()
    }

    /// A handler for one worker thread.
    pub fn worker(self: &Arc<Self>) -> Worker {
        let generation = self.generation.load(Ordering::Acquire);
        Worker {
            relay: ArcSwap::from_pointee(self.relay.load().for_worker()),
            seen: AtomicU64::new(generation),
            live: self.clone(),
        }
    }

    /// Re-reads the config file and, when it loads, builds and checks, serves it from now on. Logged and counted
    /// either way.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let _one = self.reloading.lock().await;
        let result = self.try_reload();
        match &result {
            Ok(loaded) => tracing::info!(config = %loaded, "config reloaded"),
            Err(e) => tracing::warn!(
                error = %crate::upstream::chain(e),
                "config reload refused; the previous config keeps serving"
            ),
        }
        metrics::config_reload(Some(result.is_ok()));
        result
    }

    fn try_reload(&self) -> Result<String, ReloadError> {
        let source = self.source.as_ref().ok_or(ReloadError::NoFile)?;
        let mut config = Config::load(&source.path, &ProcessEnv)?;
        config.listen = source.listen.unwrap_or(config.listen);
        config.admin_listen = source.admin_listen.unwrap_or(config.admin_listen);
        let old = self.relay.load_full();
        let restart = old.config().needs_restart(&config);
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
        let prepared = prepare(config)?;
        let summary = prepared.summary();
        let (config, tls, auth) = prepared.into_request_path();
        let sha = config.file_sha256.map(hex::encode).unwrap_or_default();
        let replaced = old.config().file_sha256.map(hex::encode);
        self.relay.store(Arc::new(old.reloaded(config, tls, auth)));
        self.generation.fetch_add(1, Ordering::AcqRel);
        metrics::config_loaded(&sha, replaced.as_deref());
        Ok(format!("{summary}, sha256 {sha}"))
    }

    /// Reloads on every `SIGHUP` until `done`. Registered for the relay's whole life: `SIGHUP`'s default action
    /// (what operators send by habit to reload nginx) would otherwise end the process and cut every stream.
    pub async fn reload_on_hangup(&self, done: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP: reload only through POST /admin/reload");
                return;
            }
        };
        loop {
            tokio::select! {
                () = done.cancelled() => return,
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!(signal = "SIGHUP", "reloading the config");
                    let _ = self.reload().await;
                }
            }
        }
    }
}

impl Control for Live {
    fn usage(&self) -> UsageAccess {
        let relay = self.relay.load();
        UsageAccess {
            account: relay.account(),
            key_sha256: relay.config().admin_key,
        }
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            Live::reload(self)
                .await
                .map_err(|e| crate::upstream::chain(&e))
        })
    }
}

/// One worker thread's relay: its own copy of the current generation, rebuilt (new vendor connection pools) on
/// the first request after a reload.
pub struct Worker {
    relay: ArcSwap<stack::Relay>,
    seen: AtomicU64,
    live: Arc<Live>,
}

impl Worker {
    fn relay(&self) -> Arc<stack::Relay> {
        let generation = self.live.generation.load(Ordering::Acquire);
        if self.seen.load(Ordering::Acquire) != generation {
            let fresh = self.live.relay.load().for_worker();
            self.relay.store(Arc::new(fresh));
            self.seen.store(generation, Ordering::Release);
        }
        self.relay.load_full()
    }
}

impl Handler for Worker {
    type Body = stack::RelayBody;

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnState>,
    ) -> Response<Self::Body> {
        self.relay().handle(req, conn).await
    }

    fn panicked(&self) -> Response<Self::Body> {
        self.relay.load().panicked()
    }
}
