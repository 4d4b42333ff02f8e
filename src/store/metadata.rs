//! The metadata cache and the rows the credit guard creates.

use serde::Serialize;

use super::{Result, Store};
use crate::clock;

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct CachedMetadata {
    pub url: String,
    pub title: Option<String>,
    pub duration: Option<f64>,
    pub formats: String,
    pub data: String,
    pub job_id: Option<String>,
    pub fetched_at: String,
}

/// Where a URL's preflight metadata stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataRow {
    /// A metadata row for the URL is queued or in progress.
    InProgress,
    /// The newest metadata row for the URL failed, with its reason.
    Failed(String),
    /// None queued; one was just inserted with this id.
    Queued(i64),
}

impl Store {
    /// Cached metadata fetched at or after `fresh_since` (ISO time).
    pub async fn cached_metadata(
        &self,
        url: &str,
        fresh_since: &str,
    ) -> Result<Option<CachedMetadata>> {
        Ok(sqlx::query_as::<_, CachedMetadata>(
            "SELECT url, title, duration, formats, data, job_id, fetched_at FROM metadata_cache \
             WHERE url = ? AND fetched_at >= ?",
        )
        .bind(url)
        .bind(fresh_since)
        .fetch_optional(&self.reader)
        .await?)
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
    ) -> Result<()> {
        let mut tx = self.begin_immediate().await?;
        let now = clock::now_iso();
        sqlx::query(
            "UPDATE imports SET state = 'completed', result = ?2, completed_at = ?3, \
               updated_at = ?3 WHERE id = ?1 AND state = 'running'",
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
        tx.commit().await?;
        Ok(())
    }

    /// A claimed metadata row whose URL is cached completes without an API call; its result
    /// is the cached `data` plus `"fromCache": true` and when it was fetched.
    pub async fn complete_from_cache(&self, id: i64, cached: &CachedMetadata) -> Result<()> {
        let mut data: serde_json::Value =
            serde_json::from_str(&cached.data).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(m) = &mut data {
            m.insert("fromCache".into(), true.into());
            m.insert("cachedAt".into(), cached.fetched_at.clone().into());
        }
        let now = clock::now_iso();
        sqlx::query(
            "UPDATE imports SET state = 'completed', result = ?2, importly_job_id = ?3, \
               last_error = NULL, completed_at = ?4, updated_at = ?4 \
             WHERE id = ?1 AND state = 'submitting'",
        )
        .bind(id)
        .bind(data.to_string())
        .bind(&cached.job_id)
        .bind(&now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Makes sure a metadata row exists for `url` for the guard to wait on: reports one in
    /// progress, the failure of the newest one if it failed after `since`, or queues one.
    pub async fn ensure_metadata_row(&self, url: &str, since: &str) -> Result<MetadataRow> {
        let mut tx = self.begin_immediate().await?;
        let newest: Option<(String, Option<String>, String)> = sqlx::query_as(
            "SELECT state, last_error, updated_at FROM imports WHERE kind = 'metadata' AND url = ? \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(url)
        .fetch_optional(&mut *tx)
        .await?;
        let verdict = match newest {
            Some((state, _, _)) if matches!(&state[..], "pending" | "submitting" | "running") => {
                MetadataRow::InProgress
            }
            Some((state, err, updated)) if state == "failed" && updated.as_str() >= since => {
                MetadataRow::Failed(err.unwrap_or_else(|| "metadata job failed".into()))
            }
            _ => {
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
