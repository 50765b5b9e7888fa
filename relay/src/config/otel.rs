//! `[otel]`: where traces go. Off unless the file has an `[otel]` section or the environment names a collector
//! with the standard variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`); the file's
//! values win over those variables (and `RELAY_OTEL__*` over the file, as everywhere). `OTEL_SDK_DISABLED=true`
//! or `enabled = false` turns traces off whatever else is set.

use http::Uri;
use serde::Deserialize;

use super::{ConfigError, Env};

/// The OTLP/HTTP port on this machine: what the OpenTelemetry collector listens on by default.
const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
const TRACES_PATH: &str = "/v1/traces";

/// The `[otel]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtel {
    pub enabled: Option<bool>,
    /// The collector's OTLP/HTTP address (`http://host:4318`); `/v1/traces` is appended unless the URL ends with it.
    pub endpoint: Option<String>,
    pub service_name: Option<String>,
    /// The share of traces recorded when the client did not decide (a `traceparent`'s sampled flag wins).
    pub sample_ratio: Option<f64>,
}

/// Where and how spans are exported.
#[derive(Clone, Debug, PartialEq)]
pub struct OtelConfig {
    /// The full OTLP/HTTP traces URL.
    pub endpoint: Uri,
    pub service_name: String,
    pub sample_ratio: f64,
}

fn error(field: &str, var: Option<&str>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.to_owned(),
        origin: var
            .map(|v| format!(" (from environment variable {v})"))
            .unwrap_or_default(),
        reason: reason.into(),
    }
}

/// The export settings, or `None` when traces are off.
pub fn validate(raw: Option<&RawOtel>, env: &dyn Env) -> Result<Option<OtelConfig>, ConfigError> {
    let disabled_by_env = env
        .var("OTEL_SDK_DISABLED")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if disabled_by_env || raw.and_then(|r| r.enabled) == Some(false) {
        return Ok(None);
    }
    let from_env = |var: &'static str| {
        env.var(var)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (v, var))
    };
    // (URL as given, where it came from, whether it is already the traces URL)
    let given = match raw.and_then(|r| r.endpoint.clone()) {
        Some(url) => Some((url, None, false)),
        None => from_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|(v, var)| (v, Some(var), true))
            .or_else(|| {
                from_env("OTEL_EXPORTER_OTLP_ENDPOINT").map(|(v, var)| (v, Some(var), false))
            }),
    };
    let (url, var, exact) = match (given, raw) {
        (Some(g), _) => g,
        (None, Some(_)) => (DEFAULT_ENDPOINT.to_owned(), None, false),
        (None, None) => return Ok(None),
    };
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some((p, var)) = from_env(var).filter(|(p, _)| p.trim() != "http/protobuf") {
            return Err(error(
                "otel.endpoint",
                Some(var),
                format!(
                    "protocol `{p}` is not supported: the relay exports OTLP over HTTP (`http/protobuf`)"
                ),
            ));
        }
    }
    let endpoint = traces_url(url.trim(), exact).ok_or_else(|| {
        error(
            "otel.endpoint",
            var,
            format!("`{url}` is not an http:// or https:// URL"),
        )
    })?;
    let service_name = raw
        .and_then(|r| r.service_name.clone())
        .or_else(|| from_env("OTEL_SERVICE_NAME").map(|(v, _)| v))
        .unwrap_or_else(|| "ssegate".to_owned());
    if service_name.trim().is_empty() {
        return Err(error("otel.service_name", None, "must not be empty"));
    }
    let sample_ratio = raw.and_then(|r| r.sample_ratio).unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(error("otel.sample_ratio", None, "must be from 0.0 to 1.0"));
    }
    Ok(Some(OtelConfig {
        endpoint,
        service_name,
        sample_ratio,
    }))
}

/// `url` as the OTLP/HTTP traces URL: `/v1/traces` appended to a base URL (unless `exact` or already there).
fn traces_url(url: &str, exact: bool) -> Option<Uri> {
    let uri: Uri = url.parse().ok()?;
    let http = matches!(uri.scheme_str(), Some("http" | "https"));
    if !http || uri.authority().is_none_or(|a| a.host().is_empty()) || uri.query().is_some() {
        return None;
    }
    if exact || uri.path().trim_end_matches('/').ends_with(TRACES_PATH) {
        return Some(uri);
    }
    format!("{}{TRACES_PATH}", url.trim_end_matches('/'))
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn raw(endpoint: Option<&str>) -> RawOtel {
        RawOtel {
            enabled: None,
            endpoint: endpoint.map(str::to_owned),
            service_name: None,
            sample_ratio: None,
        }
    }

    #[test]
    fn off_unless_configured() {
        assert_eq!(validate(None, &env(&[])).ok(), Some(None));
        let off = RawOtel {
            enabled: Some(false),
            ..raw(Some("http://c:4318"))
        };
        assert_eq!(validate(Some(&off), &env(&[])).ok(), Some(None));
        let disabled = env(&[
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ]);
        assert_eq!(validate(None, &disabled).ok(), Some(None));
    }

    #[test]
    fn endpoints_follow_the_otlp_rules() -> Result<(), ConfigError> {
        let url = |raw: Option<&RawOtel>, vars: &[(&str, &str)]| -> Result<String, ConfigError> {
            Ok(validate(raw, &env(vars))?
                .map(|c| c.endpoint.to_string())
                .unwrap_or_default())
        };
        assert_eq!(
            url(Some(&raw(None)), &[])?,
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            url(Some(&raw(Some("http://c:4318/"))), &[])?,
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            url(Some(&raw(Some("https://c/v1/traces"))), &[])?,
            "https://c/v1/traces"
        );
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318")];
        assert_eq!(url(None, &base)?, "http://e:4318/v1/traces");
        let exact = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"),
            base[0],
        ];
        assert_eq!(url(None, &exact)?, "http://t:1/x");
        assert_eq!(
            url(Some(&raw(Some("http://file:1"))), &exact)?,
            "http://file:1/v1/traces"
        );
        Ok(())
    }

    #[test]
    fn a_bad_endpoint_names_the_field_and_its_source() {
        let message = |raw: Option<&RawOtel>, vars: &[(&str, &str)]| {
            validate(raw, &env(vars))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let m = message(Some(&raw(Some("collector:4318"))), &[]);
        assert!(
            m.contains("`otel.endpoint`") && m.contains("not an http"),
            "{m}"
        );
        let m = message(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")]);
        assert!(m.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{m}");
        let m = message(Some(&raw(None)), &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert!(
            m.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && m.contains("grpc"),
            "{m}"
        );
        let ratio = RawOtel {
            sample_ratio: Some(1.5),
            ..raw(None)
        };
        assert!(message(Some(&ratio), &[]).contains("otel.sample_ratio"));
    }
}
