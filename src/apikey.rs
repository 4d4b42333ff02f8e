//! Where the Importly API key comes from. First found wins: `IMPORTLY_API_KEY`, the file in
//! `api.key_file`, `$CREDENTIALS_DIRECTORY/importly-api-key` (systemd `LoadCredential=`).
//!
//! The key only ever lives in a [`SecretString`], whose `Debug` prints `[REDACTED]`.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;

pub const ENV_VAR: &str = "IMPORTLY_API_KEY";
pub const CREDENTIAL_NAME: &str = "importly-api-key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no API key: set {ENV_VAR}, api.key_file, or a systemd credential named {CREDENTIAL_NAME}"
    )]
    Missing,
    #[error("config key `api.key_file`: cannot read {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("API key from {source_name} is empty")]
    Empty { source_name: String },
}

/// Where the key in force came from, for the log (never the key itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Env,
    KeyFile(PathBuf),
    Credential(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env => write!(f, "environment variable {ENV_VAR}"),
            KeySource::KeyFile(p) => write!(f, "api.key_file {}", p.display()),
            KeySource::Credential(p) => write!(f, "systemd credential {}", p.display()),
        }
    }
}

/// Loads the key from the first source that has one.
pub fn load(cfg: &Config) -> Result<SecretString, KeyError> {
    load_with_source(cfg).map(|(key, _)| key)
}

/// [`load`], also saying which source the key came from.
pub fn load_with_source(cfg: &Config) -> Result<(SecretString, KeySource), KeyError> {
    if let Ok(v) = std::env::var(ENV_VAR) {
        return Ok((non_empty(v, ENV_VAR)?, KeySource::Env));
    }
    if !cfg.api.key_file.is_empty() {
        let path = PathBuf::from(&cfg.api.key_file);
        return Ok((read_file(&path)?, KeySource::KeyFile(path)));
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(CREDENTIAL_NAME);
        if path.exists() {
            return Ok((read_file(&path)?, KeySource::Credential(path)));
        }
    }
    Err(KeyError::Missing)
}

fn read_file(path: &Path) -> Result<SecretString, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeyError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    non_empty(text, &path.display().to_string())
}

/// Trims surrounding whitespace (key files end with a newline) and refuses an empty key.
fn non_empty(raw: String, source_name: &str) -> Result<SecretString, KeyError> {
    let key = SecretString::from(raw.trim().to_owned());
    if key.expose_secret().is_empty() {
        return Err(KeyError::Empty {
            source_name: source_name.into(),
        });
    }
    Ok(key)
}
