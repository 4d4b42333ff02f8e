//! PostgreSQL: dashboard.

#[allow(unused_imports)]
use super::{PgStore, ROW_COLUMNS, iso, todo_verb};
#[allow(unused_imports)]
use crate::store::*;

impl PgStore {
    pub async fn latest_failed(&self, _limit: u32) -> Result<Vec<Row>> {
        Err(todo_verb("latest_failed"))
    }
}
