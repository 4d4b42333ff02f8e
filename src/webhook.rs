//! The webhook receiver: Importly calls us back when a job ends, so its slot is freed at
//! once instead of at the next status poll.
//!
//! Each submit carries `webhookUrl = <public_url>/<token>`, a fresh unguessable token per
//! job ([`Hooks::issue`]). A POST whose last path segment is a live token is taken as a
//! *hint*: the scheduler polls that job's status now, and only that answer changes the row.
//! A forged or replayed delivery therefore changes nothing; the delivery's own fields are
//! never written anywhere. Unknown or spent tokens answer 404, a body that is not a JSON
//! object 400, a body over [`MAX_BODY`] 413. Status polling stays on as the safety net.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The largest delivery we read; Importly's payload is a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// Deliveries waiting for the scheduler. A full queue drops the hint (the poll still comes).
const QUEUE: usize = 1024;

/// Live tokens, shared by the scheduler (which issues and spends them) and the receiver.
#[derive(Clone, Debug)]
pub struct Hooks {
    inner: Arc<Mutex<Tokens>>,
    public_url: String,
    tx: mpsc::Sender<i64>,
    /// Refused deliveries (unknown token, bad body) since the last warning about them.
    refused: Arc<Mutex<Refused>>,
}

/// How often refused deliveries are logged: a flood of forged requests makes one line a
/// minute, with their count, not a line each.
const REFUSED_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Default)]
struct Refused {
    since_logged: u64,
    logged_at: Option<std::time::Instant>,
}

#[derive(Debug, Default)]
struct Tokens {
    by_token: HashMap<String, i64>,
    by_row: HashMap<i64, String>,
}

impl Hooks {
    /// Hooks that hand deliveries (as row ids) to the returned receiver.
    pub fn new(public_url: &str) -> (Hooks, mpsc::Receiver<i64>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let hooks = Hooks {
            inner: Arc::default(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            tx,
            refused: Arc::default(),
        };
        (hooks, rx)
    }

    /// Logs a refused delivery, at most once per [`REFUSED_LOG_EVERY`] (with how many were
    /// refused since the last line).
    fn note_refused(&self, what: &str) {
        let mut r = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        r.since_logged += 1;
        if r.logged_at.is_some_and(|t| t.elapsed() < REFUSED_LOG_EVERY) {
            return;
        }
        tracing::warn!(
            refused = r.since_logged,
            "webhook deliveries refused ({what}); at most one such line a minute"
        );
        r.since_logged = 0;
        r.logged_at = Some(std::time::Instant::now());
    }

    fn lock(&self) -> MutexGuard<'_, Tokens> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters (each operation is one insert or remove), so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh token for `row`'s next job, replacing any earlier one; returns the
    /// `webhookUrl` to send.
    pub fn issue(&self, row: i64) -> String {
        let token = new_token();
        let mut t = self.lock();
        if let Some(old) = t.by_row.insert(row, token.clone()) {
            t.by_token.remove(&old);
        }
        t.by_token.insert(token.clone(), row);
        format!("{}/{}", self.public_url, token)
    }

    /// `row`'s token is spent (its job ended, or its submit was not accepted).
    pub fn spend(&self, row: i64) {
        let mut t = self.lock();
        if let Some(token) = t.by_row.remove(&row) {
            t.by_token.remove(&token);
        }
    }

    /// How many tokens are live.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.lock().by_token.len()
    }

    fn row_of(&self, token: &str) -> Option<i64> {
        self.lock().by_token.get(token).copied()
    }
}

/// 32 random bytes as hex: unguessable, and safe in a URL path.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The receiver's routes: any path, the last segment being the token.
pub fn router(hooks: Hooks) -> Router {
    Router::new()
        .fallback(receive)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(hooks)
}

async fn receive(State(hooks): State<Hooks>, method: Method, uri: Uri, body: Bytes) -> Response {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST only\n").into_response();
    }
    let token = uri.path().rsplit('/').next().unwrap_or("");
    let Some(row) = hooks.row_of(token) else {
        // Never log the token itself: a live one is a capability.
        hooks.note_refused("unknown or spent token: 404");
        return (StatusCode::NOT_FOUND, "unknown or spent token\n").into_response();
    };
    let object = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .filter(serde_json::Value::is_object);
    let Some(payload) = object else {
        hooks.note_refused("a body that is not a JSON object: 400");
        return (StatusCode::BAD_REQUEST, "body must be a JSON object\n").into_response();
    };
    let status = payload
        .get("status")
        .and_then(serde_json::Value::as_str)
        .map(|s| s.chars().take(32).collect::<String>())
        .unwrap_or_default();
    tracing::debug!(id = row, status = %status, "webhook delivery: confirming with a status call");
    // A hint only: a full queue means a confirmation is already on its way.
    let _ = hooks.tx.try_send(row);
    (StatusCode::OK, "ok\n").into_response()
}

/// Serves the receiver on `listen` until `shutdown`; the bound address is returned at once.
pub async fn serve(
    listen: &str,
    hooks: Hooks,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = router(hooks);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "webhook listener stopped");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_deliveries_make_one_log_line_a_minute() {
        let (hooks, _rx) = Hooks::new("https://hooks.example/importly");
        for _ in 0..5 {
            hooks.note_refused("unknown or spent token: 404");
        }
        let r = hooks.refused.lock().unwrap();
        assert!(r.logged_at.is_some(), "the first is logged");
        assert_eq!(r.since_logged, 4, "the rest are counted for the next line");
    }

    #[test]
    fn tokens_are_fresh_and_spent_once() {
        let (hooks, _rx) = Hooks::new("https://hooks.example/importly/");
        let a = hooks.issue(1);
        let b = hooks.issue(1);
        assert_ne!(a, b, "a fresh token per job");
        assert!(b.starts_with("https://hooks.example/importly/"), "{b}");
        assert_eq!(hooks.live(), 1, "the earlier token of the row is spent");
        let token = b.rsplit('/').next().unwrap_or_default();
        assert_eq!(token.len(), 64);
        assert_eq!(hooks.row_of(token), Some(1));
        hooks.spend(1);
        assert_eq!(hooks.row_of(token), None);
        assert_eq!(hooks.live(), 0);
    }
}
