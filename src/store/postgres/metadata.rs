//! PostgreSQL: metadata rows and their cache.
//!
//! As in SQLite (`sqlite/metadata.rs`, the reference), with two things several daemons
//! need: every write to a claimed row is fenced by `owner = me`, and the credit guard's
//! "is there a metadata row for this URL, else insert one" is serialized per URL, because
//! two daemons may guard imports of the same URL at the same moment.

use super::{PgStore, iso};
use crate::store::metadata::{Newest, Preflight, waiting};
use crate::store::*;

/// `SELECT`s `metadata_cache`'s columns as [`CachedMetadata`] reads them, then `$rest`.
macro_rules! select_cached {
    ($rest:literal) => {
        concat!(
            "SELECT url, title, duration, formats::text AS formats, data::text AS data, \
             job_id, ",
            iso!("fetched_at"),
            " AS fetched_at FROM metadata_cache ",
            $rest
        )
    };
}

/// Makes the imports waiting on URL `$1` due now: run in the transaction that ends a
/// metadata row for that URL. The text is in the SQL, not bound, so that the `WHERE` is
/// that of the partial index `imports_waiting_for_preflight` and the lookup uses it.
const WAKE_WAITERS: &str = concat!(
    "UPDATE imports SET next_attempt_at = now() \
     WHERE state = 'pending' AND last_error = '",
    waiting!(),
    "' AND url = $1"
);

/// The advisory lock class of [`PgStore::ensure_metadata_row`] (the two-key form, so it
/// can never collide with a one-key lock such as sqlx's migration lock): "imdm".
const METADATA_ROW_LOCK: i32 = 0x696d_646d;

impl PgStore {
    /// Cached metadata fetched at or after `fresh_since`.
    pub async fn cached_metadata(
        &self,
        url: &str,
        fresh_since: std::time::SystemTime,
    ) -> Result<Option<CachedMetadata>> {
        Ok(sqlx::query_as::<_, CachedMetadata>(select_cached!(
            "WHERE url = $1 AND fetched_at >= $2::timestamptz"
        ))
        .bind(url)
        .bind(crate::clock::iso(fresh_since))
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Whether a metadata job for `url` is running at Importly, whichever daemon polls it
    /// (a second row for the same URL then waits for its result instead of paying for
    /// another call).
    pub async fn metadata_running(&self, url: &str) -> Result<bool> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM imports WHERE kind = 'metadata' AND url = $1 AND state = 'running' \
             LIMIT 1",
        )
        .bind(url)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// A metadata job completed: the row, the cache and the waiting imports in one
    /// transaction. Only a `running` row of ours is completed; one that is gone, or that
    /// another daemon adopted after our lease lapsed, answers [`Written::Gone`] and nothing
    /// is written (its new owner records the same job's result itself).
    pub async fn complete_metadata(
        &self,
        id: i64,
        job_id: &str,
        title: Option<&str>,
        duration: Option<f64>,
        formats: &str,
        data: &str,
    ) -> Result<Written> {
        let mut tx = self.pool.begin().await?;
        // An earlier failure's reason (a 401 before the key was fixed) is history now.
        let url: Option<String> = sqlx::query_scalar(
            "UPDATE imports SET state = 'completed', result = $2::jsonb, completed_at = now(), \
               last_error = NULL, updated_at = now(), owner = NULL \
             WHERE id = $1 AND state = 'running' AND owner = $3 RETURNING url",
        )
        .bind(id)
        .bind(data)
        .bind(self.me())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(url) = url else {
            // Nothing was written; ending the transaction explicitly rather than by drop.
            tx.rollback().await?;
            return Ok(Written::Gone);
        };
        sqlx::query(
            "INSERT INTO metadata_cache (url, title, duration, formats, data, job_id, fetched_at) \
             VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, now()) \
             ON CONFLICT (url) DO UPDATE SET title = excluded.title, \
               duration = excluded.duration, formats = excluded.formats, data = excluded.data, \
               job_id = excluded.job_id, fetched_at = excluded.fetched_at",
        )
        .bind(&url)
        .bind(title)
        .bind(duration)
        .bind(formats)
        .bind(data)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(WAKE_WAITERS)
            .bind(&url)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Written::Row)
    }

    /// A claimed metadata row whose URL is cached completes without an API call; its result
    /// is the cached `data` plus `"fromCache": true` and when it was fetched. Only a
    /// `submitting` row of ours: one released or recovered by another daemon is left alone.
    pub async fn complete_from_cache(&self, id: i64, cached: &CachedMetadata) -> Result<Written> {
        let mut data: serde_json::Value =
            serde_json::from_str(&cached.data).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(m) = &mut data {
            m.insert("fromCache".into(), true.into());
            m.insert(
                "cachedAt".into(),
                crate::clock::iso(cached.fetched_at).into(),
            );
        }
        let mut tx = self.pool.begin().await?;
        let url: Option<String> = sqlx::query_scalar(
            "UPDATE imports SET state = 'completed', result = $2::jsonb, importly_job_id = $3, \
               last_error = NULL, completed_at = now(), updated_at = now(), owner = NULL \
             WHERE id = $1 AND state = 'submitting' AND owner = $4 RETURNING url",
        )
        .bind(id)
        .bind(data.to_string())
        .bind(&cached.job_id)
        .bind(self.me())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(url) = url else {
            return Ok(Written::Gone);
        };
        // Imports whose guard waits on this row's URL may go now.
        sqlx::query(WAKE_WAITERS)
            .bind(&url)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Written::Row)
    }

    /// Makes sure the guard of import row `import_id` has metadata for `url` to wait on;
    /// the verdicts are SQLite's (see `SqliteStore::ensure_metadata_row`).
    ///
    /// Two daemons guarding imports of one URL at once would both see no metadata row and
    /// both insert one (READ COMMITTED: neither sees the other's uncommitted insert), paying
    /// for the same metadata twice. A transaction-scoped advisory lock on the URL makes the
    /// look-then-insert one step per URL: the second caller waits for the first to commit,
    /// and its next statement's snapshot then sees the first one's row. A hash collision
    /// only makes two URLs wait for each other, for one short transaction.
    pub async fn ensure_metadata_row(&self, import_id: i64, url: &str) -> Result<MetadataRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(METADATA_ROW_LOCK)
            .bind(url)
            .execute(&mut *tx)
            .await?;
        let import_error: Option<Option<String>> =
            sqlx::query_scalar("SELECT last_error FROM imports WHERE id = $1")
                .bind(import_id)
                .fetch_optional(&mut *tx)
                .await?;
        let newest: Option<Newest> = sqlx::query_as(
            "SELECT state, last_error FROM imports WHERE kind = 'metadata' AND url = $1 \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(url)
        .fetch_optional(&mut *tx)
        .await?;
        let preflight = Preflight::new(import_error.flatten().as_deref(), newest);
        let cached = if preflight.wants_cache() {
            sqlx::query_as::<_, CachedMetadata>(select_cached!("WHERE url = $1"))
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
                    "INSERT INTO imports (url, kind) VALUES ($1, 'metadata') RETURNING id",
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
