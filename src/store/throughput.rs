//! Completions per minute, for the dashboard's throughput chart. A completed row's
//! `updated_at` is when it completed (nothing touches a finished row but `retry` and
//! `purge`), so the `imports_by_state (state, updated_at)` index answers this with a range
//! scan of the last hour's completions only, whatever the table's size.

use super::{Result, Store};

impl Store {
    /// `(minute, completions)` for rows completed at or after `since` (ISO text), oldest
    /// minute first; the minute is the first 16 characters of the ISO time
    /// (`2026-12-07T01:32`). Minutes without completions are absent.
    pub async fn completions_per_minute(&self, since: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT substr(updated_at, 1, 16) AS minute, count(*) FROM imports \
             WHERE state = 'completed' AND updated_at >= ?1 GROUP BY minute ORDER BY minute",
        )
        .bind(since)
        .fetch_all(&self.reader)
        .await?)
    }
}
