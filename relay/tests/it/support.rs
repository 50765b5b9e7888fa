//! In-process fixtures: the mock vendor and the relay on `127.0.0.1:0`, each stopped by its token on drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use mock_upstream::sha256_hex;
use relay::Config;
pub use testkit::client::client;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const VENDOR_KEY: &str = "sk-vendor-CANARY-5f1e";
pub const CLIENT_KEY: &str = "client-key-CANARY-77";

/// A running mock vendor: its address and its state (counters, per-stream records).
pub struct Mock {
    pub addr: SocketAddr,
    pub app: Arc<mock_upstream::routes::App>,
    stop: CancellationToken,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start_mock() -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (router, app) = mock_upstream::app(VENDOR_KEY.to_owned());
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = axum_serve(listener, router) => {}
            () = stopped.cancelled() => {}
        }
    });
    Mock { addr, app, stop }
}

async fn axum_serve(listener: TcpListener, router: axum::Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// A running relay.
pub struct Relay {
    pub addr: SocketAddr,
    stop: CancellationToken,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Relay {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts the graceful shutdown; the handle resolves when `relay::run` has returned.
    pub fn shut_down(&mut self) -> tokio::task::JoinHandle<()> {
        self.stop.cancel();
        self.done.take().unwrap()
    }
}

/// Config with the two vendor routes pointing at `upstream` (`host:port`), plus `extra` lines in each route.
pub fn config(upstream: &str, extra: &str) -> Config {
    config_with(upstream, "", extra)
}

/// As [`config`], with `top` lines at the top level too.
pub fn config_with(upstream: &str, top: &str, extra: &str) -> Config {
    let toml = mock_upstream::relay_config(&mock_upstream::RelayToml {
        https: false,
        mock: upstream.parse().unwrap(),
        top,
        tenant: "acme",
        client_key: CLIENT_KEY,
        secret_env: "VENDOR_KEY",
        route: extra,
    });
    Config::from_toml(
        &toml,
        &vec![("VENDOR_KEY".to_owned(), VENDOR_KEY.to_owned())],
    )
    .unwrap()
}

pub async fn start_relay(config: Config) -> Relay {
    start_relay_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), config)
}

/// As [`start_relay`], serving `listener` (a test that needs its socket options set).
pub fn start_relay_on(listener: TcpListener, config: Config) -> Relay {
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let prepared = relay::prepare(config).unwrap();
    let run = relay::run(prepared, listener, stop.clone());
    let done = tokio::spawn(async move { run.await.unwrap() });
    Relay {
        addr,
        stop,
        done: Some(done),
    }
}

/// The admin key of [`start_relay_with_admin`]'s relays (`admin_key_sha256` of it in `top`).
pub const ADMIN_KEY: &str = "admin-key-CANARY-31";

/// `admin_key_sha256 = "…"` for [`ADMIN_KEY`], a top-level line.
pub fn admin_key_line() -> String {
    format!("admin_key_sha256 = \"{}\"\n", sha256_hex(ADMIN_KEY))
}

/// A relay with its admin listener too: the relay and the admin listener's address.
pub async fn start_relay_with_admin(config: Config) -> (Relay, SocketAddr) {
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let stop = CancellationToken::new();
    let prepared = relay::prepare(config).unwrap();
    let listeners = relay::Listeners {
        public,
        admin: Some(admin),
        admin_taken: None,
    };
    let run = relay::serve(prepared, listeners, stop.clone(), |r| r, || {});
    let done = tokio::spawn(async move { run.await.unwrap() });
    let relay = Relay {
        addr,
        stop,
        done: Some(done),
    };
    (relay, admin_addr)
}

/// `GET /admin/usage?{query}` with the admin key: the JSON report.
pub async fn usage_report(admin: SocketAddr, query: &str) -> serde_json::Value {
    let res = client()
        .get(format!("http://{admin}/admin/usage?{query}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Waits until the usage report counts `streams` streams in all: a stream's usage is charged and recorded just
/// after its last byte, so the next request must not race it. Polls the report (the condition itself).
pub async fn await_usage(admin: SocketAddr, streams: u64) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = usage_report(admin, "").await;
        if report["total"]["streams"].as_u64() >= Some(streams) {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "usage never reached {streams} streams: {report}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A streaming chat request with the right client key and `x-mock-*` scenario headers.
pub fn chat(relay: &Relay, scenario: &[(&str, &str)]) -> reqwest::RequestBuilder {
    testkit::client::chat(&relay.url(""), CLIENT_KEY, scenario)
}

/// Waits (awaiting the mock's watch channel, not sleeping) until `counter` reaches `at_least`.
pub async fn await_counter(mock: &Mock, counter: &str, at_least: u64, within: Duration) -> bool {
    let mut rx = mock.app.stats.watch();
    let reached = rx.wait_for(|c| c.get(counter).is_some_and(|v| v >= at_least));
    matches!(tokio::time::timeout(within, reached).await, Ok(Ok(_)))
}

/// The `data` of the body's `event: error`, if it has exactly one (more than one fails the test).
pub fn error_event(body: &str) -> Option<serde_json::Value> {
    let found: Vec<&str> = body.split("event: error\ndata: ").skip(1).collect();
    assert!(found.len() <= 1, "more than one error event: {body}");
    let data = found.first()?.split('\n').next()?;
    Some(serde_json::from_str(data).unwrap())
}

/// The events of an SSE body (split on blank lines), keep-alive comments included.
pub fn events(body: &str) -> Vec<&str> {
    body.split("\n\n").filter(|e| !e.is_empty()).collect()
}
