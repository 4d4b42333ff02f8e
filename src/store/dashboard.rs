//! What the dashboard reads that the operator commands do not: completions per minute, the
//! latest failures, failures grouped by reason. Each is answered from the
//! `imports_by_state (state, updated_at)` index: a range of one state's rows, never the whole
//! table.

use serde::Serialize;

use super::{ROW_COLUMNS, Result, Row, Store};

/// Failed rows sharing one `last_error`.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct FailureGroup {
    /// `None` for failed rows without a recorded reason.
    pub reason: Option<String>,
    pub rows: i64,
    /// The group's lowest id, as an example.
    pub first_id: i64,
    pub last_at: String,
}

impl Store {
    /// `(minute, completions)` for rows completed at or after `since` (ISO text), oldest
    /// minute first; the minute is the first 16 characters of the ISO time
    /// (`2026-12-07T01:32`). Minutes without completions are absent. A completed row's
    /// `updated_at` is when it completed (only `retry` and `purge` touch it later).
    pub async fn completions_per_minute(&self, since: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT substr(updated_at, 1, 16) AS minute, count(*) FROM imports \
             WHERE state = 'completed' AND updated_at >= ?1 GROUP BY minute ORDER BY minute",
        )
        .bind(since)
        .fetch_all(&self.reader)
        .await?)
    }

    /// The `limit` most recently failed rows, newest first.
    pub async fn latest_failed(&self, limit: u32) -> Result<Vec<Row>> {
        Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM imports WHERE state = 'failed' \
             ORDER BY updated_at DESC, id DESC LIMIT ?1"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?)
    }

    /// Failed rows grouped by `last_error`, the largest `limit` groups first.
    pub async fn failure_groups(&self, limit: u32) -> Result<Vec<FailureGroup>> {
        Ok(sqlx::query_as::<_, FailureGroup>(
            "SELECT last_error AS reason, count(*) AS rows, min(id) AS first_id, \
                    max(updated_at) AS last_at \
             FROM imports WHERE state = 'failed' GROUP BY last_error \
             ORDER BY rows DESC, last_at DESC LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?)
    }
}
