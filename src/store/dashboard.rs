//! What the dashboard reads that the operator commands do not: completions per minute, the
//! latest failures, failures grouped by reason. Each is answered from the
//! `imports_by_state (state, updated_at)` index: a range of one state's rows, never the whole
//! table.

use serde::Serialize;

use super::{ROW_COLUMNS, Result, Row, Store};

/// Failed rows sharing one `last_error`.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct FailureGroup {
    /// `None` for failed rows without a recorded reason.
    pub reason: Option<String>,
    pub rows: i64,
    /// The group's lowest id, as an example.
    pub first_id: i64,
    pub last_at: String,
}

const PER_MINUTE: &str = "SELECT substr(updated_at, 1, 16) AS minute, count(*) FROM imports \
     WHERE state = 'completed' AND updated_at >= ?1 GROUP BY minute ORDER BY minute";
/// After `SELECT <columns> `.
const LATEST_FAILED: &str =
    "FROM imports WHERE state = 'failed' ORDER BY updated_at DESC, id DESC LIMIT ?1";
const GROUPS: &str = "SELECT last_error AS reason, count(*) AS rows, min(id) AS first_id, \
            max(updated_at) AS last_at \
     FROM imports WHERE state = 'failed' GROUP BY last_error \
     ORDER BY rows DESC, last_at DESC LIMIT ?1";

impl Store {
    /// `(minute, completions)` for rows completed at or after `since` (ISO text), oldest
    /// minute first; the minute is the first 16 characters of the ISO time
    /// (`2026-12-07T01:32`). Minutes without completions are absent. A completed row's
    /// `updated_at` is when it completed (only `retry` and `purge` touch it later).
    pub async fn completions_per_minute(&self, since: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(PER_MINUTE)
            .bind(since)
            .fetch_all(&self.reader)
            .await?)
    }

    /// The `limit` most recently failed rows, newest first.
    pub async fn latest_failed(&self, limit: u32) -> Result<Vec<Row>> {
        Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} {LATEST_FAILED}"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?)
    }

    /// Failed rows grouped by `last_error`, the largest `limit` groups first.
    pub async fn failure_groups(&self, limit: u32) -> Result<Vec<FailureGroup>> {
        Ok(sqlx::query_as::<_, FailureGroup>(GROUPS)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;

    async fn row(store: &Store, url: &str, state: &str, error: Option<&str>, at: &str) -> i64 {
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
    async fn per_minute_latest_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q.db")).await.unwrap();
        let u = |n: u32| format!("https://e.com/{n}");
        row(&store, &u(1), "completed", None, "2026-12-07T01:00:10.000Z").await;
        row(&store, &u(2), "completed", None, "2026-12-07T01:00:50.000Z").await;
        row(&store, &u(3), "completed", None, "2026-12-07T01:02:00.000Z").await;
        row(&store, &u(4), "completed", None, "2026-12-07T00:00:00.000Z").await;
        let a = row(
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

        let per = store
            .completions_per_minute("2026-12-07T00:30:00.000Z")
            .await
            .unwrap();
        assert_eq!(
            per,
            vec![
                ("2026-12-07T01:00".to_owned(), 2),
                ("2026-12-07T01:02".to_owned(), 1)
            ]
        );
        let latest: Vec<i64> = store
            .latest_failed(2)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(latest, vec![b, a2]);
        let groups = store.failure_groups(10).await.unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].reason.as_deref(), Some("A"));
        assert_eq!((groups[0].rows, groups[0].first_id), (2, a));
        assert_eq!(groups[0].last_at, "2026-12-07T01:01:00.000Z");
        assert_eq!((groups[1].rows, groups[1].first_id), (1, b));
        store.close().await;
    }

    /// Each query reads a range of the (state, updated_at) index, never the whole table:
    /// what keeps the dashboard fast with a million rows.
    #[tokio::test]
    async fn every_query_searches_the_state_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q.db")).await.unwrap();
        let latest = format!("SELECT id {}", super::LATEST_FAILED);
        for sql in [super::PER_MINUTE, &latest, super::GROUPS] {
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
