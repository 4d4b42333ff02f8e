//! SQLite: attempts.

use super::SqliteStore;
use crate::store::Result;
use crate::store::attempts::*;

impl SqliteStore {
    /// Logs an exchange that changed nothing about the row (e.g. a failed status poll).
    pub async fn record_attempt(
        &self,
        import_id: i64,
        r: &AttemptRecord,
        keep: u32,
    ) -> Result<Written> {
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        let written = insert(&mut tx, import_id, r, keep).await?;
        tx.commit().await?;
        Ok(written)
    }

    /// The row's log, oldest first.
    pub async fn attempts(&self, import_id: i64) -> Result<Vec<StoredAttempt>> {
        Ok(sqlx::query_as::<_, StoredAttempt>(
            "SELECT id, import_id, attempt, method, endpoint, request_body, started_at, \
             finished_at, http_status, error, outcome, rate_limit, response_body, \
             body_truncated, job_id, daemon_version \
             FROM import_attempts WHERE import_id = ? ORDER BY id",
        )
        .bind(import_id)
        .fetch_all(&self.reader)
        .await?)
    }
}
