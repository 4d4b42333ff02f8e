//! PostgreSQL: audit. The audit log and the admin API's row pages, failure groups and
//! throughput, with the behaviour of `store/sqlite/audit.rs`.

use super::ops::Params;
use super::{PgStore, ROW_COLUMNS, iso};
use crate::store::audit::{like_pattern, per_minute};
use crate::store::*;

/// Matches `$n` (a [`like_pattern`]) anywhere in the columns a search reads. ILIKE: SQLite's
/// LIKE ignores the case of ASCII letters, and a search must find the same rows on both.
fn matches(n: &str) -> String {
    format!(
        "(url ILIKE {n} ESCAPE '\\' OR external_id ILIKE {n} ESCAPE '\\' \
          OR last_error ILIKE {n} ESCAPE '\\')"
    )
}

impl PgStore {
    /// Records one operator action, at the database's time.
    pub async fn audit(
        &self,
        action: &str,
        target: &str,
        source: &str,
        ok: bool,
        detail: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (action, target, source, ok, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(action)
        .bind(target)
        .bind(source)
        .bind(ok)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The latest `limit` actions, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        Ok(sqlx::query_as::<_, AuditEntry>(concat!(
            "SELECT id, ",
            iso!("at"),
            " AS at, action, target, source, ok, detail FROM audit ORDER BY id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// One page of rows in id order (keyset: `id > after`), so a page costs the same at any
    /// depth: with a state a range of `imports_by_state_id`, without one of the primary key.
    /// `q` filters the rows as they are walked: a substring search, so a rare match may walk
    /// far.
    pub async fn page(&self, f: &PageFilter) -> Result<Vec<Row>> {
        let pattern = f.q.as_deref().filter(|q| !q.is_empty()).map(like_pattern);
        let mut p = Params::default();
        let mut w = vec![format!("id > {}", p.next())];
        if f.state.is_some() {
            w.push(format!("state = {}", p.next()));
        }
        if pattern.is_some() {
            w.push(matches(&p.next()));
        }
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM imports WHERE {} ORDER BY id LIMIT {}",
            w.join(" AND "),
            p.next()
        );
        let mut q = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql)).bind(f.after.unwrap_or(0));
        if let Some(state) = &f.state {
            q = q.bind(state);
        }
        if let Some(pattern) = &pattern {
            q = q.bind(pattern);
        }
        Ok(q.bind(i64::from(f.limit)).fetch_all(&self.pool).await?)
    }

    /// Failed rows grouped by their error, the biggest group first. The failed rows only
    /// (`imports_failed_by_error`), not the table.
    pub async fn failure_groups(&self, limit: u32) -> Result<Vec<FailureGroup>> {
        Ok(sqlx::query_as::<_, FailureGroup>(concat!(
            "SELECT last_error AS reason, count(*) AS rows, max(id) AS latest_id, ",
            iso!("max(updated_at)"),
            " AS latest_at FROM imports WHERE state = 'failed' \
             GROUP BY last_error ORDER BY rows DESC, latest_id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Rows completed and failed per minute since `since`, oldest first; minutes without
    /// any are absent. The minute is its start (UTC whatever the session's time zone),
    /// shown as `2026-12-07T01:52`. A range of `imports_by_state` per state.
    pub async fn finished_per_minute(
        &self,
        since: std::time::SystemTime,
    ) -> Result<Vec<MinuteCount>> {
        // The minute is cut from `imports.updated_at`, read leniently (`state::LaxIso`).
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI'), state, \
                    count(*) \
             FROM imports WHERE state IN ('completed', 'failed') AND updated_at >= $1::timestamptz \
             GROUP BY 1, 2 ORDER BY 1",
        )
        .bind(crate::clock::iso(since))
        .fetch_all(&self.pool)
        .await?;
        Ok(per_minute(rows))
    }

    /// The ids of up to `cap` failed rows matching `q` (as [`PgStore::page`]), lowest first.
    pub async fn failed_ids(&self, q: Option<&str>, cap: u32) -> Result<Vec<i64>> {
        let pattern = q.filter(|q| !q.is_empty()).map(like_pattern);
        let search = if pattern.is_some() {
            matches("$2")
        } else {
            "true".to_owned()
        };
        let sql = format!(
            "SELECT id FROM imports WHERE state = 'failed' AND {search} ORDER BY id LIMIT $1"
        );
        let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).bind(i64::from(cap));
        if let Some(pattern) = &pattern {
            query = query.bind(pattern);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }
}
