//! PostgreSQL: metadata.

#[allow(unused_imports)]
use super::{PgStore, ROW_COLUMNS, iso, todo_verb};
#[allow(unused_imports)]
use crate::store::*;

impl PgStore {
    pub async fn cached_metadata(
        &self,
        _url: &str,
        _fresh_since: &str,
    ) -> Result<Option<CachedMetadata>> {
        Err(todo_verb("cached_metadata"))
    }

    pub async fn metadata_running(&self, _url: &str) -> Result<bool> {
        Err(todo_verb("metadata_running"))
    }

    pub async fn complete_metadata(
        &self,
        _id: i64,
        _job_id: &str,
        _title: Option<&str>,
        _duration: Option<f64>,
        _formats: &str,
        _data: &str,
    ) -> Result<Written> {
        Err(todo_verb("complete_metadata"))
    }

    pub async fn complete_from_cache(&self, _id: i64, _cached: &CachedMetadata) -> Result<()> {
        Err(todo_verb("complete_from_cache"))
    }

    pub async fn ensure_metadata_row(&self, _import_id: i64, _url: &str) -> Result<MetadataRow> {
        Err(todo_verb("ensure_metadata_row"))
    }
}
