//! The metadata cache and the rows the credit guard creates.

use std::time::SystemTime;

use serde::Serialize;

use super::state::{self, Iso};

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct CachedMetadata {
    pub url: String,
    pub title: Option<String>,
    pub duration: Option<f64>,
    pub formats: String,
    pub data: String,
    pub job_id: Option<String>,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "Iso")]
    pub fetched_at: SystemTime,
}

/// Where a URL's preflight metadata stands, for an import row the guard is checking.
#[derive(Clone, Debug)]
pub enum MetadataRow {
    /// A metadata row for the URL is queued or in progress.
    InProgress,
    /// The import was waiting and the metadata row it waited for failed, with its reason.
    Failed(String),
    /// The import was waiting and its metadata arrived: the cache entry, whatever its age
    /// (with a `cache_ttl` shorter than the wait it is already stale, and fetching again
    /// would only wait again).
    Ready(Box<CachedMetadata>),
    /// None in progress; one was just inserted with this id.
    Queued(i64),
}

/// The text of [`MetadataRow::WAITING`], for `concat!` into SQL.
macro_rules! waiting {
    () => {
        "waiting for preflight metadata"
    };
}
pub(crate) use waiting;

impl MetadataRow {
    /// The `last_error` of an import row the credit guard snoozed while its metadata is
    /// fetched. It marks the row as waiting: when it is next claimed, the newest metadata row
    /// for its URL ended during that wait.
    /// (Migration 0003's partial index repeats it; a migration cannot change.)
    pub const WAITING: &'static str = waiting!();
}

/// The newest metadata row of a URL, as `ensure_metadata_row` reads it: its state and its
/// `last_error`.
pub(super) type Newest = (String, Option<String>);

/// The credit guard's decision in `ensure_metadata_row`, the same for both backends; the
/// reads and the insert are each backend's own SQL, in one transaction.
pub(super) struct Preflight {
    /// The import row was waiting for its URL's metadata (its `last_error` says so).
    waiting: bool,
    newest: Option<Newest>,
}

impl Preflight {
    pub(super) fn new(import_error: Option<&str>, newest: Option<Newest>) -> Preflight {
        Preflight {
            waiting: import_error == Some(MetadataRow::WAITING),
            newest,
        }
    }

    /// Whether the cache entry is needed to decide: the import waited, and the metadata row
    /// it waited for completed.
    pub(super) fn wants_cache(&self) -> bool {
        self.waiting && matches!(&self.newest, Some((state, _)) if state == "completed")
    }

    /// The verdict, given the cache entry [`Preflight::wants_cache`] asked for; `None`: no
    /// metadata row is in progress and none decides, so a new one is to be queued (the
    /// caller inserts it: [`MetadataRow::Queued`]).
    pub(super) fn decide(self, cached: Option<CachedMetadata>) -> Option<MetadataRow> {
        match (self.newest, cached) {
            (Some((state, _)), _) if matches!(&state[..], "pending" | "submitting" | "running") => {
                Some(MetadataRow::InProgress)
            }
            (Some((state, err)), _) if self.waiting && state == "failed" => Some(
                MetadataRow::Failed(err.unwrap_or_else(|| "metadata job failed".into())),
            ),
            (_, Some(cached)) => Some(MetadataRow::Ready(Box::new(cached))),
            _ => None,
        }
    }
}
