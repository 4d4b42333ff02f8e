//! SQLite: dashboard.

use super::SqliteStore;
use crate::store::{ROW_COLUMNS, Result, Row};

/// After `SELECT <columns> `.
const LATEST_FAILED: &str =
    "FROM imports WHERE state = 'failed' ORDER BY updated_at DESC, id DESC LIMIT ?1";

impl SqliteStore {
    /// The `limit` most recently failed rows, newest first.
    pub async fn latest_failed(&self, limit: u32) -> Result<Vec<Row>> {
        Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} {LATEST_FAILED}"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn row(
        store: &SqliteStore,
        url: &str,
        state: &str,
        error: Option<&str>,
        at: &str,
    ) -> i64 {
        let mut w = store.writer().await.unwrap();
        let id: i64 = sqlx::query_scalar("INSERT INTO imports (url) VALUES (?) RETURNING id")
            .bind(url)
            .fetch_one(&mut *w)
            .await
            .unwrap();
        sqlx::query("UPDATE imports SET state = ?, last_error = ?, updated_at = ? WHERE id = ?")
            .bind(state)
            .bind(error)
            .bind(at)
            .bind(id)
            .execute(&mut *w)
            .await
            .unwrap();
        id
    }

    #[tokio::test]
    async fn latest_failures_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("q.db")).await.unwrap();
        let u = |n: u32| format!("https://e.com/{n}");
        row(&store, &u(1), "completed", None, "2026-12-07T01:00:10.000Z").await;
        row(&store, &u(2), "completed", None, "2026-12-07T01:00:50.000Z").await;
        row(&store, &u(3), "completed", None, "2026-12-07T01:02:00.000Z").await;
        row(&store, &u(4), "completed", None, "2026-12-07T00:00:00.000Z").await;
        let _a = row(
            &store,
            &u(5),
            "failed",
            Some("A"),
            "2026-12-07T01:00:00.000Z",
        )
        .await;
        let b = row(
            &store,
            &u(6),
            "failed",
            Some("B"),
            "2026-12-07T01:05:00.000Z",
        )
        .await;
        let a2 = row(
            &store,
            &u(7),
            "failed",
            Some("A"),
            "2026-12-07T01:01:00.000Z",
        )
        .await;

        let latest: Vec<i64> = store
            .latest_failed(2)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(latest, vec![b, a2]);
        store.close().await;
    }

    /// The query reads a range of the (state, updated_at) index, never the whole table:
    /// what keeps the dashboard fast with a million rows.
    #[tokio::test]
    async fn every_query_searches_the_state_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("q.db")).await.unwrap();
        let latest = format!("SELECT id {}", super::LATEST_FAILED);
        for sql in [&latest] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .fetch_all(&store.reader)
                    .await
                    .unwrap();
            let text: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
            assert!(
                text.iter()
                    .any(|d| d.starts_with("SEARCH imports USING") && d.contains("(state=?")),
                "{sql}: {text:?}"
            );
            assert!(
                !text.iter().any(|d| d.starts_with("SCAN imports")),
                "{sql}: {text:?}"
            );
        }
        store.close().await;
    }
}
