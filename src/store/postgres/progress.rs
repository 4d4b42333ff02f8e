//! PostgreSQL: progress.

#[allow(unused_imports)]
use super::{PgStore, ROW_COLUMNS, iso, todo_verb};
#[allow(unused_imports)]
use crate::store::*;

impl PgStore {
    pub async fn record_progress(&self, _p: &Progress) -> Result<Vec<i64>> {
        Err(todo_verb("record_progress"))
    }
}
