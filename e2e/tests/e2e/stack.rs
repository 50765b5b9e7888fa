//! A whole deployment on loopback: mock vendor, relay (its binary, its config file) and, optionally, nginx in front.

use anyhow::Result;
use mock_upstream::testkit::nginx;

use crate::support::*;

/// Which process the client talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    Relay,
    Nginx,
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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            relay_top: "",
            relay_route: "",
            nginx_site: |site| site,
            relay_log: "info",
        }
    }
}

pub struct Stack {
    pub mock: Proc,
    pub relay: Proc,
    pub nginx: Option<nginx::Nginx>,
}

impl Stack {
    /// Where clients connect: nginx when it is in front, else the relay.
    pub fn base(&self) -> String {
        match &self.nginx {
            Some(n) => n.base(),
            None => format!("http://{}", self.relay.addr),
        }
    }
}

/// mock + relay (+ nginx); `None` when nginx is wanted but not installed (and not required).
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
        Front::Relay => None,
    };
    let mock = start_mock().await?;
    let (top, route) = (options.relay_top, options.relay_route);
    let relay = start_relay_env(mock.addr, top, route, options.relay_log, env).await?;
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
    Ok(Some(Stack { mock, relay, nginx }))
}
