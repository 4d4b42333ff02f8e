//! PostgreSQL: queue, the row lifecycle (see SQLite's `queue.rs` for the behaviour each verb
//! shares with it).
//!
//! What several daemons add: a claimed row (`submitting`, `running`) carries its claimer in
//! `owner`, and every write of such a row checks `owner = me`. A row another daemon adopted,
//! or that lease expiry handed back to `pending`, answers [`Fate::Gone`]/[`Written::Gone`]
//! and is never overwritten: the scheduler then drops it as it drops a deleted row. A row
//! leaving `submitting`/`running` gets `owner = NULL`. "Now" is the database's `now()`
//! throughout, so the hosts' clocks never need to agree.

use std::time::SystemTime;

use super::attempts::{self, json, owned, text};
use super::{PgStore, iso};
use crate::clock;
use crate::importly::JobKind;
use crate::store::queue::ambiguous_submit;
use crate::store::state::Iso;
use crate::store::*;

/// Makes the imports waiting on metadata row `$1`'s URL due now: run in the transaction
/// that ends that metadata row. The text is in the SQL, not bound, so that the `WHERE` is
/// that of the partial index `imports_waiting_for_preflight` and the lookup uses it.
pub(super) const WAKE_WAITERS: &str = concat!(
    "UPDATE imports SET next_attempt_at = now() \
     WHERE state = 'pending' AND last_error = '",
    crate::store::metadata::waiting!(),
    "' AND url = (SELECT url FROM imports WHERE id = $1 AND kind = 'metadata')"
);

/// The advisory lock class of a claim that keeps the account's concurrency (two-key form,
/// apart from the metadata preflight's class and sqlx's migration lock).
const CLAIM_LOCK_CLASS: i32 = 0x1d_c1a1;

