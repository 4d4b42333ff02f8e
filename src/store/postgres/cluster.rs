//! PostgreSQL: the cluster's leases, the adoption of a dead daemon's rows and the shared
//! rate budgets (`migrations_pg/0002_budget_functions.sql`), all on the database's clock.

use std::time::Duration;

use super::{PgStore, attempts, iso};
use crate::clock;
use crate::store::queue::ambiguous_submit;
use crate::store::{Adopted, BudgetGuess, BudgetSeen, Grant, Lease, Result, Running};

/// Why an adopted `submitting` row went back to `pending` (its attempt record's error).
const ORPHANED: &str = "the daemon submitting this row stopped renewing its lease before \
     it recorded the answer; a job may exist at Importly";

pub(super) fn clamp_i32(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A budget window in milliseconds, at least one.
pub(super) fn window_ms(window: Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl PgStore {
    /// Renews our lease if it is still live; a lapsed one stays lapsed (the others may
    /// already hold our rows), and we must join again under a new id.
    pub async fn heartbeat(&self, in_flight: u32) -> Result<Lease> {
        let me = self.me();
        if me == 0 {
            return Ok(Lease::Lost);
        }
        let lease_ms: Option<i64> = sqlx::query_scalar(
            "UPDATE daemons SET heartbeat_at = now(), in_flight = $2 \
             WHERE id = $1 AND stopped_at IS NULL \
               AND heartbeat_at + lease_ms * interval '1 millisecond' > now() \
             RETURNING lease_ms",
        )
        .bind(me)
        .bind(i32::try_from(in_flight).unwrap_or(i32::MAX))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match lease_ms {
            Some(ms) => Lease::Held {
                valid_for: Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            },
            None => Lease::Lost,
        })
    }

    /// Takes over the rows of every daemon whose lease lapsed (or that stopped): their
    /// running jobs become ours to poll; their submitting rows go back to pending with an
    /// ambiguous-submit record, due only after one more of the dead daemon's leases: a
    /// daemon that was frozen, not dead, may still read its submit's answer when it thaws
    /// and hand the job over (`attach_job`) instead of the row being posted twice. One transaction; `SKIP LOCKED`, so two live daemons adopting
    /// at once split the rows instead of waiting on each other, and each row gets one owner.
    pub async fn adopt(
        &self,
        keep: u32,
        endpoint: fn(crate::importly::JobKind) -> &'static str,
    ) -> Result<Adopted> {
        let me = self.me();
        if me == 0 {
            return Ok(Adopted::default());
        }
        let mut tx = self.pool.begin().await?;
        // Only a daemon whose own lease is live may adopt.
        let live: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM daemons WHERE id = $1 AND stopped_at IS NULL \
               AND heartbeat_at + lease_ms * interval '1 millisecond' > now()",
        )
        .bind(me)
        .fetch_optional(&mut *tx)
        .await?;
        if live.is_none() {
            return Ok(Adopted::default());
        }
        const ORPHANS: &str = "SELECT i.id FROM imports i \
             WHERE i.owner IS NOT NULL AND i.owner <> $1 AND i.state = $2 \
               AND NOT EXISTS (SELECT 1 FROM daemons d WHERE d.id = i.owner \
                   AND d.stopped_at IS NULL \
                   AND d.heartbeat_at + d.lease_ms * interval '1 millisecond' > now()) \
             FOR UPDATE OF i SKIP LOCKED";
        let running = sqlx::query_as::<_, Running>(sqlx::AssertSqlSafe(format!(
            "UPDATE imports SET owner = $1, claimed_at = now() \
             WHERE id IN ({ORPHANS}) \
             RETURNING id, kind, importly_job_id, attempts::bigint AS attempts"
        )))
        .bind(me)
        .bind("running")
        .fetch_all(&mut *tx)
        .await?;
        let released: Vec<(i64, crate::importly::JobKind, i64, crate::store::state::Iso)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE imports i SET state = 'pending', owner = NULL, claimed_at = NULL, \
                     updated_at = now(), last_error = '{ORPHANED}', \
                     next_attempt_at = now() + coalesce( \
                         (SELECT d.lease_ms FROM daemons d WHERE d.id = i.owner), 0) \
                         * interval '1 millisecond' \
                 WHERE id IN ({ORPHANS}) \
                 RETURNING id, kind, attempts::bigint, {}",
                iso!("now()")
            )))
            .bind(me)
            .bind("submitting")
            .fetch_all(&mut *tx)
            .await?;
        // The same record (and log trimming) as a daemon's own recovery at start-up.
        for (id, kind, attempts, now) in &released {
            let record = ambiguous_submit(attempts + 1, endpoint(*kind), now.0, ORPHANED);
            attempts::insert(&mut tx, *id, &record, keep).await?;
        }
        tx.commit().await?;
        Ok(Adopted {
            running,
            released: released.into_iter().map(|r| r.0).collect(),
        })
    }

    pub async fn attach_job(&self, id: i64, job_id: &str) -> Result<bool> {
        let me = self.me();
        if me == 0 {
            return Ok(false);
        }
        let taken: Option<i64> = sqlx::query_scalar(
            "UPDATE imports i SET state = 'running', importly_job_id = $2, owner = $3, \
                 claimed_at = now(), updated_at = now(), last_error = NULL \
             WHERE i.id = $1 AND i.importly_job_id IS NULL AND ( \
                 (i.state = 'pending' AND i.owner IS NULL) \
                 OR (i.state = 'submitting' AND i.owner <> $3 AND NOT EXISTS ( \
                     SELECT 1 FROM daemons d WHERE d.id = i.owner AND d.stopped_at IS NULL \
                       AND d.heartbeat_at + d.lease_ms * interval '1 millisecond' > now()))) \
             RETURNING i.id",
        )
        .bind(id)
        .bind(job_id)
        .bind(me)
        .fetch_optional(&self.pool)
        .await?;
        Ok(taken.is_some())
    }

    pub async fn take_budget(&self, scope: &str, n: u32, guess: &BudgetGuess) -> Result<Grant> {
        if n == 0 {
            return Ok(Grant::all(0));
        }
        let (granted, until): (i32, Option<i64>) = sqlx::query_as(
            "SELECT granted, until_ms FROM importlyd_take_budget($1, $2, $3, $4, $5)",
        )
        .bind(scope)
        .bind(i32::try_from(n).unwrap_or(i32::MAX))
        .bind(clamp_i32(u64::from(guess.limit)))
        .bind(clamp_i32(u64::from(guess.reserve)))
        .bind(window_ms(guess.window))
        .fetch_one(&self.pool)
        .await?;
        Ok(Grant {
            granted: u32::try_from(granted).unwrap_or(0).min(n),
            until: until.map(clock::from_unix_ms),
        })
    }

    pub async fn observe_budget(&self, scope: &str, seen: &BudgetSeen) -> Result<()> {
        let window_ms = seen
            .window
            .map(|w| i64::try_from(w.as_millis()).unwrap_or(i64::MAX).max(1));
        sqlx::query(
            "SELECT importlyd_observe_budget($1, $2, $3, \
                 to_timestamp($4::double precision / 1000), $5, \
                 to_timestamp($6::double precision / 1000))",
        )
        .bind(scope)
        .bind(seen.limit.map(clamp_i32))
        .bind(seen.remaining.map(clamp_i32))
        .bind(seen.reset.map(clock::unix_ms))
        .bind(window_ms)
        .bind(seen.blocked_until.map(clock::unix_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
