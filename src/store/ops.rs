//! What the operator commands read and write. All of it is safe while the daemon runs:
//! reads go through the reader pool, writes are single short statements that only touch
//! rows the daemon is not working on (pending, failed, finished).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ROW_COLUMNS, Result, Row, Store, StoreError};
use crate::clock;

/// One row to insert.
#[derive(Clone, Debug, Default)]
pub struct EnqueueRow {
    pub url: String,
    pub kind: Option<String>,
    pub options: Option<String>,
    pub external_id: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub state: Option<String>,
    /// ISO time: rows updated at or after it.
    pub since: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusCounts {
    pub counts: BTreeMap<String, i64>,
    pub oldest_pending: Option<String>,
    pub last_error: Option<LastError>,
    pub credits_used: i64,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct LastError {
    pub id: i64,
    pub updated_at: String,
    pub last_error: String,
}

/// Every state a row can be in (the `state_must_be_known` CHECK constraint).
pub const STATES: [&str; 6] = [
    "pending",
    "submitting",
    "running",
    "completed",
    "failed",
    "cancelled",
];

impl Store {
    /// Inserts rows in one transaction; a duplicate `external_id` is skipped, so feeding
    /// the same file twice adds nothing. Returns the ids of the rows inserted; a bad row
    /// rolls the whole batch back and names its line.
    ///
    /// `ON CONFLICT (external_id) DO NOTHING`, not `INSERT OR IGNORE`: SQLite's OR IGNORE
    /// also swallows CHECK failures, which would drop a bad URL without a word.
    pub async fn enqueue(&self, rows: &[EnqueueRow]) -> Result<Vec<i64>> {
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        let mut ids = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO imports (url, kind, options, external_id) \
                 VALUES (?, coalesce(?, 'import'), coalesce(?, '{}'), ?) \
                 ON CONFLICT (external_id) DO NOTHING RETURNING id",
            )
            .bind(&r.url)
            .bind(&r.kind)
            .bind(&r.options)
            .bind(&r.external_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.message().contains("constraint") => {
                    StoreError::Invalid(format!("row {} ({}): {}", i + 1, r.url, d.message()))
                }
                e => StoreError::Sql(e),
            })?;
            ids.extend(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn row(&self, id: i64) -> Result<Option<Row>> {
        Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM imports WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?)
    }

    pub async fn list(&self, f: &ListFilter) -> Result<Vec<Row>> {
        Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM imports \
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR updated_at >= ?2) \
             ORDER BY id LIMIT ?3"
        )))
        .bind(&f.state)
        .bind(&f.since)
        .bind(f.limit.map(i64::from).unwrap_or(-1))
        .fetch_all(&self.reader)
        .await?)
    }

    pub async fn status_counts(&self) -> Result<StatusCounts> {
        let mut counts: BTreeMap<String, i64> = STATES.iter().map(|s| (s.to_string(), 0)).collect();
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM imports GROUP BY state")
                .fetch_all(&self.reader)
                .await?;
        counts.extend(rows);
        let oldest_pending: Option<String> =
            sqlx::query_scalar("SELECT min(created_at) FROM imports WHERE state = 'pending'")
                .fetch_one(&self.reader)
                .await?;
        let last_error = sqlx::query_as::<_, LastError>(
            "SELECT id, updated_at, last_error FROM imports WHERE last_error IS NOT NULL \
             ORDER BY updated_at DESC LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        let credits_used: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(credits_used), 0) FROM imports WHERE state = 'completed'",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(StatusCounts {
            counts,
            oldest_pending,
            last_error,
            credits_used,
        })
    }

    /// Failed rows back to `pending` with a fresh attempt count; their history stays (in
    /// `import_attempts`, which keeps every earlier job id and final answer, so the old
    /// job's id and `result` are cleared from the row itself).
    /// With `ids` empty and `all_failed`, every failed row (updated since `since`).
    pub async fn retry(
        &self,
        ids: &[i64],
        all_failed: bool,
        since: Option<&str>,
    ) -> Result<Vec<i64>> {
        let list = serde_json::to_string(ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let now = clock::now_iso();
        let mut done: Vec<i64> = sqlx::query_scalar(
            "UPDATE imports SET state = 'pending', attempts = 0, next_attempt_at = ?3, \
               importly_job_id = NULL, result = NULL, completed_at = NULL, \
               updated_at = ?3 \
             WHERE state = 'failed' \
               AND (id IN (SELECT value FROM json_each(?1)) \
                    OR (?2 AND (?4 IS NULL OR updated_at >= ?4))) \
             RETURNING id",
        )
        .bind(list)
        .bind(all_failed)
        .bind(&now)
        .bind(since)
        .fetch_all(&mut *self.writer().await?)
        .await?;
        done.sort_unstable();
        Ok(done)
    }

    /// Cancels pending rows. Returns the ids cancelled; the caller reports the others.
    pub async fn cancel(&self, ids: &[i64]) -> Result<Vec<i64>> {
        let list = serde_json::to_string(ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let now = clock::now_iso();
        let mut done: Vec<i64> = sqlx::query_scalar(
            "UPDATE imports SET state = 'cancelled', completed_at = ?2, updated_at = ?2, \
               last_error = coalesce(last_error, 'cancelled by operator') \
             WHERE state = 'pending' AND id IN (SELECT value FROM json_each(?1)) RETURNING id",
        )
        .bind(list)
        .bind(&now)
        .fetch_all(&mut *self.writer().await?)
        .await?;
        done.sort_unstable();
        Ok(done)
    }

    /// Deletes finished rows (and their logs) last changed before `before`. With
    /// `completed_only`, only `completed` rows; otherwise every terminal state. Deletes in
    /// small batches so no single write holds the lock for long.
    ///
    /// The external_ids of the rows deleted go to `purged_external_ids` in the same
    /// transaction, where a trigger makes a later INSERT with one of them a no-op: feeding
    /// the same file again must not import (and pay for) them twice.
    pub async fn purge(&self, before: &str, completed_only: bool) -> Result<u64> {
        const BATCH: usize = 1000;
        let mut total = 0;
        loop {
            let mut writer = self.writer().await?;
            let mut tx = self.begin_immediate(&mut writer).await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM imports \
                 WHERE updated_at < ?1 AND (state = 'completed' OR (NOT ?2 AND \
                       state IN ('failed', 'cancelled'))) LIMIT ?3",
            )
            .bind(before)
            .bind(completed_only)
            .bind(BATCH as i64)
            .fetch_all(&mut *tx)
            .await?;
            let list =
                serde_json::to_string(&ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
            sqlx::query(
                "INSERT INTO purged_external_ids (external_id, purged_at) \
                 SELECT external_id, ?2 FROM imports \
                 WHERE id IN (SELECT value FROM json_each(?1)) AND external_id IS NOT NULL \
                 ON CONFLICT (external_id) DO NOTHING",
            )
            .bind(&list)
            .bind(clock::now_iso())
            .execute(&mut *tx)
            .await?;
            let n =
                sqlx::query("DELETE FROM imports WHERE id IN (SELECT value FROM json_each(?1))")
                    .bind(&list)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            tx.commit().await?;
            total += n;
            if ids.len() < BATCH {
                return Ok(total);
            }
        }
    }

    /// Deletes metadata cache entries fetched before `before`: `purge` keeps the cache from
    /// growing without bound (entries past `metadata.cache_ttl` are never reused anyway).
    pub async fn purge_metadata_cache(&self, before: &str) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM metadata_cache WHERE fetched_at < ?")
                .bind(before)
                .execute(&mut *self.writer().await?)
                .await?
                .rows_affected(),
        )
    }
}
