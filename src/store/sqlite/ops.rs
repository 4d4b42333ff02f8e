//! SQLite: ops.

use super::SqliteStore;
use crate::clock;
use crate::importly::JobKind;
use crate::store::ops::*;
use crate::store::state::OptLaxIso;
use crate::store::{ROW_COLUMNS, Result, Row, State, StoreError};
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// One row in, `None` when its `external_id` was already queued.
async fn insert_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    r: &EnqueueRow,
) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "INSERT INTO imports (url, kind, options, external_id) \
         VALUES (?, coalesce(?, 'import'), coalesce(?, '{}'), ?) \
         ON CONFLICT (external_id) DO NOTHING RETURNING id",
    )
    .bind(&r.url)
    .bind(r.kind)
    .bind(&r.options)
    .bind(&r.external_id)
    .fetch_optional(&mut **tx)
    .await?)
}

impl SqliteStore {
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
            let id = insert_one(&mut tx, r).await.map_err(|e| match e {
                StoreError::Sql(sqlx::Error::Database(d)) if d.message().contains("constraint") => {
                    StoreError::Invalid(format!("row {} ({}): {}", i + 1, r.url, d.message()))
                }
                e => e,
            })?;
            ids.extend(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Inserts one chunk of a file's rows in one transaction, skipping the bad ones: a
    /// transaction per chunk keeps the write lock short however long the file, and a bad line
    /// costs only itself. Clean chunks go in as one statement; a chunk with a bad row is
    /// inserted again row by row (in the same transaction: a failed statement undoes only
    /// itself) to name the rows at fault.
    pub async fn enqueue_chunk(&self, rows: &[EnqueueRow]) -> Result<ChunkOutcome> {
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        let batch: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!([r.url, r.kind, r.options, r.external_id]))
            .collect();
        let batch =
            serde_json::to_string(&batch).map_err(|e| StoreError::Invalid(e.to_string()))?;
        // `WHERE true`: SQLite reads `ON CONFLICT` after a bare `FROM` as a join constraint.
        let all: std::result::Result<Vec<i64>, StoreError> = sqlx::query_scalar(
            "INSERT INTO imports (url, kind, options, external_id) \
             SELECT value ->> 0, coalesce(value ->> 1, 'import'), coalesce(value ->> 2, '{}'), \
                    value ->> 3 \
             FROM json_each(?) WHERE true \
             ON CONFLICT (external_id) DO NOTHING RETURNING id",
        )
        .bind(&batch)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from);
        let mut out = ChunkOutcome::default();
        match all {
            Ok(mut ids) => {
                ids.sort_unstable();
                out.duplicates = rows.len() - ids.len();
                out.inserted = ids;
            }
            Err(e) if e.is_constraint() => {
                for (i, r) in rows.iter().enumerate() {
                    match insert_one(&mut tx, r).await {
                        Ok(Some(id)) => out.inserted.push(id),
                        Ok(None) => out.duplicates += 1,
                        Err(StoreError::Sql(sqlx::Error::Database(d)))
                            if d.message().contains("constraint") =>
                        {
                            out.bad.push((i, d.message().to_owned()));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The ids of the rows with these external ids (the rows a file named, inserted now or
    /// before).
    pub async fn ids_by_external_id(&self, external_ids: &[String]) -> Result<Vec<i64>> {
        let list =
            serde_json::to_string(external_ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(sqlx::query_scalar(
            "SELECT id FROM imports WHERE external_id IN (SELECT value FROM json_each(?)) \
             ORDER BY id",
        )
        .bind(list)
        .fetch_all(&self.reader)
        .await?)
    }

    /// The rows `export` writes, oldest first, as a stream: rows are read as they are
    /// written out, so memory stays bounded however many there are.
    pub fn export(&self, f: &ListFilter) -> BoxStream<'_, Result<ExportRow>> {
        sqlx::query_as::<_, ExportRow>(
            "SELECT id, external_id, url, kind, state, importly_job_id, media_url, \
                    credits_used, completed_at, last_error \
             FROM imports \
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR updated_at >= ?2) \
             ORDER BY id LIMIT ?3",
        )
        .bind(f.state)
        .bind(f.since.map(clock::iso))
        .bind(f.limit.map(i64::from).unwrap_or(-1))
        .fetch(&self.reader)
        .map_err(StoreError::from)
        .boxed()
    }

    /// The rows `wait` follows: those named by `ids` (all when `None`), created at or after
    /// `since`, whose external_id starts with `prefix`; with `unfinished`, only those not
    /// yet in a terminal state.
    pub async fn select_ids(
        &self,
        ids: Option<&[i64]>,
        since: Option<SystemTime>,
        prefix: Option<&str>,
        unfinished: bool,
    ) -> Result<Vec<i64>> {
        let list = ids
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(sqlx::query_scalar(
            "SELECT id FROM imports \
             WHERE (?1 IS NULL OR id IN (SELECT value FROM json_each(?1))) \
               AND (?2 IS NULL OR created_at >= ?2) \
               AND (?3 IS NULL OR substr(external_id, 1, length(?3)) = ?3) \
               AND (NOT ?4 OR state NOT IN ('completed', 'failed', 'cancelled')) \
             ORDER BY id",
        )
        .bind(list)
        .bind(since.map(clock::iso))
        .bind(prefix)
        .bind(unfinished)
        .fetch_all(&self.reader)
        .await?)
    }

    /// How far the rows `ids` are: the number per state and the latest `updated_at` among
    /// them (so a change that keeps every state, a retry's new attempt, still shows).
    pub async fn progress_of(&self, ids: &[i64]) -> Result<RowsProgress> {
        let list = serde_json::to_string(ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
        // The times of `imports` are read leniently (`state::LaxIso`).
        let rows: Vec<(State, i64, OptLaxIso)> = sqlx::query_as(
            "SELECT state, count(*), max(updated_at) FROM imports \
             WHERE id IN (SELECT value FROM json_each(?)) GROUP BY state",
        )
        .bind(list)
        .fetch_all(&self.reader)
        .await?;
        let mut p = RowsProgress::default();
        for (state, n, updated) in rows {
            p.counts.insert(state, n);
            p.last_update = p.last_update.max(updated.0);
        }
        Ok(p)
    }

    /// The first `limit` rows among `ids` that ended failed or cancelled.
    pub async fn unsuccessful_among(&self, ids: &[i64], limit: u32) -> Result<Vec<Row>> {
        let list = serde_json::to_string(ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM imports \
             WHERE id IN (SELECT value FROM json_each(?)) AND state IN ('failed', 'cancelled') \
             ORDER BY id LIMIT ?"
        )))
        .bind(list)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?)
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
        .bind(f.state)
        .bind(f.since.map(clock::iso))
        .bind(f.limit.map(i64::from).unwrap_or(-1))
        .fetch_all(&self.reader)
        .await?)
    }

    pub async fn status_counts(&self) -> Result<StatusCounts> {
        let mut counts: BTreeMap<State, i64> = State::ALL.iter().map(|s| (*s, 0)).collect();
        // From the totals the triggers of migration 0006 keep: a few rows, at any table size.
        let rows: Vec<(State, i64, i64)> =
            sqlx::query_as("SELECT state, sum(n), sum(credits) FROM imports_counts GROUP BY state")
                .fetch_all(&self.reader)
                .await?;
        let mut credits_used = 0;
        for (state, n, credits) in rows {
            if state == State::Completed {
                credits_used = credits;
            }
            counts.insert(state, n);
        }
        // Partial indexes (0006) make both a seek. INDEXED BY: left to itself the planner
        // takes `imports_by_state_id` and reads every pending row (0.2 s at 200,000).
        let oldest_pending = sqlx::query_scalar::<_, OptLaxIso>(
            "SELECT min(created_at) FROM imports INDEXED BY imports_pending_by_created \
             WHERE state = 'pending'",
        )
        .fetch_one(&self.reader)
        .await?
        .into();
        let last_error = sqlx::query_as::<_, LastError>(
            "SELECT id, updated_at, last_error FROM imports WHERE last_error IS NOT NULL \
             ORDER BY updated_at DESC LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        Ok(StatusCounts {
            counts,
            oldest_pending,
            last_error,
            credits_used,
        })
    }

    /// Counts `imports_counts` afresh from the table, in one short transaction. The
    /// triggers keep it right for every INSERT, UPDATE and DELETE, but an outside program's
    /// `INSERT OR REPLACE` deletes a row without firing delete triggers (SQLite fires them
    /// for REPLACE only with `recursive_triggers` on); `importlyd migrate` repairs that.
    pub async fn recount(&self) -> Result<()> {
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        sqlx::query("DELETE FROM imports_counts")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO imports_counts (state, kind, n, credits) \
             SELECT state, kind, count(*), coalesce(sum(credits_used), 0) \
             FROM imports GROUP BY state, kind",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The queue as the drain estimate sees it. The counts read `imports_counts` (kept by
    /// triggers); the mean reads the latest completed rows only, so it costs the same at any
    /// table size.
    pub async fn queue_shape(&self) -> Result<QueueShape> {
        let mut shape = QueueShape::default();
        let rows: Vec<(JobKind, State, i64)> = sqlx::query_as(
            "SELECT kind, state, n FROM imports_counts \
             WHERE state IN ('pending', 'submitting', 'running') AND n > 0",
        )
        .fetch_all(&self.reader)
        .await?;
        for (kind, state, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            let into = if state == State::Running {
                &mut shape.running
            } else {
                &mut shape.ahead
            };
            *into.entry(kind).or_default() += n;
        }
        for kind in [JobKind::Import, JobKind::Metadata] {
            let mean: Option<f64> = sqlx::query_scalar(
                "SELECT avg((julianday(i.completed_at) - julianday(a.finished_at)) * 86400000.0) \
                 FROM (SELECT id, completed_at FROM imports \
                       WHERE state = 'completed' AND kind = ? AND completed_at IS NOT NULL \
                       ORDER BY updated_at DESC LIMIT ?) AS i \
                 JOIN import_attempts AS a ON a.import_id = i.id AND a.outcome = 'accepted' \
                 WHERE a.finished_at <= i.completed_at",
            )
            .bind(kind)
            .bind(MEAN_JOB_SAMPLE)
            .fetch_one(&self.reader)
            .await?;
            if let Some(m) = mean.filter(|m| m.is_finite() && *m >= 0.0) {
                shape.mean_job_ms.insert(kind, m);
            }
        }
        Ok(shape)
    }

    /// Failed rows back to `pending` with a fresh attempt count; their history stays (in
    /// `import_attempts`, which keeps every earlier job id and final answer, so the old
    /// job's id and `result` are cleared from the row itself).
    /// With `ids` empty and `all_failed`, every failed row (updated since `since`).
    pub async fn retry(
        &self,
        ids: &[i64],
        all_failed: bool,
        since: Option<SystemTime>,
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
        .bind(since.map(clock::iso))
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
    pub async fn purge(&self, before: SystemTime, completed_only: bool) -> Result<u64> {
        let before = clock::iso(before);
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
            .bind(&before)
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
    /// Deletes audit entries older than `before`, so the audit log does not grow for ever
    /// (`purge --older-than` keeps the same span of history for both).
    pub async fn purge_audit(&self, before: SystemTime) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM audit WHERE at < ?")
            .bind(clock::iso(before))
            .execute(&mut *self.writer().await?)
            .await?
            .rows_affected())
    }

    pub async fn purge_metadata_cache(&self, before: SystemTime) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM metadata_cache WHERE fetched_at < ?")
                .bind(clock::iso(before))
                .execute(&mut *self.writer().await?)
                .await?
                .rows_affected(),
        )
    }
}
