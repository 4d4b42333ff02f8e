//! The row lifecycle as the scheduler drives it:
//! pending -> submitting -> running -> completed | failed, with pending again on a retry.
//! Each change is one statement or one short `BEGIN IMMEDIATE` transaction.

use super::attempts::{self, AttemptRecord};
use super::{Result, Store};
use crate::clock;

/// A row the scheduler now owns (state `submitting`).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub url: String,
    pub kind: String,
    pub options: String,
    pub attempts: i64,
}

/// What a reschedule did to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Back to `pending`, due later.
    Pending,
    /// Out of attempts: `failed`.
    Failed,
}

/// A running row, as the scheduler resumes it after a restart.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Running {
    pub id: i64,
    pub kind: String,
    pub importly_job_id: String,
    pub attempts: i64,
}

impl Store {
    /// Claims up to `n` due pending rows of `kind`, oldest due first, in one statement, so
    /// no row can be claimed twice.
    pub async fn claim_due(&self, kind: &str, n: u32, now: &str) -> Result<Vec<Claimed>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut rows = sqlx::query_as::<_, Claimed>(
            "UPDATE imports SET state = 'submitting', updated_at = ?3 \
             WHERE id IN (SELECT id FROM imports \
                          WHERE state = 'pending' AND kind = ?1 AND next_attempt_at <= ?3 \
                          ORDER BY next_attempt_at, id LIMIT ?2) \
             RETURNING id, url, kind, options, attempts",
        )
        .bind(kind)
        .bind(i64::from(n))
        .bind(now)
        .fetch_all(&self.writer)
        .await?;
        // RETURNING order is unspecified; keep oldest-due-first for the caller.
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// When the next pending row of `kind` is due, if any.
    pub async fn next_due(&self, kind: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT next_attempt_at FROM imports WHERE state = 'pending' AND kind = ? \
             ORDER BY next_attempt_at, id LIMIT 1",
        )
        .bind(kind)
        .fetch_optional(&self.reader)
        .await?)
    }

    /// The submit got a job id: the row is `running` from now on.
    pub async fn mark_running(
        &self,
        id: i64,
        job_id: &str,
        record: &AttemptRecord,
        keep: u32,
    ) -> Result<()> {
        let mut tx = self.begin_immediate().await?;
        attempts::insert(&mut tx, id, record, keep).await?;
        sqlx::query(
            "UPDATE imports SET state = 'running', importly_job_id = ?2, updated_at = ?3, \
               last_error = CASE WHEN last_error = ?4 THEN NULL ELSE last_error END \
             WHERE id = ?1",
        )
        .bind(id)
        .bind(job_id)
        .bind(clock::now_iso())
        // Waiting for preflight metadata was not a failure; a failure reason stays.
        .bind(super::MetadataRow::WAITING)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Back to `pending`, due at `due`. With `count` the failure is the row's own and
    /// counts against `max_attempts` (the row fails once it reaches it); without, it is a
    /// snooze (429, 401, 402) and `attempts` stays.
    #[allow(clippy::too_many_arguments)]
    pub async fn reschedule(
        &self,
        id: i64,
        due: &str,
        count: bool,
        max_attempts: u32,
        last_error: &str,
        record: Option<&AttemptRecord>,
        keep: u32,
    ) -> Result<Fate> {
        let mut tx = self.begin_immediate().await?;
        if let Some(r) = record {
            attempts::insert(&mut tx, id, r, keep).await?;
        }
        let now = clock::now_iso();
        let state: Option<String> = sqlx::query_scalar(
            "UPDATE imports SET \
               attempts = attempts + ?2, \
               state = CASE WHEN attempts + ?2 >= ?3 THEN 'failed' ELSE 'pending' END, \
               completed_at = CASE WHEN attempts + ?2 >= ?3 THEN ?5 ELSE NULL END, \
               next_attempt_at = ?4, last_error = ?6, updated_at = ?5 \
             WHERE id = ?1 AND state = 'submitting' \
             RETURNING state",
        )
        .bind(id)
        .bind(i64::from(count))
        .bind(i64::from(max_attempts))
        .bind(due)
        .bind(&now)
        .bind(last_error)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match state.as_deref() {
            Some("failed") => Fate::Failed,
            _ => Fate::Pending,
        })
    }

    /// Fails the row for good (400, 404, job failed), keeping whatever Importly said.
    pub async fn fail(
        &self,
        id: i64,
        reason: &str,
        result: Option<&str>,
        record: Option<&AttemptRecord>,
        keep: u32,
    ) -> Result<()> {
        let mut tx = self.begin_immediate().await?;
        if let Some(r) = record {
            attempts::insert(&mut tx, id, r, keep).await?;
        }
        let now = clock::now_iso();
        sqlx::query(
            "UPDATE imports SET state = 'failed', last_error = ?2, \
               result = coalesce(?3, result), completed_at = ?4, updated_at = ?4 \
             WHERE id = ?1 AND state IN ('submitting', 'running')",
        )
        .bind(id)
        .bind(reason)
        .bind(result)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        // A failed metadata row decides the imports waiting on it: let them go now.
        sqlx::query(super::metadata::WAKE_WAITERS)
            .bind(id)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The job completed: store what Importly reported.
    pub async fn complete(
        &self,
        id: i64,
        media_url: Option<&str>,
        credits_used: Option<i64>,
        result: &str,
    ) -> Result<()> {
        let now = clock::now_iso();
        sqlx::query(
            "UPDATE imports SET state = 'completed', media_url = ?2, credits_used = ?3, \
               result = ?4, completed_at = ?5, updated_at = ?5 \
             WHERE id = ?1 AND state = 'running'",
        )
        .bind(id)
        .bind(media_url)
        .bind(credits_used)
        .bind(result)
        .bind(&now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Rows whose jobs are in progress on Importly's side: polled, never re-submitted.
    pub async fn running(&self) -> Result<Vec<Running>> {
        Ok(sqlx::query_as::<_, Running>(
            "SELECT id, kind, importly_job_id, attempts FROM imports \
             WHERE state = 'running' AND importly_job_id IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.writer)
        .await?)
    }

    /// Start-up recovery: a row left in `submitting` was being sent when the daemon died.
    /// Its POST may have reached Importly (there is no idempotency key), so the row goes
    /// back to `pending` and the ambiguity is written to its log for the ticket.
    pub async fn recover_submitting(&self, keep: u32) -> Result<Vec<i64>> {
        let mut tx = self.begin_immediate().await?;
        let now = clock::now_iso();
        let ids: Vec<(i64, i64)> = sqlx::query_as(
            "UPDATE imports SET state = 'pending', next_attempt_at = ?1, updated_at = ?1, \
               last_error = 'daemon stopped during submit; the POST may have reached Importly' \
             WHERE state = 'submitting' RETURNING id, attempts",
        )
        .bind(&now)
        .fetch_all(&mut *tx)
        .await?;
        for (id, attempts) in &ids {
            let record = AttemptRecord {
                attempt: attempts + 1,
                method: "POST".into(),
                endpoint: "(unknown)".into(),
                started_at: now.clone(),
                finished_at: now.clone(),
                error: Some(
                    "daemon stopped while this row was being submitted; \
                     a job may exist at Importly without our record of it"
                        .into(),
                ),
                outcome: "ambiguous_submit".into(),
                ..AttemptRecord::default()
            };
            attempts::insert(&mut tx, *id, &record, keep).await?;
        }
        tx.commit().await?;
        Ok(ids.into_iter().map(|(id, _)| id).collect())
    }

    /// Gives back claimed rows whose submit never started (shutdown, pause).
    pub async fn release(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let list =
            serde_json::to_string(ids).map_err(|e| super::StoreError::Invalid(e.to_string()))?;
        sqlx::query(
            "UPDATE imports SET state = 'pending', updated_at = ?2 \
             WHERE state = 'submitting' AND id IN (SELECT value FROM json_each(?1))",
        )
        .bind(list)
        .bind(clock::now_iso())
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}
