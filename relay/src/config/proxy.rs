//! Egress proxy settings: a route's `proxy` (a URL, or `"none"`) or, by default, the standard environment variables
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, either case). Checked at startup; credentials (from the
//! URL or `proxy_auth_file`) never appear in `Debug` output or errors.

use std::fmt;
use std::path::Path;

use http::Uri;

use super::{ConfigError, Env, field};

/// Where a route's vendor connections go first.
#[derive(Clone, PartialEq, Eq)]
pub enum ProxyConfig {
    /// Straight to the vendor.
    Off,
    /// Through `url` for every endpoint of the route (the environment is not consulted).
    Route { url: String },
    /// As the environment says, per endpoint scheme, minus `no_proxy`. Empty strings: not set.
    Env {
        http: String,
        https: String,
        all: String,
        no_proxy: String,
    },
}

/// The proxy settings and the credentials from `proxy_auth_file` (`user:password`), if any.
#[derive(Clone, PartialEq, Eq)]
pub struct Egress {
    pub proxy: ProxyConfig,
    pub auth: Option<String>,
}

impl fmt::Debug for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Egress({self})")
    }
}

impl ProxyConfig {
    /// No proxy applies: `"none"`, or no proxy variable set.
    pub fn is_direct(&self) -> bool {
        match self {
            ProxyConfig::Off => true,
            ProxyConfig::Route { .. } => false,
            ProxyConfig::Env {
                http, https, all, ..
            } => http.is_empty() && https.is_empty() && all.is_empty(),
        }
    }
}

/// For the startup log line: where the route's vendor calls go, without credentials.
impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.proxy {
            ProxyConfig::Off => write!(f, "direct (proxy = \"none\")"),
            ProxyConfig::Route { url } => write!(f, "through {}", redacted(url)),
            ProxyConfig::Env {
                http,
                https,
                all,
                no_proxy,
            } => {
                let set: Vec<String> = [
                    ("HTTPS_PROXY", https),
                    ("HTTP_PROXY", http),
                    ("ALL_PROXY", all),
                ]
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(name, v)| format!("{name}={}", redacted(v)))
                .collect();
                if self.proxy.is_direct() {
                    return write!(f, "direct (no proxy variable set)");
                }
                write!(f, "through {}", set.join(" "))?;
                if !no_proxy.is_empty() {
                    write!(f, " except NO_PROXY={no_proxy}")?;
                }
                Ok(())
            }
        }
    }
}

/// `url` without its user info: for logs and errors.
pub fn redacted(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, host)) => {
            let scheme = before.split_once("://").map_or("", |(s, _)| s);
            if scheme.is_empty() {
                format!("[credentials]@{host}")
            } else {
                format!("{scheme}://[credentials]@{host}")
            }
        }
        None => url.to_owned(),
    }
}

/// Checks a proxy URL, `http://[user:password@]host[:port]`; a bare `host:port` means `http://`. Returns it with
/// its scheme.
fn check(name: &str, url: &str) -> Result<String, ConfigError> {
    let with_scheme = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let ok = with_scheme
        .parse::<Uri>()
        .ok()
        .filter(|u| u.scheme_str() == Some("http") && u.host().is_some_and(|h| !h.is_empty()))
        .is_some();
    if !ok {
        return Err(field(
            name,
            format!(
                "`{}` is not an http:// proxy URL (https:// and socks proxies are not supported)",
                redacted(url)
            ),
        ));
    }
    Ok(with_scheme)
}

/// The route's egress settings from its `proxy` and `proxy_auth_file` (`at` names the route's fields).
pub fn egress(
    at: &dyn Fn(&str) -> String,
    proxy: Option<&str>,
    auth_file: Option<&Path>,
    env: &dyn Env,
) -> Result<Egress, ConfigError> {
    let proxy = match proxy.map(str::trim) {
        Some("none") => ProxyConfig::Off,
        Some(url) => ProxyConfig::Route {
            url: check(&at("proxy"), url)?,
        },
        None => {
            let var = |names: [&str; 2]| -> Result<String, ConfigError> {
                for name in names {
                    if let Some(v) = env.var(name).filter(|v| !v.trim().is_empty()) {
                        if name.eq_ignore_ascii_case("no_proxy") {
                            return Ok(v.trim().to_owned());
                        }
                        return check(name, v.trim());
                    }
                }
                Ok(String::new())
            };
            ProxyConfig::Env {
                http: var(["HTTP_PROXY", "http_proxy"])?,
                https: var(["HTTPS_PROXY", "https_proxy"])?,
                all: var(["ALL_PROXY", "all_proxy"])?,
                no_proxy: var(["NO_PROXY", "no_proxy"])?,
            }
        }
    };
    let auth = match auth_file {
        None => None,
        Some(path) => {
            let name = at("proxy_auth_file");
            let text = std::fs::read_to_string(path).map_err(|e| {
                field(
                    name.as_str(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let text = text.trim();
            if !text.contains(':') || text.contains(['\r', '\n']) {
                return Err(field(name, "must hold one line `user:password`"));
            }
            Some(text.to_owned())
        }
    };
    if auth.is_some() && proxy == ProxyConfig::Off {
        return Err(field(
            at("proxy_auth_file"),
            "is set but `proxy` is \"none\"",
        ));
    }
    Ok(Egress { proxy, auth })
}
