//! SQLite: metadata.

use std::time::SystemTime;

use super::SqliteStore;
use crate::clock;
use crate::store::Result;
use crate::store::attempts::{self, Written};
use crate::store::metadata::*;

/// Makes the imports waiting on metadata row `?1`'s URL due at `?2`: run in the transaction
/// that ends that metadata row. The text is in the SQL, not bound, so that the `WHERE` is
/// that of the partial index `imports_waiting_for_preflight` and the lookup uses it.
pub(crate) const WAKE_WAITERS: &str = concat!(
    "UPDATE imports SET next_attempt_at = ?2 \
     WHERE state = 'pending' AND last_error = '",
    waiting!(),
    "' AND url = (SELECT url FROM imports WHERE id = ?1 AND kind = 'metadata')"
);

impl SqliteStore {
    /// Cached metadata fetched at or after `fresh_since` (ISO time).
    pub async fn cached_metadata(
        &self,
        url: &str,
        fresh_since: SystemTime,
    ) -> Result<Option<CachedMetadata>> {
        Ok(sqlx::query_as::<_, CachedMetadata>(
            "SELECT url, title, duration, formats, data, job_id, fetched_at FROM metadata_cache \
             WHERE url = ? AND fetched_at >= ?",
        )
        .bind(url)
        .bind(clock::iso(fresh_since))
        .fetch_optional(&self.reader)
        .await?)
    }

    /// Whether a metadata job for `url` is running at Importly (a second row for the same
    /// URL then waits for its result instead of paying for another call).
    pub async fn metadata_running(&self, url: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM imports WHERE kind = 'metadata' AND url = ? AND state = 'running' \
             LIMIT 1",
        )
        .bind(url)
        .fetch_optional(&self.reader)
        .await?;
        Ok(found.is_some())
    }

    /// A metadata job completed: the row and the cache in one transaction.
    pub async fn complete_metadata(
        &self,
        id: i64,
        job_id: &str,
        title: Option<&str>,
        duration: Option<f64>,
        formats: &str,
        data: &str,
    ) -> Result<Written> {
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        if attempts::exists(&mut tx, id).await? == Written::Gone {
            return Ok(Written::Gone);
        }
        let now = clock::now_iso();
        // An earlier failure's reason (a 401 before the key was fixed) is history now.
        sqlx::query(
            "UPDATE imports SET state = 'completed', result = ?2, completed_at = ?3, \
               last_error = NULL, updated_at = ?3 WHERE id = ?1 AND state = 'running'",
        )
        .bind(id)
        .bind(data)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO metadata_cache (url, title, duration, formats, data, job_id, fetched_at) \
             SELECT url, ?2, ?3, ?4, ?5, ?6, ?7 FROM imports WHERE id = ?1 \
             ON CONFLICT (url) DO UPDATE SET title = excluded.title, \
               duration = excluded.duration, formats = excluded.formats, data = excluded.data, \
               job_id = excluded.job_id, fetched_at = excluded.fetched_at",
        )
        .bind(id)
        .bind(title)
        .bind(duration)
        .bind(formats)
        .bind(data)
        .bind(job_id)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(WAKE_WAITERS)
            .bind(id)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Written::Row)
    }

    /// A claimed metadata row whose URL is cached completes without an API call; its result
    /// is the cached `data` plus `"fromCache": true` and when it was fetched.
    /// A row no longer `submitting` (deleted, reset) is [`Written::Gone`], and wakes nobody.
    pub async fn complete_from_cache(&self, id: i64, cached: &CachedMetadata) -> Result<Written> {
        let mut data: serde_json::Value =
            serde_json::from_str(&cached.data).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(m) = &mut data {
            m.insert("fromCache".into(), true.into());
            m.insert("cachedAt".into(), clock::iso(cached.fetched_at).into());
        }
        let now = clock::now_iso();
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        let completed = sqlx::query(
            "UPDATE imports SET state = 'completed', result = ?2, importly_job_id = ?3, \
               last_error = NULL, completed_at = ?4, updated_at = ?4 \
             WHERE id = ?1 AND state = 'submitting'",
        )
        .bind(id)
        .bind(data.to_string())
        .bind(&cached.job_id)
        .bind(&now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if completed == 0 {
            return Ok(Written::Gone);
        }
        // Imports whose guard waits on this row's URL may go now.
        sqlx::query(WAKE_WAITERS)
            .bind(id)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Written::Row)
    }

    /// Makes sure the guard of import row `import_id` has metadata for `url` to wait on.
    /// If the import was already waiting (see [`MetadataRow::WAITING`]), the newest metadata
    /// row for the URL ended during the wait: its result decides ([`MetadataRow::Ready`] or
    /// [`MetadataRow::Failed`]). Otherwise (a new row, a retried one, or a daemon restart
    /// in between), a row in progress is waited on and anything else queues a fresh fetch:
    /// failures are not cached, so an old failure never fails a new import attempt.
    pub async fn ensure_metadata_row(&self, import_id: i64, url: &str) -> Result<MetadataRow> {
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        let import_error: Option<Option<String>> =
            sqlx::query_scalar("SELECT last_error FROM imports WHERE id = ?")
                .bind(import_id)
                .fetch_optional(&mut *tx)
                .await?;
        let newest: Option<Newest> = sqlx::query_as(
            "SELECT state, last_error FROM imports WHERE kind = 'metadata' AND url = ? \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(url)
        .fetch_optional(&mut *tx)
        .await?;
        let preflight = Preflight::new(import_error.flatten().as_deref(), newest);
        let cached = if preflight.wants_cache() {
            sqlx::query_as::<_, CachedMetadata>(
                "SELECT url, title, duration, formats, data, job_id, fetched_at \
                 FROM metadata_cache WHERE url = ?",
            )
            .bind(url)
            .fetch_optional(&mut *tx)
            .await?
        } else {
            None
        };
        let verdict = match preflight.decide(cached) {
            Some(verdict) => verdict,
            None => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO imports (url, kind) VALUES (?, 'metadata') RETURNING id",
                )
                .bind(url)
                .fetch_one(&mut *tx)
                .await?;
                MetadataRow::Queued(id)
            }
        };
        tx.commit().await?;
        Ok(verdict)
    }
}