impl PgStore {
    /// Claims up to `n` due pending rows of `kind`, oldest due first, for this daemon. Rows
    /// another daemon is claiming at this moment are skipped, not waited for (`SKIP
    /// LOCKED`), so no row is claimed twice. Due means due by the database's clock; `_now`
    /// (the daemon's) is not used.
    ///
    /// `slots` is the account's concurrency for `kind` as this daemon knows it: the rows
    /// already submitting or running, whoever holds them, count against it. Counting and
    /// claiming happen under a per-kind advisory lock, so two daemons claiming at once
    /// cannot both take the last slot; the lock lives for this short transaction only.
    pub async fn claim_due(
        &self,
        kind: JobKind,
        n: u32,
        _now: SystemTime,
        slots: u32,
    ) -> Result<Vec<Claimed>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let mut n = i64::from(n);
        if slots != u32::MAX {
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(CLAIM_LOCK_CLASS)
                .bind(kind)
                .execute(&mut *tx)
                .await?;
            let busy: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM imports WHERE kind = $1 \
                 AND state IN ('submitting', 'running')",
            )
            .bind(kind)
            .fetch_one(&mut *tx)
            .await?;
            n = n.min(i64::from(slots) - busy);
            if n <= 0 {
                return Ok(Vec::new());
            }
        }
        let mut rows = sqlx::query_as::<_, Claimed>(
            "UPDATE imports SET state = 'submitting', owner = $3, claimed_at = now(), \
               updated_at = now() \
             WHERE id IN (SELECT id FROM imports \
                          WHERE state = 'pending' AND kind = $1 AND next_attempt_at <= now() \
                          ORDER BY next_attempt_at, id LIMIT $2 \
                          FOR UPDATE SKIP LOCKED) \
             RETURNING id, url, kind, options::text AS options, attempts::bigint AS attempts",
        )
        .bind(kind)
        .bind(n)
        .bind(self.me())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        // RETURNING order is unspecified; sorted as SQLite's are.
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// When the next pending row of `kind` is due, if any. Due is
    /// decided by the database's clock: a row due by it but not yet by this host's clock
    /// (running behind) is reported as due now, so the caller's "is it due?" agrees with
    /// the claim's.
    pub async fn next_due(&self, kind: JobKind) -> Result<Option<SystemTime>> {
        let next: Option<(Iso, bool)> = sqlx::query_as(concat!(
            "SELECT ",
            iso!("next_attempt_at"),
            ", next_attempt_at <= now() \
             FROM imports WHERE state = 'pending' AND kind = $1 \
             ORDER BY next_attempt_at, id LIMIT 1"
        ))
        .bind(kind)
        .fetch_optional(&self.pool)
        .await?;
        Ok(next.map(|(Iso(at), due)| {
            let here = SystemTime::now();
            if due && at > here { here } else { at }
        }))
    }

    /// Back to `pending` (or `failed` once `attempts` reaches `max_attempts`), as SQLite's.
    /// Only a row this daemon holds: one it no longer holds (deleted, adopted, handed back)
    /// is [`Fate::Gone`] and gets no record.
    #[allow(clippy::too_many_arguments)]
    pub async fn reschedule(
        &self,
        id: i64,
        due: Option<SystemTime>,
        count: bool,
        max_attempts: u32,
        last_error: &str,
        record: Option<&AttemptRecord>,
        keep: u32,
    ) -> Result<Fate> {
        let me = self.me();
        let mut tx = self.pool.begin().await?;
        // The UPDATE first: it locks the row, so the record below cannot meet a delete.
        let state: Option<String> = sqlx::query_scalar(
            "UPDATE imports SET \
               attempts = attempts + $2, \
               state = CASE WHEN attempts + $2 >= $3 THEN 'failed' ELSE 'pending' END, \
               completed_at = CASE WHEN attempts + $2 >= $3 THEN now() ELSE NULL END, \
               next_attempt_at = coalesce($4::timestamptz, next_attempt_at), \
               last_error = $5, updated_at = now(), owner = NULL \
             WHERE id = $1 AND state = 'submitting' AND owner = $6 \
             RETURNING state",
        )
        .bind(id)
        .bind(i32::from(count))
        .bind(i64::from(max_attempts))
        .bind(due.map(clock::iso))
        .bind(text(last_error))
        .bind(me)
        .fetch_optional(&mut *tx)
        .await?;
        // Not updated: still ours in another state (SQLite: the record is kept, the row
        // left as it is), or not ours at all.
        if state.is_none() && owned(&mut tx, id, me).await? == Written::Gone {
            return Ok(Fate::Gone);
        }
        if let Some(r) = record {
            attempts::insert(&mut tx, id, r, keep).await?;
        }
        tx.commit().await?;
        Ok(match state.as_deref() {
            Some("failed") => Fate::Failed,
            _ => Fate::Pending,
        })
    }

    /// Fails the row for good (400, 404, job failed), keeping whatever Importly said. A
    /// failed metadata row wakes the imports waiting on it, in the same transaction.
    pub async fn fail(
        &self,
        id: i64,
        reason: &str,
        result: Option<&str>,
        record: Option<&AttemptRecord>,
        keep: u32,
    ) -> Result<Written> {
        let me = self.me();
        let mut tx = self.pool.begin().await?;
        let updated: Option<i32> = sqlx::query_scalar(
            "UPDATE imports SET state = 'failed', last_error = $2, \
               result = coalesce($3::jsonb, result), completed_at = now(), updated_at = now(), \
               owner = NULL \
             WHERE id = $1 AND state IN ('submitting', 'running') AND owner = $4 \
             RETURNING 1",
        )
        .bind(id)
        .bind(text(reason))
        .bind(result.map(json))
        .bind(me)
        .fetch_optional(&mut *tx)
        .await?;
        if updated.is_none() && owned(&mut tx, id, me).await? == Written::Gone {
            return Ok(Written::Gone);
        }
        if let Some(r) = record {
            attempts::insert(&mut tx, id, r, keep).await?;
        }
        sqlx::query(WAKE_WAITERS).bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Written::Row)
    }

    /// This daemon's running rows, to poll: never another daemon's, never re-submitted.
    pub async fn running(&self) -> Result<Vec<Running>> {
        Ok(sqlx::query_as::<_, Running>(
            "SELECT id, kind, importly_job_id, attempts::bigint AS attempts FROM imports \
             WHERE state = 'running' AND importly_job_id IS NOT NULL AND owner = $1 \
             ORDER BY id",
        )
        .bind(self.me())
        .fetch_all(&self.pool)
        .await?)
    }

    /// This daemon's `submitting` rows back to `pending`, each with an ambiguous-submit
    /// record (its POST may have reached Importly). At start-up a fresh registration holds
    /// none: a dead daemon's rows come back through lease expiry, not here.
    pub async fn recover_submitting(
        &self,
        keep: u32,
        endpoint: fn(JobKind) -> &'static str,
    ) -> Result<Vec<i64>> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, i64, JobKind, String)> = sqlx::query_as(concat!(
            "UPDATE imports SET state = 'pending', next_attempt_at = now(), updated_at = now(), \
               last_error = 'daemon stopped during submit; the POST may have reached Importly', \
               owner = NULL \
             WHERE state = 'submitting' AND owner = $1 \
             RETURNING id, attempts::bigint, kind, ",
            iso!("now()")
        ))
        .bind(self.me())
        .fetch_all(&mut *tx)
        .await?;
        for (id, attempts, kind, now) in &rows {
            let record = ambiguous_submit(
                attempts + 1,
                endpoint(*kind),
                now,
                "daemon stopped while this row was being submitted; \
                 a job may exist at Importly without our record of it",
            );
            // Updated (so locked) by this transaction: the row exists.
            attempts::insert(&mut tx, *id, &record, keep).await?;
        }
        tx.commit().await?;
        let mut ids: Vec<i64> = rows.into_iter().map(|(id, ..)| id).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The submit of row `id` ended without an answer we could read: back to `pending`
    /// with an ambiguous-submit record, if it is still this daemon's `submitting` row.
    pub async fn release_ambiguous(
        &self,
        id: i64,
        endpoint: &str,
        why: &str,
        keep: u32,
    ) -> Result<Written> {
        let me = self.me();
        let mut tx = self.pool.begin().await?;
        let updated: Option<(i64, String)> = sqlx::query_as(concat!(
            "UPDATE imports SET state = 'pending', next_attempt_at = now(), updated_at = now(), \
               last_error = $2, owner = NULL \
             WHERE id = $1 AND state = 'submitting' AND owner = $3 \
             RETURNING attempts::bigint, ",
            iso!("now()")
        ))
        .bind(id)
        .bind(text(&format!("{why}; the POST may have reached Importly")).into_owned())
        .bind(me)
        .fetch_optional(&mut *tx)
        .await?;
        let written = match updated {
            Some((a, now)) => {
                // The record is cleaned by `insert`.
                let record = ambiguous_submit(a + 1, endpoint, &now, why);
                attempts::insert(&mut tx, id, &record, keep).await?;
                Written::Row
            }
            None => owned(&mut tx, id, me).await?,
        };
        tx.commit().await?;
        Ok(written)
    }

    /// Gives back this daemon's claimed rows whose submit never started (shutdown, pause).
    pub async fn release(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE imports SET state = 'pending', updated_at = now(), owner = NULL \
             WHERE state = 'submitting' AND owner = $2 AND id = ANY($1)",
        )
        .bind(ids)
        .bind(self.me())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
