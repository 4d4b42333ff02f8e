//! PostgreSQL: audit.

#[allow(unused_imports)]
use super::{PgStore, ROW_COLUMNS, iso, todo_verb};
#[allow(unused_imports)]
use crate::store::*;

impl PgStore {
    pub async fn audit(
        &self,
        _action: &str,
        _target: &str,
        _source: &str,
        _ok: bool,
        _detail: &str,
    ) -> Result<()> {
        Err(todo_verb("audit"))
    }

    pub async fn audit_log(&self, _limit: u32) -> Result<Vec<AuditEntry>> {
        Err(todo_verb("audit_log"))
    }

    pub async fn page(&self, _f: &PageFilter) -> Result<Vec<Row>> {
        Err(todo_verb("page"))
    }

    pub async fn failure_groups(&self, _limit: u32) -> Result<Vec<FailureGroup>> {
        Err(todo_verb("failure_groups"))
    }

    pub async fn finished_per_minute(&self, _since: &str) -> Result<Vec<MinuteCount>> {
        Err(todo_verb("finished_per_minute"))
    }

    pub async fn failed_ids(&self, _q: Option<&str>, _cap: u32) -> Result<Vec<i64>> {
        Err(todo_verb("failed_ids"))
    }
}
