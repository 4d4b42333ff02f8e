//! PostgreSQL: ops. The operator verbs, with the behaviour of `store/sqlite/ops.rs`.
//!
//! Every statement here is safe while any number of daemons run: reads see one snapshot,
//! writes are single statements or short transactions that touch only rows no daemon works
//! on (pending, failed, finished), re-checked under READ COMMITTED's row locks.
//!
//! Filters that may be absent are left out of the SQL rather than written as
//! `$1 IS NULL OR state = $1`: each combination then has a plan of its own that uses the
//! index its filter needs, whatever plan the server caches for the prepared statement.

use std::collections::BTreeMap;

use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use sqlx::PgConnection;

use std::time::SystemTime;

use super::{PgStore, ROW_COLUMNS, iso};
use crate::clock;
use crate::importly::JobKind;
use crate::store::state::{LaxIso, OptLaxIso};
use crate::store::*;

/// Delta rows (`imports_counts_delta`, see migrations_pg) `status_counts` lets pile up before
/// it folds them into `imports_counts`: reading them is part of every count, so a read that
/// meets more than this many folds them (see `totals` for what bounds them).
const FOLD_AFTER: i64 = 1000;

/// The advisory lock (transaction-scoped) a fold takes, or skips folding when another fold
/// holds it: two folds could only wait for each other (a DELETE waits for the other's
/// commit to find the row gone). "importly" in ASCII, unlikely to meet another program's key.
const COUNTS_LOCK: i64 = 0x696d_706f_7274_6c79;

/// Moves every committed delta row into the totals. Safe to run concurrently even without
/// the lock: a delta row another fold deleted first is skipped (READ COMMITTED), so each
/// row is moved exactly once; rows of transactions still open stay for the next fold.
/// ORDER BY: concurrent upserts lock the total rows in one order.
const FOLD: &str = "WITH moved AS (DELETE FROM imports_counts_delta RETURNING state, kind, n, credits) \
     INSERT INTO imports_counts AS c (state, kind, n, credits) \
     SELECT state, kind, sum(n), sum(credits) FROM moved \
     GROUP BY state, kind ORDER BY state, kind \
     ON CONFLICT (state, kind) DO UPDATE \
         SET n = c.n + excluded.n, credits = c.credits + excluded.credits";

/// Sets the totals to a count of the table, in one statement (one snapshot S): it adds the
/// difference between the count and the totals (folded plus delta) as S sees them, as delta
/// rows. The totals after it are the count at S plus every change committed after S (their
/// delta rows, which S does not see), which is the count of the table now; a fold moving
/// rows meanwhile changes no total. It only inserts, so it locks nothing and waits for no
/// one, and never deadlocks with a fold.
const RECOUNT: &str = "INSERT INTO imports_counts_delta (state, kind, n, credits) \
     SELECT state, kind, sum(n), sum(credits) FROM ( \
         SELECT state, kind, count(*) AS n, coalesce(sum(credits_used), 0) AS credits \
         FROM imports GROUP BY state, kind \
         UNION ALL SELECT state, kind, -n, -credits FROM imports_counts \
         UNION ALL SELECT state, kind, -n, -credits FROM imports_counts_delta) AS t \
     GROUP BY state, kind HAVING sum(n) <> 0 OR sum(credits) <> 0";

/// Numbers the parameters of a statement assembled from optional parts.
#[derive(Default)]
pub(super) struct Params(usize);

impl Params {
    /// The next `$n`.
    pub(super) fn next(&mut self) -> String {
        self.0 += 1;
        format!("${}", self.0)
    }
}

/// The WHERE of a [`ListFilter`] (`list`, `export`), its parameters numbered from `p`:
/// bind the state, then the time, as given.
fn list_where(f: &ListFilter, p: &mut Params) -> String {
    let mut w = vec!["true".to_owned()];
    if f.state.is_some() {
        w.push(format!("state = {}", p.next()));
    }
    if f.since.is_some() {
        w.push(format!("updated_at >= {}::timestamptz", p.next()));
    }
    w.join(" AND ")
}

const INSERT_ONE: &str = "INSERT INTO imports (url, kind, options, external_id) \
     VALUES ($1, coalesce($2, 'import'), coalesce($3, '{}')::jsonb, $4) \
     ON CONFLICT (external_id) DO NOTHING RETURNING id";

