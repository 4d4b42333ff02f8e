//! PostgreSQL: attempts.

#[allow(unused_imports)]
use super::{PgStore, ROW_COLUMNS, iso, todo_verb};
#[allow(unused_imports)]
use crate::store::*;

impl PgStore {
    pub async fn record_attempt(
        &self,
        _import_id: i64,
        _r: &AttemptRecord,
        _keep: u32,
    ) -> Result<Written> {
        Err(todo_verb("record_attempt"))
    }

    pub async fn attempts(&self, _import_id: i64) -> Result<Vec<StoredAttempt>> {
        Err(todo_verb("attempts"))
    }
}
