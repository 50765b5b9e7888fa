//! A whole deployment on loopback: mock vendor, relay (its binary, its config file) and, optionally, nginx or
//! HAProxy in front.

use anyhow::{Context, Result};
use testkit::{haproxy, nginx};

use crate::support::*;

/// Which process the client talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    Relay,
    Nginx,
    Haproxy,
}

/// Test-specific settings.
#[derive(Clone, Copy)]
pub struct Options {
    /// Extra top-level relay config lines.
    pub relay_top: &'static str,
    /// Extra lines for each relay route.
    pub relay_route: &'static str,
    /// Applied to the rendered nginx site config (e.g. a shorter `proxy_read_timeout`).
    pub nginx_site: fn(String) -> String,
    /// The relay's `RUST_LOG`.
    pub relay_log: &'static str,
    /// The mock speaks HTTPS with a private CA, which the relay's routes trust (`ca_file`).
    pub vendor_tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            relay_top: "",
            relay_route: "",
            nginx_site: |site| site,
            relay_log: "info",
            vendor_tls: false,
        }
    }
}

pub struct Stack {
    pub mock: Proc,
    pub relay: Proc,
    pub nginx: Option<nginx::Nginx>,
    pub haproxy: Option<haproxy::Haproxy>,
}

impl Stack {
    /// Where clients connect: the front (nginx or HAProxy) when there is one, else the relay.
    pub fn base(&self) -> String {
        match (&self.nginx, &self.haproxy) {
            (Some(n), _) => n.base(),
            (None, Some(h)) => h.base(),
            (None, None) => format!("http://{}", self.relay.addr),
        }
    }

    /// The path a request takes, for messages.
    pub fn path(&self) -> &'static str {
        match (&self.nginx, &self.haproxy) {
            (Some(_), _) => "client → nginx → relay → mock",
            (None, Some(_)) => "client → HAProxy → relay → mock",
            (None, None) => "client → relay → mock",
        }
    }
}

/// mock + relay (+ nginx or HAProxy); `None` when the front is wanted but not installed (and not required).
pub async fn stack(front: Front, options: Options) -> Result<Option<Stack>> {
    stack_env(front, options, &[]).await
}

/// As [`stack`], with more environment variables for the relay.
pub async fn stack_env(
    front: Front,
    options: Options,
    env: &[(&str, &str)],
) -> Result<Option<Stack>> {
    let nginx_bin = match front {
        Front::Nginx => match nginx::available() {
            Some(b) => Some(b),
            None => return Ok(None),
        },
        Front::Relay | Front::Haproxy => None,
    };
    let haproxy_bin = match front {
        Front::Haproxy => match haproxy::available() {
            Some(b) => Some(b),
            None => return Ok(None),
        },
        Front::Relay | Front::Nginx => None,
    };
    let (mock, route) = if options.vendor_tls {
        let (mock, ca) = testkit::proc::start_mock_tls(VENDOR_KEY).await?;
        let route = format!("{}\nca_file = {:?}", options.relay_route, ca);
        (mock, route)
    } else {
        (start_mock().await?, options.relay_route.to_owned())
    };
    let (top, log, https) = (options.relay_top, options.relay_log, options.vendor_tls);
    let relay = start_relay_to(mock.addr, https, top, &route, log, env).await?;
    let nginx = match nginx_bin {
        Some(bin) => {
            let opts = nginx::Options {
                tweak: options.nginx_site,
                ..nginx::Options::default()
            };
            Some(nginx::start(&bin, relay.addr, opts).await?)
        }
        None => None,
    };
    let haproxy = match haproxy_bin {
        Some(bin) => {
            let admin = relay
                .admin()
                .context("the relay printed no admin address")?;
            Some(haproxy::start(&bin, relay.addr, admin).await?)
        }
        None => None,
    };
    Ok(Some(Stack {
        mock,
        relay,
        nginx,
        haproxy,
    }))
}

/// Whether `pid` still runs (a zombie waiting to be reaped does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// Dropping a stack stops every process it started: mock, relay, the nginx master and its workers.
#[tokio::test]
async fn nothing_outlives_its_stack() -> Result<()> {
    let Some(s) = stack(Front::Nginx, Options::default()).await? else {
        return Ok(());
    };
    assert_eq!(drain(chat(&s.base(), CLIENT_KEY, &[])).await?, 200);
    let nginx = s.nginx.as_ref().map(|n| n.pids()).unwrap_or_default();
    assert!(
        nginx.len() >= 2,
        "the nginx master and its workers: {nginx:?}"
    );
    let pids: Vec<u32> = [s.mock.pid(), s.relay.pid()]
        .into_iter()
        .flatten()
        .chain(nginx)
        .collect();
    assert!(pids.iter().all(|&p| running(p)));
    drop(s);
    // The mock's and relay's handles kill on drop and tokio reaps them in the background: wait for that (5 s
    // at most); nginx's master has already exited, its workers before it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while pids.iter().any(|&p| running(p)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let alive: Vec<u32> = pids.into_iter().filter(|&p| running(p)).collect();
    assert!(
        alive.is_empty(),
        "still running after the stack was dropped: {alive:?}"
    );
    Ok(())
}
