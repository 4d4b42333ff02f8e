//! PostgreSQL: dashboard.

use super::{PgStore, ROW_COLUMNS};
use crate::store::*;

impl PgStore {
    /// The `limit` most recently failed rows, newest first: a range of the
    /// `imports_by_state (state, updated_at)` index, read backwards.
    pub async fn latest_failed(&self, limit: u32) -> Result<Vec<Row>> {
        Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM imports WHERE state = 'failed' \
             ORDER BY updated_at DESC, id DESC LIMIT $1"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }
}
