//! SQLite: queue.

use std::time::{Duration, SystemTime};

use super::SqliteStore;
use crate::clock;
use crate::importly::JobKind;
use crate::store::Result;
use crate::store::attempts::{self, AttemptRecord, Written};
use crate::store::queue::*;
use crate::store::state::LaxIso;

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
fn by_kind(kind: JobKind, import: &'static str, metadata: &'static str) -> &'static str {
    match kind {
        JobKind::Import => import,
        JobKind::Metadata => metadata,
    }
}

impl SqliteStore {
    /// `claim_due`: one daemon per file, so the budget is the scheduler's own and grants
    /// every row (as `take_budget`).
    pub async fn claim_budgeted(
        &self,
        kind: JobKind,
        n: u32,
        now: SystemTime,
        slots: u32,
        _guess: &crate::store::BudgetGuess,
    ) -> Result<Claim> {
        let rows = self.claim_due(kind, n, now, slots).await?;
        let granted = u32::try_from(rows.len()).unwrap_or(u32::MAX);
        Ok(Claim {
            rows,
            grant: crate::store::Grant::all(granted),
            full: false,
        })
    }

    /// Claims up to `n` due pending rows of `kind`, oldest due first, in one statement, so
    /// no row can be claimed twice.
    pub async fn claim_due(
        &self,
        kind: JobKind,
        n: u32,
        now: SystemTime,
        _slots: u32,
    ) -> Result<Vec<Claimed>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        // The kind is written into the SQL, not bound (see `by_kind`).
        let sql = by_kind(kind, claim_sql!("import"), claim_sql!("metadata"));
        let mut rows = sqlx::query_as::<_, Claimed>(sql)
            .bind(i64::from(n))
            .bind(clock::iso(now))
            .fetch_all(&mut *self.writer().await?)
            .await?;
        // RETURNING order is unspecified; keep oldest-due-first for the caller.
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// When the next pending row of `kind` is due, if any. `next_attempt_at` is a time users
    /// write, read as [`LaxIso`]: a row due before 1970 is due at the epoch, not an error on
    /// every tick.
    pub async fn next_due(&self, kind: JobKind) -> Result<Option<SystemTime>> {
        let sql = by_kind(kind, next_due_sql!("import"), next_due_sql!("metadata"));
        Ok(sqlx::query_scalar::<_, LaxIso>(sql)
            .fetch_optional(&self.reader)
            .await?
            .map(SystemTime::from))
    }

    /// Back to `pending`, due `after` from now. With `count` the failure is the row's own
    /// and counts against `max_attempts` (the row fails once it reaches it); without, it is
    /// a snooze (429, 401, 402) and `attempts` stays. `after` `None` keeps the row's
    /// `next_attempt_at`, so a row snoozed for an account-wide reason keeps its place in the
    /// queue (the limits, not the row, hold it back).
    #[allow(clippy::too_many_arguments)]
    pub async fn reschedule(
        &self,
        id: i64,
        after: Option<Duration>,
        count: bool,
        max_attempts: u32,
        last_error: &str,
        record: Option<&AttemptRecord>,
        keep: u32,
    ) -> Result<Fate> {
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        let found = match record {
            Some(r) => attempts::insert(&mut tx, id, r, keep).await?,
            None => attempts::exists(&mut tx, id).await?,
        };
        if found == Written::Gone {
            return Ok(Fate::Gone);
        }
        let now = clock::now_iso();
        let state: Option<String> = sqlx::query_scalar(
            "UPDATE imports SET \
               attempts = attempts + ?2, \
               state = CASE WHEN attempts + ?2 >= ?3 THEN 'failed' ELSE 'pending' END, \
               completed_at = CASE WHEN attempts + ?2 >= ?3 THEN ?5 ELSE NULL END, \
               next_attempt_at = coalesce(?4, next_attempt_at), last_error = ?6, \
               updated_at = ?5 \
             WHERE id = ?1 AND state = 'submitting' \
             RETURNING state",
        )
        .bind(id)
        .bind(i64::from(count))
        .bind(i64::from(max_attempts))
        .bind(after.map(|a| clock::iso(clock::after(a))))
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
    ) -> Result<Written> {
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        let found = match record {
            Some(r) => attempts::insert(&mut tx, id, r, keep).await?,
            None => attempts::exists(&mut tx, id).await?,
        };
        if found == Written::Gone {
            return Ok(Written::Gone);
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
        Ok(Written::Row)
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
        endpoint: fn(JobKind) -> &'static str,
    ) -> Result<Vec<i64>> {
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        let at = SystemTime::now();
        let now = clock::iso(at);
        let ids: Vec<(i64, i64, JobKind)> = sqlx::query_as(
            "UPDATE imports SET state = 'pending', next_attempt_at = ?1, updated_at = ?1, \
               last_error = 'daemon stopped during submit; the POST may have reached Importly' \
             WHERE state = 'submitting' RETURNING id, attempts, kind",
        )
        .bind(&now)
        .fetch_all(&mut *tx)
        .await?;
        for (id, attempts, kind) in &ids {
            let record = ambiguous_submit(
                attempts + 1,
                endpoint(*kind),
                at,
                "daemon stopped while this row was being submitted; \
                 a job may exist at Importly without our record of it",
            );
            // The rows were just updated in this transaction: they exist.
            let _ = attempts::insert(&mut tx, *id, &record, keep).await?;
        }
        tx.commit().await?;
        Ok(ids.into_iter().map(|(id, _, _)| id).collect())
    }

    /// The submit of row `id` ended without an answer we could read (its task died): like
    /// start-up recovery for one row, it goes back to `pending` with an ambiguous-submit
    /// record, since the POST may have reached Importly. Only a row still `submitting`.
    pub async fn release_ambiguous(
        &self,
        id: i64,
        endpoint: &str,
        why: &str,
        keep: u32,
    ) -> Result<Written> {
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        let at = SystemTime::now();
        let now = clock::iso(at);
        let attempts: Option<i64> = sqlx::query_scalar(
            "UPDATE imports SET state = 'pending', next_attempt_at = ?2, updated_at = ?2, \
               last_error = ?3 \
             WHERE id = ?1 AND state = 'submitting' RETURNING attempts",
        )
        .bind(id)
        .bind(&now)
        .bind(format!("{why}; the POST may have reached Importly"))
        .fetch_optional(&mut *tx)
        .await?;
        let written = match attempts {
            Some(a) => {
                let record = ambiguous_submit(a + 1, endpoint, at, why);
                attempts::insert(&mut tx, id, &record, keep).await?
            }
            None => attempts::exists(&mut tx, id).await?,
        };
        tx.commit().await?;
        Ok(written)
    }

    /// Gives back claimed rows whose submit never started (shutdown, pause): `submitting`
    /// rows back to `pending`, untouched otherwise.
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
