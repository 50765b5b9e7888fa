//! Why a configuration was rejected: `main` prints it and exits 64.

use std::path::PathBuf;

/// Why a configuration was rejected; `main` prints it and exits 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file{file} is not valid TOML")]
    Syntax {
        /// ` <path>`, or empty for text that came from no file.
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("config field `{field}`{origin}: {reason}")]
    Field {
        field: String,
        origin: String,
        reason: String,
    },
}

impl ConfigError {
    /// A bad value of `field` (a dotted path such as `store.ca_file`), for checks made after loading: building the
    /// runtime objects at startup ([`crate::config`]'s plain data is turned into clients and verifiers there).
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Field {
            field: field.into(),
            origin: String::new(),
            reason: reason.into(),
        }
    }
}

/// [`ConfigError::field`], short for the validators.
pub(super) fn field(name: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::field(name, reason)
}
