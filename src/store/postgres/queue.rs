//! PostgreSQL: queue.

#[allow(unused_imports)]
use super::{PgStore, ROW_COLUMNS, iso, todo_verb};
#[allow(unused_imports)]
use crate::store::*;

impl PgStore {
    pub async fn claim_due(
        &self,
        _kind: &str,
        _n: u32,
        _now: &str,
        _slots: u32,
    ) -> Result<Vec<Claimed>> {
        Err(todo_verb("claim_due"))
    }

    pub async fn next_due(&self, _kind: &str) -> Result<Option<String>> {
        Err(todo_verb("next_due"))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn reschedule(
        &self,
        _id: i64,
        _due: Option<&str>,
        _count: bool,
        _max_attempts: u32,
        _last_error: &str,
        _record: Option<&AttemptRecord>,
        _keep: u32,
    ) -> Result<Fate> {
        Err(todo_verb("reschedule"))
    }

    pub async fn fail(
        &self,
        _id: i64,
        _reason: &str,
        _result: Option<&str>,
        _record: Option<&AttemptRecord>,
        _keep: u32,
    ) -> Result<Written> {
        Err(todo_verb("fail"))
    }

    pub async fn running(&self) -> Result<Vec<Running>> {
        Err(todo_verb("running"))
    }

    pub async fn recover_submitting(
        &self,
        _keep: u32,
        _endpoint: fn(&str) -> &'static str,
    ) -> Result<Vec<i64>> {
        Err(todo_verb("recover_submitting"))
    }

    pub async fn release_ambiguous(
        &self,
        _id: i64,
        _endpoint: &str,
        _why: &str,
        _keep: u32,
    ) -> Result<Written> {
        Err(todo_verb("release_ambiguous"))
    }

    pub async fn release(&self, _ids: &[i64]) -> Result<()> {
        Err(todo_verb("release"))
    }
}
