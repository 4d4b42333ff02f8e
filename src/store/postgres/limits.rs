//! PostgreSQL: limits.

#[allow(unused_imports)]
use super::{PgStore, ROW_COLUMNS, iso, todo_verb};
#[allow(unused_imports)]
use crate::store::*;

impl PgStore {
    pub async fn pauses(&self) -> Result<Vec<StoredPause>> {
        Err(todo_verb("pauses"))
    }

    pub async fn set_pause(&self, _p: &StoredPause) -> Result<()> {
        Err(todo_verb("set_pause"))
    }

    pub async fn clear_pause(&self, _scope: &str) -> Result<()> {
        Err(todo_verb("clear_pause"))
    }

    pub async fn clear_pauses(&self) -> Result<u64> {
        Err(todo_verb("clear_pauses"))
    }

    pub async fn buckets(&self) -> Result<Vec<StoredBucket>> {
        Err(todo_verb("buckets"))
    }

    pub async fn save_buckets(&self, _buckets: &[StoredBucket]) -> Result<()> {
        Err(todo_verb("save_buckets"))
    }
}
