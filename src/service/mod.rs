//! The operator verbs, one layer for both faces: the command line renders what these return
//! as text or `--json`, the admin API (`crate::admin`) as JSON, the dashboard as HTML.
//! Nothing here prints. Errors tell a caller's mistake ([`ServiceError::BadRequest`],
//! [`ServiceError::NotFound`]) from a fault ([`ServiceError::Store`]); every action is written
//! to the audit table with its [`Source`].

mod actions;
mod status;

pub use actions::{
    ActionReport, BULK_RETRY_CAP, BulkReport, PurgeReport, ResumeReport, Skipped, bulk_retry,
    cancel, purge, resume, retry,
};
pub use status::{StatusView, budget_views, drain_estimate, status};

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::store::{
    AuditEntry, FailureGroup, ListFilter, MinuteCount, PageFilter, Row, State, Store, StoreError,
    StoredAttempt,
};

/// The largest page of rows one call returns.
pub const MAX_PAGE: u32 = 1000;
/// A page's size when the caller names none.
pub const DEFAULT_PAGE: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller asked for something malformed (HTTP 400, exit 2).
    #[error("{0}")]
    BadRequest(String),
    /// The caller named something that does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The database failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who asked for an action, as the audit table records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Api,
    Cli,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Cli => "cli",
        }
    }
}

pub type Result<T> = std::result::Result<T, ServiceError>;

/// A row as JSON, with `options` and `result` as objects rather than strings (the shape of
/// `list --json`, `show --json` and the API).
pub fn row_json(r: &Row) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    for k in ["options", "result"] {
        if let Some(s) = v.get(k).and_then(Value::as_str)
            && let Ok(parsed) = serde_json::from_str::<Value>(s)
        {
            v[k] = parsed;
        }
    }
    v
}

/// `state` (a caller's text) as a state; an unknown one is a bad request naming the known
/// ones.
pub fn parse_state(state: Option<&str>) -> Result<Option<State>> {
    state
        .map(|s| s.parse::<State>())
        .transpose()
        .map_err(|e| ServiceError::BadRequest(e.to_string()))
}

/// The rows of `list`, as the command line filters them.
pub async fn list(store: &Store, filter: &ListFilter) -> Result<Vec<Row>> {
    Ok(store.list(filter).await?)
}

/// One page of rows and the cursor of the next (`None` on the last page).
#[derive(Clone, Debug, Serialize)]
pub struct RowPage {
    pub rows: Vec<Value>,
    /// Pass as `after` for the next page.
    pub next_after: Option<i64>,
}

/// A page of rows by state and search text, from the cursor `after` (keyset on id).
pub async fn rows(
    store: &Store,
    state: Option<String>,
    q: Option<String>,
    limit: Option<u32>,
    after: Option<i64>,
) -> Result<RowPage> {
    let state = parse_state(state.as_deref())?;
    let limit = page_limit(limit)?;
    let rows = store
        .page(&PageFilter {
            state,
            q,
            after,
            limit,
        })
        .await?;
    let next_after = if rows.len() == limit as usize {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(RowPage {
        rows: rows.iter().map(row_json).collect(),
        next_after,
    })
}

/// A row with its logged exchanges, oldest first (`show`).
#[derive(Clone, Debug)]
pub struct RowDetail {
    pub row: Row,
    pub attempts: Vec<StoredAttempt>,
}

impl RowDetail {
    /// The shape of `show --json`.
    pub fn to_json(&self) -> Value {
        json!({"row": row_json(&self.row), "attempts": self.attempts})
    }
}

pub async fn show(store: &Store, id: i64) -> Result<RowDetail> {
    let Some(row) = store.row(id).await? else {
        return Err(ServiceError::NotFound(format!("no row with id {id}")));
    };
    let attempts = store.attempts(id).await?;
    Ok(RowDetail { row, attempts })
}

/// The support ticket of one row, format-independent (`ticket --format json`).
pub async fn ticket(store: &Store, cfg: &Config, id: i64) -> Result<Value> {
    let d = show(store, id).await?;
    Ok(crate::cli::ticket::build(&d.row, &d.attempts, cfg))
}

/// Failed rows grouped by their error, the biggest group first (retry a group with
/// [`bulk_retry`] and its reason as `q`).
pub async fn failure_groups(store: &Store, limit: Option<u32>) -> Result<Vec<FailureGroup>> {
    Ok(store.failure_groups(page_limit(limit)?).await?)
}

/// Rows completed and failed per minute over the last hour, oldest minute first.
pub async fn throughput(store: &Store, now: SystemTime) -> Result<Vec<MinuteCount>> {
    // From the start of the minute an hour ago, as the per-minute counts are cut.
    let since = now
        .checked_sub(Duration::from_secs(3600))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let since = crate::clock::from_unix_ms(crate::clock::unix_ms(since) / 60_000 * 60_000);
    Ok(store.finished_per_minute(since).await?)
}

fn page_limit(limit: Option<u32>) -> Result<u32> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ServiceError::BadRequest(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    Ok(limit)
}

/// The latest operator actions, newest first.
pub async fn audit(store: &Store, limit: Option<u32>) -> Result<Vec<AuditEntry>> {
    Ok(store.audit_log(page_limit(limit)?).await?)
}
