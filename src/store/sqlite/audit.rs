//! SQLite: audit.

use super::SqliteStore;
use crate::clock;
use crate::store::audit::*;
use crate::store::{ROW_COLUMNS, Result, Row};

impl SqliteStore {
    /// Records one operator action.
    pub async fn audit(
        &self,
        action: &str,
        target: &str,
        source: &str,
        ok: bool,
        detail: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (at, action, target, source, ok, detail) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(clock::now_iso())
        .bind(action)
        .bind(target)
        .bind(source)
        .bind(ok)
        .bind(detail)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    /// The latest `limit` actions, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        Ok(sqlx::query_as::<_, AuditEntry>(
            "SELECT id, at, action, target, source, ok, detail FROM audit \
             ORDER BY id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?)
    }

    /// One page of rows in id order (keyset: `id > after`), so a page costs the same at any
    /// depth. With a state, a range of the `imports_by_state_id` index, without one of the
    /// primary key (two statements: `?1 IS NULL OR state = ?1` would keep SQLite from
    /// using the index). `q` filters the rows as they are walked: a substring search, so a
    /// rare match may walk far.
    pub async fn page(&self, f: &PageFilter) -> Result<Vec<Row>> {
        let pattern = f.q.as_deref().filter(|q| !q.is_empty()).map(like_pattern);
        let by_state = if f.state.is_some() {
            "state = ?1"
        } else {
            "?1 IS NULL"
        };
        Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM imports \
             WHERE {by_state} AND id > ?2 \
               AND (?3 IS NULL OR url LIKE ?3 ESCAPE '\\' OR external_id LIKE ?3 ESCAPE '\\' \
                    OR last_error LIKE ?3 ESCAPE '\\') \
             ORDER BY id LIMIT ?4"
        )))
        .bind(f.state)
        .bind(f.after.unwrap_or(0))
        .bind(pattern)
        .bind(i64::from(f.limit))
        .fetch_all(&self.reader)
        .await?)
    }

    /// Failed rows grouped by their error, the biggest group first. Reads the partial index
    /// `imports_failed_by_error` (failed rows only), not the table.
    pub async fn failure_groups(&self, limit: u32) -> Result<Vec<FailureGroup>> {
        Ok(sqlx::query_as::<_, FailureGroup>(
            "SELECT last_error AS reason, count(*) AS rows, max(id) AS latest_id, \
                    max(updated_at) AS latest_at \
             FROM imports INDEXED BY imports_failed_by_error WHERE state = 'failed' \
             GROUP BY last_error ORDER BY rows DESC, latest_id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?)
    }

    /// Rows completed and failed per minute since `since`, oldest first; minutes
    /// without any are absent. A range of `imports_by_state` per state.
    pub async fn finished_per_minute(
        &self,
        since: std::time::SystemTime,
    ) -> Result<Vec<MinuteCount>> {
        // The minute is cut from `imports.updated_at`, read leniently (`state::LaxIso`).
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT substr(updated_at, 1, 16), state, count(*) FROM imports \
             WHERE state IN ('completed', 'failed') AND updated_at >= ? \
             GROUP BY 1, 2 ORDER BY 1",
        )
        .bind(crate::clock::iso(since))
        .fetch_all(&self.reader)
        .await?;
        Ok(per_minute(rows))
    }

    /// The ids of up to `cap` failed rows matching `q` (as [`Store::page`]), lowest first.
    pub async fn failed_ids(&self, q: Option<&str>, cap: u32) -> Result<Vec<i64>> {
        let pattern = q.filter(|q| !q.is_empty()).map(like_pattern);
        Ok(sqlx::query_scalar(
            "SELECT id FROM imports WHERE state = 'failed' \
               AND (?1 IS NULL OR url LIKE ?1 ESCAPE '\\' OR external_id LIKE ?1 ESCAPE '\\' \
                    OR last_error LIKE ?1 ESCAPE '\\') \
             ORDER BY id LIMIT ?2",
        )
        .bind(pattern)
        .bind(i64::from(cap))
        .fetch_all(&self.reader)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_pattern_escapes_wildcards() {
        assert_eq!(super::like_pattern("a%b_c\\d"), "%a\\%b\\_c\\\\d%");
    }
}