/// One row in, `None` when its `external_id` was already queued (or purged).
async fn insert_one(conn: &mut PgConnection, r: &EnqueueRow) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(INSERT_ONE)
        .bind(&r.url)
        .bind(r.kind)
        .bind(&r.options)
        .bind(&r.external_id)
        .fetch_optional(conn)
        .await?)
}

/// Why the database refused a row, when the row itself is at fault: a constraint (the
/// message names it, as SQLite's does), or a value its column cannot take. Options that are
/// not JSON at all fail the cast to jsonb before the CHECK can name itself (SQLSTATE class
/// 22), so the reason names it here: the one constraint a user must recognise. `None` for
/// everything else (a lost connection, a broken statement), which no line is guilty of.
fn refused(e: &StoreError) -> Option<String> {
    let StoreError::Sql(sqlx::Error::Database(d)) = e else {
        return None;
    };
    if e.is_constraint() {
        return Some(d.message().to_owned());
    }
    if !d.code().is_some_and(|c| c.starts_with("22")) {
        return None;
    }
    let msg = d.message();
    Some(if msg.contains("json") {
        format!("options_must_be_json_object: {msg}")
    } else {
        msg.to_owned()
    })
}

impl PgStore {
    /// Inserts rows in one transaction; a duplicate (or purged) `external_id` is skipped, so
    /// feeding the same rows twice adds nothing. Returns the ids of the rows inserted; a bad
    /// row rolls the whole batch back and names its place.
    pub async fn enqueue(&self, rows: &[EnqueueRow]) -> Result<Vec<i64>> {
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            match insert_one(&mut tx, r).await {
                Ok(id) => ids.extend(id),
                Err(e) => {
                    return Err(match refused(&e) {
                        Some(why) => {
                            StoreError::Invalid(format!("row {} ({}): {why}", i + 1, r.url))
                        }
                        None => e,
                    });
                }
            }
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Inserts one chunk of a file's rows in one transaction, skipping the bad ones. A
    /// clean chunk goes in as one statement. PostgreSQL aborts a transaction at its first
    /// failed statement, so a chunk with a bad row is rolled back and inserted again row by
    /// row, each in a savepoint of its own, to name the rows at fault and keep the others.
    pub async fn enqueue_chunk(&self, rows: &[EnqueueRow]) -> Result<ChunkOutcome> {
        let urls: Vec<&str> = rows.iter().map(|r| r.url.as_str()).collect();
        let kinds: Vec<Option<&str>> = rows.iter().map(|r| r.kind.map(JobKind::as_str)).collect();
        let options: Vec<Option<&str>> = rows.iter().map(|r| r.options.as_deref()).collect();
        let external: Vec<Option<&str>> = rows.iter().map(|r| r.external_id.as_deref()).collect();
        let mut out = ChunkOutcome::default();
        // ORDER BY: ids follow the chunk's order, as one row at a time would give them.
        let all = sqlx::query_scalar::<_, i64>(
            "INSERT INTO imports (url, kind, options, external_id) \
             SELECT url, coalesce(kind, 'import'), coalesce(options, '{}')::jsonb, external_id \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY \
                  AS r (url, kind, options, external_id, i) \
             ORDER BY i \
             ON CONFLICT (external_id) DO NOTHING RETURNING id",
        )
        .bind(&urls)
        .bind(&kinds)
        .bind(&options)
        .bind(&external)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from);
        match all {
            Ok(mut ids) => {
                ids.sort_unstable();
                out.duplicates = rows.len() - ids.len();
                out.inserted = ids;
                return Ok(out);
            }
            Err(e) if refused(&e).is_some() => {}
            Err(e) => return Err(e),
        }
        let mut tx = self.pool.begin().await?;
        for (i, r) in rows.iter().enumerate() {
            let mut one = sqlx::Acquire::begin(&mut tx).await?;
            match insert_one(&mut one, r).await {
                Ok(id) => {
                    one.commit().await?;
                    match id {
                        Some(id) => out.inserted.push(id),
                        None => out.duplicates += 1,
                    }
                }
                Err(e) => match refused(&e) {
                    Some(why) => {
                        one.rollback().await?;
                        out.bad.push((i, why));
                    }
                    None => return Err(e),
                },
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The ids of the rows with these external ids (the rows a file named, inserted now or
    /// before).
    pub async fn ids_by_external_id(&self, external_ids: &[String]) -> Result<Vec<i64>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM imports WHERE external_id = ANY($1) ORDER BY id")
                .bind(external_ids)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The rows `export` writes, oldest first, as a stream: rows are decoded as the caller
    /// takes them off the connection, so memory stays bounded however many there are.
    pub fn export(&self, f: &ListFilter) -> BoxStream<'_, Result<ExportRow>> {
        let mut p = Params::default();
        let filter = list_where(f, &mut p);
        let sql = format!(
            "SELECT id, external_id, url, kind, state, importly_job_id, media_url, \
                    credits_used, {} AS completed_at, last_error \
             FROM imports WHERE {filter} ORDER BY id LIMIT {}",
            iso!("completed_at"),
            p.next()
        );
        let mut q = sqlx::query_as::<_, ExportRow>(sqlx::AssertSqlSafe(sql));
        if let Some(state) = f.state {
            q = q.bind(state);
        }
        if let Some(since) = f.since {
            q = q.bind(clock::iso(since));
        }
        q.bind(f.limit.map(i64::from))
            .fetch(&self.pool)
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
        let mut p = Params::default();
        let mut w = vec!["true".to_owned()];
        if ids.is_some() {
            w.push(format!("id = ANY({})", p.next()));
        }
        if since.is_some() {
            w.push(format!("created_at >= {}::timestamptz", p.next()));
        }
        if prefix.is_some() {
            w.push(format!("starts_with(external_id, {})", p.next()));
        }
        if unfinished {
            w.push("state NOT IN ('completed', 'failed', 'cancelled')".to_owned());
        }
        let sql = format!(
            "SELECT id FROM imports WHERE {} ORDER BY id",
            w.join(" AND ")
        );
        let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
        if let Some(ids) = ids {
            q = q.bind(ids);
        }
        if let Some(since) = since {
            q = q.bind(clock::iso(since));
        }
        if let Some(prefix) = prefix {
            q = q.bind(prefix.to_owned());
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// How far the rows `ids` are: the number per state and the latest `updated_at` among
    /// them (so a change that keeps every state, a retry's new attempt, still shows).
    pub async fn progress_of(&self, ids: &[i64]) -> Result<RowsProgress> {
        // The times of `imports` are read leniently (`state::LaxIso`).
        let rows: Vec<(State, i64, OptLaxIso)> = sqlx::query_as(concat!(
            "SELECT state, count(*), ",
            iso!("max(updated_at)"),
            " FROM imports WHERE id = ANY($1) GROUP BY state"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
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
        Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM imports \
             WHERE id = ANY($1) AND state IN ('failed', 'cancelled') ORDER BY id LIMIT $2"
        )))
        .bind(ids)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn row(&self, id: i64) -> Result<Option<Row>> {
        Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM imports WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn list(&self, f: &ListFilter) -> Result<Vec<Row>> {
        let mut p = Params::default();
        let filter = list_where(f, &mut p);
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM imports WHERE {filter} ORDER BY id LIMIT {}",
            p.next()
        );
        let mut q = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql));
        if let Some(state) = f.state {
            q = q.bind(state);
        }
        if let Some(since) = f.since {
            q = q.bind(clock::iso(since));
        }
        Ok(q.bind(f.limit.map(i64::from)).fetch_all(&self.pool).await?)
    }

    /// The totals per (state, kind, rows, credits): the folded ones plus the delta rows not
    /// folded yet, in one statement, so a fold committing meanwhile is seen wholly or not
    /// at all. Folds the delta afterwards once it has grown past [`FOLD_AFTER`] rows, so the
    /// delta this reads is the state changes made since the last read that folded, not a
    /// fixed bound: the counts are read often (each daemon's systemd notifier every 5 s at
    /// most, `status`, the admin API), and a burst between two reads is read whole once.
    /// The answer is a few rows at any table size.
    async fn totals(&self) -> Result<Vec<(State, JobKind, i64, i64)>> {
        let rows: Vec<(State, JobKind, i64, i64, i64)> = sqlx::query_as(
            "SELECT state, kind, sum(n)::bigint, sum(credits)::bigint, sum(delta)::bigint \
             FROM (SELECT state, kind, n, credits, 0 AS delta FROM imports_counts \
                   UNION ALL \
                   SELECT state, kind, n, credits, 1 FROM imports_counts_delta) AS t \
             GROUP BY state, kind",
        )
        .fetch_all(&self.pool)
        .await?;
        let deltas: i64 = rows.iter().map(|r| r.4).sum();
        if deltas > FOLD_AFTER
            && let Err(e) = self.fold().await
        {
            // The counts just read are right; the fold is housekeeping the next read retries.
            tracing::warn!(error = %e, "could not fold the count deltas");
        }
        Ok(rows
            .into_iter()
            .map(|(state, kind, n, credits, _)| (state, kind, n, credits))
            .collect())
    }

    /// One fold of `imports_counts_delta` into `imports_counts`, unless another fold holds
    /// the lock (it moves what this one would have).
    async fn fold(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(COUNTS_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if free {
            sqlx::query(FOLD).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn status_counts(&self) -> Result<StatusCounts> {
        let mut counts: BTreeMap<State, i64> = State::ALL.iter().map(|s| (*s, 0)).collect();
        let mut credits_used = 0;
        for (state, _kind, n, credits) in self.totals().await? {
            if state == State::Completed {
                credits_used += credits;
            }
            *counts.entry(state).or_default() += n;
        }
        // Both a seek of a partial index (imports_pending_by_created,
        // imports_errors_by_updated), never a walk of the pending or failed rows.
        let oldest_pending = sqlx::query_scalar::<_, LaxIso>(concat!(
            "SELECT ",
            iso!("created_at"),
            " FROM imports WHERE state = 'pending' ORDER BY created_at LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?
        .map(SystemTime::from);
        let last_error = sqlx::query_as::<_, LastError>(concat!(
            "SELECT id, ",
            iso!("updated_at"),
            " AS updated_at, last_error FROM imports WHERE last_error IS NOT NULL \
             ORDER BY updated_at DESC LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        Ok(StatusCounts {
            counts,
            oldest_pending,
            last_error,
            credits_used,
        })
    }

    /// Counts the totals afresh from the table (`importlyd migrate`): they are right by
    /// construction, but a trigger disabled for a bulk load (`session_replication_role =
    /// replica`, `ALTER TABLE ... DISABLE TRIGGER`) or a hand-edited `imports_counts` would
    /// leave them wrong for good. A scan of the table; see [`RECOUNT`] for why it is right
    /// while daemons write. The correction is folded at once.
    pub async fn recount(&self) -> Result<()> {
        sqlx::query(RECOUNT).execute(&self.pool).await?;
        self.fold().await
    }

    /// The queue as the drain estimate sees it: the counts from the totals, the mean over the
    /// latest completed rows of each kind only (`imports_completed_by_kind`), so it costs the
    /// same at any table size.
    pub async fn queue_shape(&self) -> Result<QueueShape> {
        let mut shape = QueueShape::default();
        for (state, kind, n, _) in self.totals().await? {
            let into = match state {
                State::Running => &mut shape.running,
                State::Pending | State::Submitting => &mut shape.ahead,
                _ => continue,
            };
            let Ok(n) = u64::try_from(n) else { continue };
            if n > 0 {
                *into.entry(kind).or_default() += n;
            }
        }
        for kind in [JobKind::Import, JobKind::Metadata] {
            let mean: Option<f64> = sqlx::query_scalar(
                "SELECT avg(extract(epoch FROM i.completed_at - a.finished_at) * 1000)::float8 \
                 FROM (SELECT id, completed_at FROM imports \
                       WHERE state = 'completed' AND kind = $1 AND completed_at IS NOT NULL \
                       ORDER BY updated_at DESC LIMIT $2) AS i \
                 JOIN import_attempts AS a ON a.import_id = i.id AND a.outcome = 'accepted' \
                 WHERE a.finished_at <= i.completed_at",
            )
            .bind(kind)
            .bind(MEAN_JOB_SAMPLE)
            .fetch_one(&self.pool)
            .await?;
            if let Some(m) = mean.filter(|m| m.is_finite() && *m >= 0.0) {
                shape.mean_job_ms.insert(kind, m);
            }
        }
        Ok(shape)
    }

    /// Failed rows back to `pending` with a fresh attempt count, due now (the database's
    /// clock); their history stays in `import_attempts`, so the old job's id and `result`
    /// are cleared from the row itself. With `all_failed`, every failed row (updated since
    /// `since`) too. A row a daemon is not holding (failed rows have no owner), so the
    /// `state = 'failed'` re-checked under the row lock is all the fencing there is.
    pub async fn retry(
        &self,
        ids: &[i64],
        all_failed: bool,
        since: Option<SystemTime>,
    ) -> Result<Vec<i64>> {
        let mut p = Params::default();
        let by_id = format!("id = ANY({})", p.next());
        let chosen = match (all_failed, since) {
            (false, _) => by_id,
            (true, None) => "true".to_owned(),
            (true, Some(_)) => format!("({by_id} OR updated_at >= {}::timestamptz)", p.next()),
        };
        let sql = format!(
            "UPDATE imports SET state = 'pending', attempts = 0, next_attempt_at = now(), \
               importly_job_id = NULL, result = NULL, completed_at = NULL, updated_at = now() \
             WHERE state = 'failed' AND {chosen} RETURNING id"
        );
        let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
        if !all_failed || since.is_some() {
            q = q.bind(ids);
        }
        if let (true, Some(since)) = (all_failed, since) {
            q = q.bind(clock::iso(since));
        }
        let mut done = q.fetch_all(&self.pool).await?;
        done.sort_unstable();
        Ok(done)
    }

    /// Cancels pending rows. Returns the ids cancelled; the caller reports the others. A row
    /// a daemon claims meanwhile is no longer pending when this statement gets its lock, and
    /// is left alone.
    pub async fn cancel(&self, ids: &[i64]) -> Result<Vec<i64>> {
        let mut done: Vec<i64> = sqlx::query_scalar(
            "UPDATE imports SET state = 'cancelled', completed_at = now(), updated_at = now(), \
               last_error = coalesce(last_error, 'cancelled by operator') \
             WHERE state = 'pending' AND id = ANY($1) RETURNING id",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        done.sort_unstable();
        Ok(done)
    }

    /// Deletes finished rows (and, by cascade, their logs) last changed before `before`.
    /// With `completed_only`, only `completed` rows; otherwise every terminal state. One
    /// statement per batch, so no transaction is long; rows another transaction holds are
    /// skipped (someone is changing them).
    ///
    /// The external_ids of the rows deleted go to `purged_external_ids` in the same
    /// statement, where a trigger makes a later INSERT with one of them a no-op: feeding the
    /// same file again must not import (and pay for) them twice.
    pub async fn purge(&self, before: SystemTime, completed_only: bool) -> Result<u64> {
        const BATCH: i64 = 1000;
        let states = if completed_only {
            "state = 'completed'"
        } else {
            "state IN ('completed', 'failed', 'cancelled')"
        };
        let sql = format!(
            "WITH doomed AS ( \
                 SELECT id, external_id FROM imports \
                 WHERE {states} AND updated_at < $1::timestamptz \
                 LIMIT $2 FOR UPDATE SKIP LOCKED), \
             remembered AS ( \
                 INSERT INTO purged_external_ids (external_id, purged_at) \
                 SELECT external_id, now() FROM doomed WHERE external_id IS NOT NULL \
                 ON CONFLICT (external_id) DO NOTHING), \
             gone AS (DELETE FROM imports WHERE id IN (SELECT id FROM doomed) RETURNING id) \
             SELECT count(*) FROM gone"
        );
        let before = clock::iso(before);
        let mut total = 0;
        loop {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&before)
                .bind(BATCH)
                .fetch_one(&self.pool)
                .await?;
            total += u64::try_from(n).unwrap_or(0);
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    /// Deletes audit entries older than `before`, so the audit log does not grow for ever
    /// (`purge --older-than` keeps the same span of history for both).
    pub async fn purge_audit(&self, before: SystemTime) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM audit WHERE at < $1::timestamptz")
            .bind(clock::iso(before))
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Deletes metadata cache entries fetched before `before`: `purge` keeps the cache from
    /// growing without bound (entries past `metadata.cache_ttl` are never reused anyway).
    pub async fn purge_metadata_cache(&self, before: SystemTime) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM metadata_cache WHERE fetched_at < $1::timestamptz")
                .bind(clock::iso(before))
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
