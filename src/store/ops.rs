//! What the operator commands read and write. All of it is safe while the daemon runs:
//! reads go through the reader pool, writes are single short statements that only touch
//! rows the daemon is not working on (pending, failed, finished).

use std::collections::BTreeMap;

use std::time::SystemTime;

use serde::Serialize;

use super::State;
use super::state::{self, LaxIso, OptLaxIso};
use crate::importly::JobKind;

/// One row to insert.
#[derive(Clone, Debug, Default)]
pub struct EnqueueRow {
    pub url: String,
    pub kind: Option<JobKind>,
    pub options: Option<String>,
    pub external_id: Option<String>,
}

/// What [`Store::enqueue_chunk`] did with a chunk.
#[derive(Clone, Debug, Default)]
pub struct ChunkOutcome {
    /// Ids of the rows inserted, ascending.
    pub inserted: Vec<i64>,
    /// Rows skipped because their `external_id` was already queued.
    pub duplicates: usize,
    /// Rows refused (index in the chunk, the constraint's message).
    pub bad: Vec<(usize, String)>,
}

/// The columns `importlyd export` writes, in this order (the contract in interface.md).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ExportRow {
    pub id: i64,
    pub external_id: Option<String>,
    pub url: String,
    pub kind: JobKind,
    pub state: State,
    pub importly_job_id: Option<String>,
    pub media_url: Option<String>,
    pub credits_used: Option<i64>,
    #[serde(serialize_with = "state::iso_opt")]
    #[sqlx(try_from = "OptLaxIso")]
    pub completed_at: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// See [`Store::progress_of`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowsProgress {
    /// state -> rows (states without rows absent)
    pub counts: BTreeMap<State, i64>,
    pub last_update: Option<SystemTime>,
}

#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub state: Option<State>,
    /// Rows updated at or after it.
    pub since: Option<SystemTime>,
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusCounts {
    pub counts: BTreeMap<State, i64>,
    #[serde(serialize_with = "state::iso_opt")]
    pub oldest_pending: Option<SystemTime>,
    pub last_error: Option<LastError>,
    pub credits_used: i64,
}

/// What the drain estimate needs of the queue, per kind (`import`, `metadata`).
#[derive(Clone, Debug, Default)]
pub struct QueueShape {
    /// Rows not yet submitted: `pending` and `submitting`.
    pub ahead: BTreeMap<JobKind, u64>,
    /// Jobs in progress at Importly.
    pub running: BTreeMap<JobKind, u64>,
    /// Mean milliseconds from the accepted submit to completion, over the latest completed
    /// rows ([`MEAN_JOB_SAMPLE`]); absent while none has completed.
    pub mean_job_ms: BTreeMap<JobKind, f64>,
}

/// How many of the latest completed rows of each kind the mean job duration is taken over.
pub const MEAN_JOB_SAMPLE: i64 = 50;

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct LastError {
    pub id: i64,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "LaxIso")]
    pub updated_at: SystemTime,
    pub last_error: String,
}
