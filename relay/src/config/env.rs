//! Environment layering: `RELAY_<KEY>` sets a top-level key, `__` separates nesting (`RELAY_AUDIT__ENABLED=false`).
//! Values parse as TOML scalars, falling back to a string. The environment reaches the loader only through the
//! [`Env`] trait, so tests never touch the process environment; an error says which variable set the bad value
//! ([`locate`]).

use std::path::Path;

use super::{ConfigError, field};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "RELAY_";

/// Where environment values come from: the process in production, a map in tests.
pub trait Env {
    /// Every variable (name, value).
    fn vars(&self) -> Vec<(String, String)>;

    /// One variable.
    fn var(&self, name: &str) -> Option<String> {
        self.vars()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }

    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for Vec<(String, String)> {
    fn vars(&self) -> Vec<(String, String)> {
        self.clone()
    }
}

/// Sets `RELAY_*` variables into the table; returns (field path, variable) for error messages.
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: &dyn Env,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut applied = Vec::new();
    for (var, value) in env.vars() {
        let Some(key) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
        if parts.iter().any(String::is_empty) {
            return Err(field(var, "malformed override name"));
        }
        let value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let mut node = &mut *table;
        for part in &parts[..parts.len() - 1] {
            let entry = node
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().ok_or_else(|| {
                field(
                    parts.join("."),
                    format!("{var} cannot override a non-table value"),
                )
            })?;
        }
        if let Some(last) = parts.last() {
            node.insert(last.clone(), value);
        }
        applied.push((parts.join("."), var));
    }
    Ok(applied)
}

/// Says where a field error's value came from, unless the error already does: the environment variable that set
/// the field (or the table it belongs to), else the file. `overridden`: (dotted field path, variable), from
/// [`apply_env`].
pub(super) fn locate(
    e: ConfigError,
    overridden: &[(String, String)],
    file: Option<&Path>,
) -> ConfigError {
    let ConfigError::Field {
        field,
        origin,
        reason,
    } = e
    else {
        return e;
    };
    if !origin.is_empty() {
        return ConfigError::Field {
            field,
            origin,
            reason,
        };
    }
    // `a.b` is set by `a.b`, inside `a` (a whole table from one variable) or, for an error about table `a`, by
    // `a.b`. Array items (`routes[0]`) cannot come from the environment.
    let within = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with(['.', '[']))
    };
    let var = overridden
        .iter()
        .find(|(key, _)| within(&field, key) || within(key, &field));
    let origin = match (var, file) {
        (Some((_, var)), _) => format!(" (from environment variable {var})"),
        (None, Some(file)) => format!(" (in {})", file.display()),
        (None, None) => String::new(),
    };
    ConfigError::Field {
        field,
        origin,
        reason,
    }
}
