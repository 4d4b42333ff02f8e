//! The operator token of the admin listener: from `admin.token_file`, else the systemd
//! credential `importlyd-admin-token` (`$CREDENTIALS_DIRECTORY`), else none (read-only).
//! Re-read whenever the config is reloaded (SIGHUP). It only ever lives in a
//! [`SecretString`] and is compared in constant time; it is never logged or rendered.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::config::Config;

pub const CREDENTIAL_NAME: &str = "importlyd-admin-token";

/// Where the token comes from, or why it cannot be read (naming the key, never the token).
pub fn load(cfg: &Config) -> Result<Option<SecretString>, String> {
    if !cfg.admin.token_file.is_empty() {
        let path = PathBuf::from(&cfg.admin.token_file);
        return read(&path)
            .map(Some)
            .map_err(|e| format!("config key `admin.token_file`: {e}"));
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(CREDENTIAL_NAME);
        if path.exists() {
            return read(&path)
                .map(Some)
                .map_err(|e| format!("systemd credential {CREDENTIAL_NAME}: {e}"));
        }
    }
    Ok(None)
}

fn read(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = SecretString::from(text.trim().to_owned());
    if token.expose_secret().is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(token)
}

/// The token in force, shared by the request handlers and the reload task.
#[derive(Clone, Default)]
pub struct SharedToken(Arc<RwLock<Option<SecretString>>>);

impl SharedToken {
    pub fn new(token: Option<SecretString>) -> SharedToken {
        SharedToken(Arc::new(RwLock::new(token)))
    }

    pub fn is_set(&self) -> bool {
        self.0.read().map(|t| t.is_some()).unwrap_or(false)
    }

    pub fn replace(&self, token: Option<SecretString>) {
        if let Ok(mut t) = self.0.write() {
            *t = token;
        }
    }

    /// Whether `given` is the token, in time independent of where they differ and of the
    /// guess's length. `false` when no token is set.
    pub fn matches(&self, given: &[u8]) -> bool {
        let Ok(t) = self.0.read() else {
            return false;
        };
        match t.as_ref() {
            Some(t) => same_secret(t.expose_secret().as_bytes(), given),
            None => false,
        }
    }
}

/// Compares a guess with the secret in time that depends only on the secret's length:
/// `subtle`'s slice compare returns at once on a length mismatch, which would tell an
/// attacker the token's length. The guess is read as if cut or padded to that length (so
/// every byte of the secret is compared), and the lengths are compared in constant time too.
fn same_secret(secret: &[u8], given: &[u8]) -> bool {
    let mut padded = Vec::with_capacity(secret.len());
    padded.extend((0..secret.len()).map(|i| given.get(i).copied().unwrap_or(0)));
    let bytes = secret.ct_eq(&padded);
    let lengths = (secret.len() as u64).ct_eq(&(given.len() as u64));
    bool::from(bytes & lengths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_compare_needs_every_byte_and_the_length() {
        assert!(same_secret(b"s3cret-token", b"s3cret-token"));
        assert!(!same_secret(b"s3cret-token", b"s3cret-tokeN"));
        assert!(!same_secret(b"s3cret-token", b"s3cret-token\0"));
        assert!(!same_secret(b"s3cret-token", b"s3cret"));
        assert!(!same_secret(b"s3cret-token", b""));
        assert!(!same_secret(b"ab", b"ab\0\0"));
    }

    #[test]
    fn matches_only_the_token() {
        let t = SharedToken::new(Some(SecretString::from("s3cret".to_owned())));
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cret!"));
        assert!(!t.matches(b""));
        assert!(!SharedToken::new(None).matches(b""));
    }
}
