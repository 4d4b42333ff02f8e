//! The failure log: one `import_attempts` row per HTTP exchange that went wrong, plus the
//! submit that got a job id. It is what `importlyd ticket` prints.

use serde::Serialize;
use sqlx::SqliteConnection;

use std::time::{SystemTime, UNIX_EPOCH};

use super::Result;
use super::state::{self, Iso};
use crate::clock;

/// One exchange, ready to store. Plain data: the scheduler fills it from the client's
/// exchange, so the store need not know HTTP. (Serialized for the group commit, whose SQL
/// reads these field names.)
#[derive(Clone, Debug, Serialize)]
pub struct AttemptRecord {
    pub attempt: i64,
    pub method: String,
    pub endpoint: String,
    pub request_body: Option<String>,
    #[serde(serialize_with = "state::iso")]
    pub started_at: SystemTime,
    #[serde(serialize_with = "state::iso")]
    pub finished_at: SystemTime,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub outcome: String,
    /// JSON of the rate-limit headers; `None` when there were none.
    pub rate_limit: Option<String>,
    pub response_body: Option<String>,
    pub body_truncated: bool,
    pub job_id: Option<String>,
}

/// Blank, both times the epoch: for `..AttemptRecord::default()` (`SystemTime` has no
/// default).
impl Default for AttemptRecord {
    fn default() -> AttemptRecord {
        AttemptRecord {
            attempt: 0,
            method: String::new(),
            endpoint: String::new(),
            request_body: None,
            started_at: UNIX_EPOCH,
            finished_at: UNIX_EPOCH,
            http_status: None,
            error: None,
            outcome: String::new(),
            rate_limit: None,
            response_body: None,
            body_truncated: false,
            job_id: None,
        }
    }
}

/// A stored attempt, as tickets and `show` read it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct StoredAttempt {
    pub id: i64,
    pub import_id: i64,
    pub attempt: i64,
    pub method: String,
    pub endpoint: String,
    pub request_body: Option<String>,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "Iso")]
    pub started_at: SystemTime,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "Iso")]
    pub finished_at: SystemTime,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub outcome: String,
    pub rate_limit: Option<String>,
    pub response_body: Option<String>,
    pub body_truncated: bool,
    pub job_id: Option<String>,
    pub daemon_version: String,
}

/// Whether a single-row write found its row. Its owner may delete a row at any time, even
/// while the row's request is in flight: then there is nothing left to record, which is
/// not an error (a foreign-key failure retried forever would wedge the scheduler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Written {
    /// The row was written.
    Row,
    /// Nothing was written, and the caller drops the row as a deleted one: it was deleted,
    /// or (PostgreSQL's fencing) it is no longer this daemon's (another daemon adopted it,
    /// lease expiry handed it back), or it is no longer in the state the write expects (as
    /// `complete_from_cache`'s `submitting`).
    Gone,
}

/// Inserts one record and trims the row's log to `keep` failure records. Accepted submits
/// are kept whatever the count: they are the proof of which job a row started. A row
/// deleted meanwhile gets no record ([`Written::Gone`]) instead of a foreign-key error.
pub(super) async fn insert(
    conn: &mut SqliteConnection,
    import_id: i64,
    r: &AttemptRecord,
    keep: u32,
) -> Result<Written> {
    let inserted = sqlx::query(
        "INSERT INTO import_attempts (import_id, attempt, method, endpoint, request_body, \
         started_at, finished_at, http_status, error, outcome, rate_limit, response_body, \
         body_truncated, job_id, daemon_version) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15 \
         WHERE EXISTS (SELECT 1 FROM imports WHERE id = ?1)",
    )
    .bind(import_id)
    .bind(r.attempt)
    .bind(&r.method)
    .bind(&r.endpoint)
    .bind(&r.request_body)
    .bind(clock::iso(r.started_at))
    .bind(clock::iso(r.finished_at))
    .bind(r.http_status)
    .bind(&r.error)
    .bind(&r.outcome)
    .bind(&r.rate_limit)
    .bind(&r.response_body)
    .bind(r.body_truncated)
    .bind(&r.job_id)
    .bind(env!("CARGO_PKG_VERSION"))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(Written::Gone);
    }
    sqlx::query(
        "DELETE FROM import_attempts WHERE import_id = ?1 AND outcome <> 'accepted' \
         AND id < (SELECT min(id) FROM (SELECT id FROM import_attempts \
                   WHERE import_id = ?1 AND outcome <> 'accepted' \
                   ORDER BY id DESC LIMIT CAST(?2 AS INTEGER)))",
    )
    .bind(import_id)
    .bind(i64::from(keep))
    .execute(&mut *conn)
    .await?;
    Ok(Written::Row)
}

/// Whether row `id` still exists (inside a write transaction: nobody can delete it until
/// the transaction ends).
pub(super) async fn exists(conn: &mut SqliteConnection, id: i64) -> Result<Written> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM imports WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(if found.is_some() {
        Written::Row
    } else {
        Written::Gone
    })
}
