//! PostgreSQL: ops.

#[allow(unused_imports)]
use super::{PgStore, ROW_COLUMNS, iso, todo_verb};
#[allow(unused_imports)]
use crate::store::*;
#[allow(unused_imports)]
use futures_util::stream::BoxStream;

impl PgStore {
    pub fn export(&self, _f: &ListFilter) -> BoxStream<'_, Result<ExportRow>> {
        Box::pin(futures_util::stream::once(async {
            Err(todo_verb("export"))
        }))
    }

    pub async fn enqueue(&self, _rows: &[EnqueueRow]) -> Result<Vec<i64>> {
        Err(todo_verb("enqueue"))
    }

    pub async fn enqueue_chunk(&self, _rows: &[EnqueueRow]) -> Result<ChunkOutcome> {
        Err(todo_verb("enqueue_chunk"))
    }

    pub async fn ids_by_external_id(&self, _external_ids: &[String]) -> Result<Vec<i64>> {
        Err(todo_verb("ids_by_external_id"))
    }

    pub async fn select_ids(
        &self,
        _ids: Option<&[i64]>,
        _since: Option<&str>,
        _prefix: Option<&str>,
        _unfinished: bool,
    ) -> Result<Vec<i64>> {
        Err(todo_verb("select_ids"))
    }

    pub async fn progress_of(&self, _ids: &[i64]) -> Result<RowsProgress> {
        Err(todo_verb("progress_of"))
    }

    pub async fn unsuccessful_among(&self, _ids: &[i64], _limit: u32) -> Result<Vec<Row>> {
        Err(todo_verb("unsuccessful_among"))
    }

    pub async fn row(&self, _id: i64) -> Result<Option<Row>> {
        Err(todo_verb("row"))
    }

    pub async fn list(&self, _f: &ListFilter) -> Result<Vec<Row>> {
        Err(todo_verb("list"))
    }

    pub async fn status_counts(&self) -> Result<StatusCounts> {
        Err(todo_verb("status_counts"))
    }

    pub async fn recount(&self) -> Result<()> {
        Err(todo_verb("recount"))
    }

    pub async fn queue_shape(&self) -> Result<QueueShape> {
        Err(todo_verb("queue_shape"))
    }

    pub async fn retry(
        &self,
        _ids: &[i64],
        _all_failed: bool,
        _since: Option<&str>,
    ) -> Result<Vec<i64>> {
        Err(todo_verb("retry"))
    }

    pub async fn cancel(&self, _ids: &[i64]) -> Result<Vec<i64>> {
        Err(todo_verb("cancel"))
    }

    pub async fn purge(&self, _before: &str, _completed_only: bool) -> Result<u64> {
        Err(todo_verb("purge"))
    }

    pub async fn purge_audit(&self, _before: &str) -> Result<u64> {
        Err(todo_verb("purge_audit"))
    }

    pub async fn purge_metadata_cache(&self, _before: &str) -> Result<u64> {
        Err(todo_verb("purge_metadata_cache"))
    }
}
