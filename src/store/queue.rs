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

/// The claim statement for one kind. `?1` is the batch size, `?2` the time. The CAST keeps
/// `LIMIT` from being a bare parameter: SQLite plans a bare one by its bound value and so
/// re-prepares the statement whenever the batch size changes.
macro_rules! claim_sql {
    ($kind:literal) => {
        concat!(
            "UPDATE imports SET state = 'submitting', updated_at = ?2 \
             WHERE id IN (SELECT id FROM imports \
                          WHERE state = 'pending' AND kind = '",
            $kind,
            "' AND next_attempt_at <= ?2 \
                          ORDER BY next_attempt_at, id LIMIT CAST(?1 AS INTEGER)) \
             RETURNING id, url, kind, options, attempts"
        )
    };
}

macro_rules! next_due_sql {
    ($kind:literal) => {
        concat!(
            "SELECT next_attempt_at FROM imports WHERE state = 'pending' AND kind = '",
            $kind,
            "' ORDER BY next_attempt_at, id LIMIT 1"
        )
    };
}

/// Picks the statement written for `kind`. A bound `kind = ?` would make SQLite re-prepare
/// the statement on every run: the partial index `imports_metadata_by_url` (`WHERE kind =
/// 'metadata'`) makes the plan depend on the bound value, so each new binding expires the
/// prepared statement (profiling showed a tenth of the daemon's CPU in re-parsing).
fn by_kind(kind: &str, import: &'static str, metadata: &'static str) -> Result<&'static str> {
    match kind {
        "import" => Ok(import),
        "metadata" => Ok(metadata),
        other => Err(super::StoreError::Invalid(format!(
            "unknown job kind {other:?}"
        ))),
    }
}

impl Store {
    /// Claims up to `n` due pending rows of `kind`, oldest due first, in one statement, so
    /// no row can be claimed twice.
    pub async fn claim_due(&self, kind: &str, n: u32, now: &str) -> Result<Vec<Claimed>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        // The kind is written into the SQL, not bound (see `by_kind`).
        let sql = by_kind(kind, claim_sql!("import"), claim_sql!("metadata"))?;
        let mut rows = sqlx::query_as::<_, Claimed>(sql)
            .bind(i64::from(n))
            .bind(now)
            .fetch_all(&mut *self.writer().await?)
            .await?;
        // RETURNING order is unspecified; keep oldest-due-first for the caller.
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// When the next pending row of `kind` is due, if any.
    pub async fn next_due(&self, kind: &str) -> Result<Option<String>> {
        let sql = by_kind(kind, next_due_sql!("import"), next_due_sql!("metadata"))?;
        Ok(sqlx::query_scalar::<_, String>(sql)
            .fetch_optional(&self.reader)
            .await?)
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
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
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
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
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

    /// Rows whose jobs are in progress on Importly's side: polled, never re-submitted.
    pub async fn running(&self) -> Result<Vec<Running>> {
        Ok(sqlx::query_as::<_, Running>(
            "SELECT id, kind, importly_job_id, attempts FROM imports \
             WHERE state = 'running' AND importly_job_id IS NOT NULL ORDER BY id",
        )
        .fetch_all(&mut *self.writer().await?)
        .await?)
    }

    /// Start-up recovery: a row left in `submitting` was being sent when the daemon died.
    /// Its POST may have reached Importly (there is no idempotency key), so the row goes
    /// back to `pending` and the ambiguity is written to its log for the ticket.
    /// `endpoint` names the endpoint a row of a kind is submitted to, for the record.
    pub async fn recover_submitting(
        &self,
        keep: u32,
        endpoint: fn(&str) -> &'static str,
    ) -> Result<Vec<i64>> {
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        let now = clock::now_iso();
        let ids: Vec<(i64, i64, String)> = sqlx::query_as(
            "UPDATE imports SET state = 'pending', next_attempt_at = ?1, updated_at = ?1, \
               last_error = 'daemon stopped during submit; the POST may have reached Importly' \
             WHERE state = 'submitting' RETURNING id, attempts, kind",
        )
        .bind(&now)
        .fetch_all(&mut *tx)
        .await?;
        for (id, attempts, kind) in &ids {
            let record = AttemptRecord {
                attempt: attempts + 1,
                method: "POST".into(),
                endpoint: endpoint(kind).into(),
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
        Ok(ids.into_iter().map(|(id, _, _)| id).collect())
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
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }
}
