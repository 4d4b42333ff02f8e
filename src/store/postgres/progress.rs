//! PostgreSQL: progress, the group commit (see `store::progress`).
//!
//! As in SQLite the rows travel as one JSON array per list, whatever the group's size,
//! unpacked by `jsonb_to_recordset`: the started rows are one statement (their attempt
//! records and their move to `running`), the finished rows another. A group with only one
//! list is that one statement, atomic by itself; with both, the two run in one
//! transaction. A statement per row would cost a round trip per row, which is what bounds a
//! busy daemon's throughput.

use super::PgStore;
use super::attempts::json_list;
use crate::store::progress::*;
use crate::store::{MetadataRow, Result};

impl PgStore {
    /// Records a group: all of it or, on error, none of it. Returns the ids of the started
    /// rows that are `running` with their job now: a row reset, cancelled, deleted, or no
    /// longer this daemon's while its submit was in flight is not among them, and its job
    /// must not be polled.
    pub async fn record_progress(&self, p: &Progress) -> Result<Vec<i64>> {
        let me = self.me();
        // An empty list is no statement at all.
        let started = (!p.started.is_empty())
            .then(|| json_list(&p.started, &["rate_limit"]))
            .transpose()?;
        let finished = (!p.finished.is_empty())
            .then(|| json_list(&p.finished, &["result"]))
            .transpose()?;
        let mut running = match (started, finished) {
            (None, None) => Vec::new(),
            (Some(s), None) => start(&self.pool, s, me).await?,
            (None, Some(f)) => {
                finish(&self.pool, f, me).await?;
                Vec::new()
            }
            (Some(s), Some(f)) => {
                let mut tx = self.pool.begin().await?;
                let running = start(&mut *tx, s, me).await?;
                finish(&mut *tx, f, me).await?;
                tx.commit().await?;
                running
            }
        };
        running.sort_unstable();
        Ok(running)
    }
}

async fn start<'c, E>(db: E, started: String, me: i64) -> Result<Vec<i64>>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    Ok(sqlx::query_scalar(START)
        .bind(started)
        .bind(env!("CARGO_PKG_VERSION"))
        // Waiting for preflight metadata was not a failure; a failure reason stays.
        .bind(MetadataRow::WAITING)
        .bind(me)
        .fetch_all(db)
        .await?)
}

async fn finish<'c, E>(db: E, finished: String, me: i64) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    sqlx::query(FINISH)
        .bind(finished)
        .bind(me)
        .execute(db)
        .await?;
    Ok(())
}

/// `$1` the started rows (their attempt records, each with `import_id` and `job_id`), `$2`
/// our version, `$3` the preflight waiting text, `$4` this daemon's id.
///
/// As SQLite's: accepted records are never pruned; a row deleted mid-submit is skipped
/// rather than failing the group on its foreign key; a record already there is not written
/// twice (a retry after a COMMIT that reported an error but reached the log). The record is
/// written for any row that still exists, ours or not: it names a job that exists at
/// Importly, which the row's ticket must show even when the row was reset, cancelled or
/// handed to another daemon meanwhile. The row itself becomes `running` only if it is still
/// this daemon's `submitting` row (or already runs this very job: that retry again).
///
/// `live` locks the rows that exist (`FOR KEY SHARE`, which does not block other daemons'
/// updates, only a delete) so the records' foreign key cannot meet a concurrent delete.
/// `started` joins `live`, so no row is updated before `live` has locked it (a row this
/// very statement had already updated would be skipped by the lock, losing its record).
///
/// The earlier-record check is a `LATERAL ... LIMIT 1` probe rather than `NOT EXISTS`: the
/// planner may turn `NOT EXISTS` into a hash anti join that reads every accepted record,
/// and it did, with the cached generic plan, while the statistics still described a small
/// `import_attempts` (6.8-8.6 ms a group instead of about 1 ms; see BENCHMARKS.md). A
/// `LIMIT 1` subquery per row can only be an index probe (`import_attempts_by_import`).
const START: &str = "\
    WITH s AS ( \
      SELECT * FROM jsonb_to_recordset($1::jsonb) AS x (import_id bigint, attempt integer, \
        method text, endpoint text, request_body text, started_at timestamptz, \
        finished_at timestamptz, http_status integer, error text, outcome text, \
        rate_limit text, response_body text, body_truncated boolean, job_id text) \
    ), live AS ( \
      SELECT id FROM imports WHERE id IN (SELECT import_id FROM s) ORDER BY id FOR KEY SHARE \
    ), logged AS ( \
      INSERT INTO import_attempts (import_id, attempt, method, endpoint, request_body, \
        started_at, finished_at, http_status, error, outcome, rate_limit, response_body, \
        body_truncated, job_id, daemon_version) \
      SELECT s.import_id, s.attempt, s.method, s.endpoint, s.request_body, s.started_at, \
        s.finished_at, s.http_status, s.error, s.outcome, s.rate_limit::jsonb, \
        s.response_body, s.body_truncated, s.job_id, $2 \
      FROM s JOIN live ON live.id = s.import_id \
      LEFT JOIN LATERAL (SELECT 1 AS hit FROM import_attempts AS a \
                         WHERE a.import_id = s.import_id AND a.outcome = 'accepted' \
                           AND a.job_id = s.job_id LIMIT 1) AS earlier ON true \
      WHERE earlier.hit IS NULL \
    ), started AS ( \
      UPDATE imports SET state = 'running', importly_job_id = s.job_id, updated_at = now(), \
        last_error = CASE WHEN imports.last_error = $3 THEN NULL ELSE imports.last_error END \
      FROM s JOIN live ON live.id = s.import_id \
      WHERE imports.id = s.import_id AND imports.owner = $4 \
        AND (imports.state = 'submitting' \
             OR (imports.state = 'running' AND imports.importly_job_id = s.job_id)) \
      RETURNING imports.id \
    ) \
    SELECT id FROM started";

/// `$1` the finished rows, `$2` this daemon's id. Only this daemon's `running` rows
/// complete; a completed row loses the `last_error` of earlier failures and its owner.
const FINISH: &str = "\
    UPDATE imports SET state = 'completed', media_url = f.media_url, \
      credits_used = f.credits_used, result = f.result::jsonb, last_error = NULL, \
      completed_at = now(), updated_at = now(), owner = NULL \
    FROM jsonb_to_recordset($1::jsonb) AS f (id bigint, media_url text, credits_used bigint, \
      result text) \
    WHERE imports.id = f.id AND imports.state = 'running' AND imports.owner = $2";
