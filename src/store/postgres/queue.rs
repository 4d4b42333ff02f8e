//! PostgreSQL: queue, the row lifecycle (see SQLite's `queue.rs` for the behaviour each verb
//! shares with it).
//!
//! What several daemons add: a claimed row (`submitting`, `running`) carries its claimer in
//! `owner`, and every write of such a row checks `owner = me`. A row another daemon adopted,
//! or that lease expiry handed back to `pending`, answers [`Fate::Gone`]/[`Written::Gone`]
//! and is never overwritten: the scheduler then drops it as it drops a deleted row. A row
//! leaving `submitting`/`running` gets `owner = NULL`. "Now" is the database's `now()`
//! throughout, so the hosts' clocks never need to agree.

use std::time::{Duration, SystemTime};

use super::attempts::{self, json, owned, text};
use super::cluster::{clamp_i32, window_ms};
use super::{PgStore, iso};
use crate::clock;
use crate::importly::JobKind;
use crate::store::queue::ambiguous_submit;
use crate::store::state::{Iso, LaxIso};
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

impl PgStore {
    /// Claims up to `n` due pending rows of `kind`, oldest due first, for this daemon. Rows
    /// another daemon is claiming at this moment are skipped, not waited for (`SKIP
    /// LOCKED`), so no row is claimed twice. Due means due by the database's clock; `_now`
    /// (the daemon's) is not used.
    ///
    /// `slots` is the account's concurrency for `kind` as this daemon knows it: the rows
    /// already submitting or running, whoever holds them, count against it. Counting and
    /// claiming happen under a per-kind advisory lock, so two daemons claiming at once
    /// cannot both take the last slot; the lock lives for one function call only
    /// (`importlyd_claim`, migrations_pg/0003). Its class, in the two-key form, is 0x1d_c1a1:
    /// apart from the metadata preflight's class and sqlx's migration lock.
    pub async fn claim_due(
        &self,
        kind: JobKind,
        n: u32,
        _now: SystemTime,
        slots: u32,
    ) -> Result<Vec<Claimed>> {
        Ok(self.claim(kind, n, slots, None).await?.rows)
    }

    /// As [`claim_due`](Self::claim_due), and in the same call takes one request of the
    /// shared budget of scope `kind` per row: only the rows it grants are claimed, so none
    /// has to be given back; the grant says until when the budget has no more.
    pub async fn claim_budgeted(
        &self,
        kind: JobKind,
        n: u32,
        _now: SystemTime,
        slots: u32,
        guess: &BudgetGuess,
    ) -> Result<Claim> {
        self.claim(kind, n, slots, Some(guess)).await
    }

    async fn claim(
        &self,
        kind: JobKind,
        n: u32,
        slots: u32,
        guess: Option<&BudgetGuess>,
    ) -> Result<Claim> {
        if n == 0 {
            return Ok(Claim {
                rows: Vec::new(),
                grant: Grant::all(0),
                full: false,
            });
        }
        type Out = (
            Option<i64>,
            Option<String>,
            Option<JobKind>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            bool,
        );
        let out: Vec<Out> = sqlx::query_as(
            "SELECT claimed_id, claimed_url, claimed_kind, claimed_options, claimed_attempts, \
                    until_ms, slots_full \
             FROM importlyd_claim($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(kind)
        .bind(clamp_i32(u64::from(n)))
        .bind((slots != u32::MAX).then(|| clamp_i32(u64::from(slots))))
        .bind(self.me())
        .bind(guess.map(|g| clamp_i32(u64::from(g.limit))))
        .bind(guess.map(|g| clamp_i32(u64::from(g.reserve))))
        .bind(guess.map(|g| window_ms(g.window)))
        .fetch_all(&self.pool)
        .await?;
        let until = out.first().and_then(|o| o.5).map(clock::from_unix_ms);
        let full = out.first().is_some_and(|o| o.6);
        let mut rows: Vec<Claimed> = out
            .into_iter()
            .filter_map(|(id, url, kind, options, attempts, _, _)| {
                Some(Claimed {
                    id: id?,
                    url: url?,
                    kind: kind?,
                    options: options?,
                    attempts: attempts?,
                })
            })
            .collect();
        // RETURNING order is unspecified; sorted as SQLite's are.
        rows.sort_by_key(|r| r.id);
        let granted = u32::try_from(rows.len()).unwrap_or(u32::MAX);
        Ok(Claim {
            rows,
            grant: Grant { granted, until },
            full,
        })
    }

    /// When the next pending row of `kind` is due, if any. Due is
    /// decided by the database's clock: a row due by it but not yet by this host's clock
    /// (running behind) is reported as due now, so the caller's "is it due?" agrees with
    /// the claim's. `next_attempt_at` is a time users write, read as [`LaxIso`]: a row due
    /// before 1970 is due at the epoch, not an error on every tick.
    pub async fn next_due(&self, kind: JobKind) -> Result<Option<SystemTime>> {
        let next: Option<(LaxIso, bool)> = sqlx::query_as(concat!(
            "SELECT ",
            iso!("next_attempt_at"),
            ", next_attempt_at <= now() \
             FROM imports WHERE state = 'pending' AND kind = $1 \
             ORDER BY next_attempt_at, id LIMIT 1"
        ))
        .bind(kind)
        .fetch_optional(&self.pool)
        .await?;
        Ok(next.map(|(LaxIso(at), due)| {
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
        after: Option<Duration>,
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
               next_attempt_at = CASE WHEN $4::bigint IS NULL THEN next_attempt_at \
                 ELSE now() + $4 * interval '1 millisecond' END, \
               last_error = $5, updated_at = now(), owner = NULL \
             WHERE id = $1 AND state = 'submitting' AND owner = $6 \
             RETURNING state",
        )
        .bind(id)
        .bind(i32::from(count))
        .bind(i64::from(max_attempts))
        .bind(
            after
                .map(|a| i64::try_from(a.min(clock::MAX_DUE_WAIT).as_millis()).unwrap_or(i64::MAX)),
        )
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
        let rows: Vec<(i64, i64, JobKind, Iso)> = sqlx::query_as(concat!(
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
                now.0,
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
        let updated: Option<(i64, Iso)> = sqlx::query_as(concat!(
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
            Some((a, Iso(now))) => {
                // The record is cleaned by `insert`.
                let record = ambiguous_submit(a + 1, endpoint, now, why);
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
