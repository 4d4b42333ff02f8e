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

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::importly::JobKind;
    use crate::store::*;
    #[allow(unused_imports)]
    use std::time::{Duration, SystemTime};

    async fn row(store: &SqliteStore, url: &str) -> i64 {
        let ids = store
            .enqueue(&[crate::store::EnqueueRow {
                url: url.into(),
                ..Default::default()
            }])
            .await
            .unwrap();
        ids[0]
    }

    fn accepted(id: i64, job: &str) -> Started {
        Started::new(
            id,
            job,
            AttemptRecord {
                attempt: 1,
                method: "POST".into(),
                endpoint: "/import".into(),
                request_body: Some(r#"{"url":"x"}"#.into()),
                started_at: clock::parse_iso("2026-11-25T10:00:00.000Z").unwrap(),
                finished_at: clock::parse_iso("2026-11-25T10:00:00.100Z").unwrap(),
                http_status: Some(202),
                outcome: "accepted".into(),
                response_body: Some(r#"{"jobId":"j"}"#.into()),
                body_truncated: true,
                ..AttemptRecord::default()
            },
        )
    }

    #[tokio::test]
    async fn a_group_starts_and_finishes_rows_in_one_go_and_skips_deleted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("q.db")).await.unwrap();
        let (a, b, gone) = (
            row(&store, "https://e.com/a").await,
            row(&store, "https://e.com/b").await,
            row(&store, "https://e.com/gone").await,
        );
        let claimed = store
            .claim_due(JobKind::Import, 3, SystemTime::now(), u32::MAX)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 3);
        // Its owner deletes a row while its submit is in flight.
        sqlx::query("DELETE FROM imports WHERE id = ?")
            .bind(gone)
            .execute(&mut *store.writer().await.unwrap())
            .await
            .unwrap();

        let first = Progress {
            started: vec![
                accepted(a, "job-a"),
                accepted(b, "job-b"),
                accepted(gone, "job-x"),
            ],
            finished: vec![],
        };
        store.record_progress(&first).await.unwrap();
        // A retry of the same group (its COMMIT reported failed but reached the log).
        store.record_progress(&first).await.unwrap();
        let ra = store.row(a).await.unwrap().unwrap();
        assert_eq!(ra.state, "running");
        assert_eq!(ra.importly_job_id.as_deref(), Some("job-a"));
        let log = store.attempts(a).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].http_status, Some(202));
        assert!(log[0].body_truncated);
        assert_eq!(log[0].job_id.as_deref(), Some("job-a"));
        assert_eq!(log[0].request_body.as_deref(), Some(r#"{"url":"x"}"#));
        assert!(store.attempts(gone).await.unwrap().is_empty());

        let second = Progress {
            started: vec![],
            finished: vec![
                Finished {
                    id: a,
                    media_url: Some("https://cdn/a.mp4".into()),
                    credits_used: Some(3),
                    result: r#"{"mediaUrl":"https://cdn/a.mp4"}"#.into(),
                },
                Finished {
                    id: b,
                    media_url: None,
                    credits_used: None,
                    result: "{}".into(),
                },
            ],
        };
        store.record_progress(&second).await.unwrap();
        let ra = store.row(a).await.unwrap().unwrap();
        assert_eq!(ra.state, "completed");
        assert_eq!(ra.media_url.as_deref(), Some("https://cdn/a.mp4"));
        assert_eq!(ra.credits_used, Some(3));
        assert_eq!(
            ra.result.as_deref(),
            Some(r#"{"mediaUrl":"https://cdn/a.mp4"}"#)
        );
        assert!(ra.completed_at.is_some());
        let rb = store.row(b).await.unwrap().unwrap();
        assert_eq!((rb.state.as_str(), rb.media_url), ("completed", None));
        store.close().await;
    }

    /// Issue 11: a row reset or cancelled while its submit was in flight must not become
    /// `running` with the stale job, and the scheduler must not poll that job.
    #[tokio::test]
    async fn only_rows_still_submitting_are_started_and_returned() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("q.db")).await.unwrap();
        let (a, reset, cancelled) = (
            row(&store, "https://e.com/a").await,
            row(&store, "https://e.com/reset").await,
            row(&store, "https://e.com/cancelled").await,
        );
        let claimed = store
            .claim_due(JobKind::Import, 3, SystemTime::now(), u32::MAX)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 3);
        // An operator resets one row and cancels another while their submits are in flight.
        for (id, state) in [(reset, "pending"), (cancelled, "cancelled")] {
            sqlx::query("UPDATE imports SET state = ? WHERE id = ?")
                .bind(state)
                .bind(id)
                .execute(&mut *store.writer().await.unwrap())
                .await
                .unwrap();
        }
        let group = Progress {
            started: vec![
                accepted(a, "job-a"),
                accepted(reset, "job-r"),
                accepted(cancelled, "job-c"),
            ],
            finished: vec![],
        };
        assert_eq!(store.record_progress(&group).await.unwrap(), vec![a]);
        // A retry of the same group still reports the row it started.
        assert_eq!(store.record_progress(&group).await.unwrap(), vec![a]);
        for (id, state) in [(reset, "pending"), (cancelled, "cancelled")] {
            let r = store.row(id).await.unwrap().unwrap();
            assert_eq!((r.state.as_str(), r.importly_job_id), (state, None));
            // The orphaned job stays named in the row's log, for the ticket.
            let log = store.attempts(id).await.unwrap();
            assert_eq!(log.len(), 1);
            assert_eq!(log[0].outcome, "accepted");
        }
        store.close().await;
    }

    /// Issue 11: a row that completes after an earlier failure (a 401 before the key was
    /// fixed) no longer shows that failure as its last error.
    #[tokio::test]
    async fn a_completed_row_forgets_its_earlier_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("q.db")).await.unwrap();
        let a = row(&store, "https://e.com/a").await;
        store
            .claim_due(JobKind::Import, 1, SystemTime::now(), u32::MAX)
            .await
            .unwrap();
        let fate = store
            .reschedule(a, None, false, 8, "API key rejected (HTTP 401)", None, 50)
            .await
            .unwrap();
        assert_eq!(fate, crate::store::Fate::Pending);
        store
            .claim_due(JobKind::Import, 1, SystemTime::now(), u32::MAX)
            .await
            .unwrap();
        let started = Progress {
            started: vec![accepted(a, "job-a")],
            finished: vec![],
        };
        store.record_progress(&started).await.unwrap();
        let finished = Progress {
            started: vec![],
            finished: vec![Finished {
                id: a,
                media_url: None,
                credits_used: None,
                result: "{}".into(),
            }],
        };
        store.record_progress(&finished).await.unwrap();
        let r = store.row(a).await.unwrap().unwrap();
        assert_eq!((r.state.as_str(), r.last_error), ("completed", None));

        // The same for a metadata row, completed by its own statement.
        let m = store
            .enqueue(&[crate::store::EnqueueRow {
                url: "https://e.com/m".into(),
                kind: Some(JobKind::Metadata),
                ..Default::default()
            }])
            .await
            .unwrap()[0];
        store
            .claim_due(JobKind::Metadata, 1, SystemTime::now(), u32::MAX)
            .await
            .unwrap();
        let fate = store
            .reschedule(m, None, false, 8, "API key rejected (HTTP 401)", None, 50)
            .await
            .unwrap();
        assert_eq!(fate, crate::store::Fate::Pending);
        store
            .claim_due(JobKind::Metadata, 1, SystemTime::now(), u32::MAX)
            .await
            .unwrap();
        store
            .record_progress(&Progress {
                started: vec![accepted(m, "job-m")],
                finished: vec![],
            })
            .await
            .unwrap();
        let written = store
            .complete_metadata(m, "job-m", None, None, "[]", "{}")
            .await
            .unwrap();
        assert_eq!(written, crate::store::Written::Row);
        let r = store.row(m).await.unwrap().unwrap();
        assert_eq!((r.state.as_str(), r.last_error), ("completed", None));
        store.close().await;
    }
}
