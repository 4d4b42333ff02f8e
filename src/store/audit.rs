//! The audit log of operator actions and the row pages of the admin API.

use serde::Serialize;

use super::{ROW_COLUMNS, Result, Row, Store};
use crate::clock;

/// One operator action as recorded.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub action: String,
    pub target: String,
    pub source: String,
    pub ok: bool,
    pub detail: Option<String>,
}

/// What a page of rows is cut by: all filters apply.
#[derive(Clone, Debug, Default)]
pub struct PageFilter {
    pub state: Option<String>,
    /// Matched, as a substring, against url, external_id and last_error.
    pub q: Option<String>,
    /// Rows with an id above this one (the previous page's last id).
    pub after: Option<i64>,
    pub limit: u32,
}

/// `q` as a LIKE pattern matching it anywhere, with `%`, `_` and `\` taken literally.
fn like_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Store {
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
        .bind(&f.state)
        .bind(f.after.unwrap_or(0))
        .bind(pattern)
        .bind(i64::from(f.limit))
        .fetch_all(&self.reader)
        .await?)
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
