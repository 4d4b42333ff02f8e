//! SQLite: progress.

use super::SqliteStore;
use crate::clock;
use crate::store::progress::*;
use crate::store::{Result, StoreError};

impl SqliteStore {
    /// Records a group in one transaction: all of it or, on error, none of it. Returns the
    /// ids of the started rows that are `running` with their job now: a row reset,
    /// cancelled or deleted while its submit was in flight is not among them, and its job
    /// must not be polled.
    pub async fn record_progress(&self, p: &Progress) -> Result<Vec<i64>> {
        if p.is_empty() {
            return Ok(Vec::new());
        }
        let now = clock::now_iso();
        let invalid = |e: serde_json::Error| StoreError::Invalid(e.to_string());
        let started = serde_json::to_string(&p.started).map_err(invalid)?;
        let finished = serde_json::to_string(&p.finished).map_err(invalid)?;
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        // One statement list, one round trip: an empty array makes its statements no-ops.
        // Only the `running` update returns rows.
        let running: Vec<i64> = sqlx::query_scalar(RECORD_PROGRESS)
            .bind(&started)
            .bind(env!("CARGO_PKG_VERSION"))
            .bind(&now)
            // Waiting for preflight metadata was not a failure; a failure reason stays.
            .bind(crate::store::MetadataRow::WAITING)
            .bind(&finished)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(running)
    }
}

/// `?1` the started rows (their attempt records, each with `import_id` and `job_id`), `?2`
/// our version, `?3` now, `?4` the preflight waiting text, `?5` the finished rows. Accepted records are
/// never pruned, so there is no trimming to do. A row its owner deleted mid-submit is
/// skipped rather than failing the whole group on its foreign key, and a record already
/// there is not written twice (a retry after a COMMIT that reported an error but reached
/// the log). A started row becomes `running` only from `submitting` (or is already running
/// this very job: that retry again), so a row reset or cancelled meanwhile keeps its state;
/// the `accepted` record stays in its log all the same, naming the orphaned job. A completed
/// row loses the `last_error` of earlier failures.
const RECORD_PROGRESS: &str = "\
    INSERT INTO import_attempts (import_id, attempt, method, endpoint, request_body, \
      started_at, finished_at, http_status, error, outcome, rate_limit, response_body, \
      body_truncated, job_id, daemon_version) \
    SELECT r.value ->> 'import_id', r.value ->> 'attempt', r.value ->> 'method', \
      r.value ->> 'endpoint', r.value ->> 'request_body', r.value ->> 'started_at', \
      r.value ->> 'finished_at', r.value ->> 'http_status', r.value ->> 'error', \
      r.value ->> 'outcome', r.value ->> 'rate_limit', r.value ->> 'response_body', \
      r.value ->> 'body_truncated', r.value ->> 'job_id', ?2 \
    FROM json_each(?1) AS r \
    WHERE EXISTS (SELECT 1 FROM imports WHERE id = r.value ->> 'import_id') \
      AND NOT EXISTS (SELECT 1 FROM import_attempts AS a \
                      WHERE a.import_id = r.value ->> 'import_id' \
                        AND a.outcome = 'accepted' AND a.job_id = r.value ->> 'job_id'); \
    UPDATE imports SET state = 'running', importly_job_id = s.value ->> 'job_id', \
      updated_at = ?3, last_error = CASE WHEN last_error = ?4 THEN NULL ELSE last_error END \
    FROM json_each(?1) AS s WHERE imports.id = s.value ->> 'import_id' \
      AND (imports.state = 'submitting' \
           OR (imports.state = 'running' AND imports.importly_job_id = s.value ->> 'job_id')) \
    RETURNING imports.id; \
    UPDATE imports SET state = 'completed', media_url = f.value ->> 'media_url', \
      credits_used = f.value ->> 'credits_used', result = f.value ->> 'result', \
      last_error = NULL, completed_at = ?3, updated_at = ?3 \
    FROM json_each(?5) AS f WHERE imports.id = f.value ->> 'id' AND imports.state = 'running'";
