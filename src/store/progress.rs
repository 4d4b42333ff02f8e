//! Group commit of the two outcomes that make up almost all of a busy daemon's writes: a
//! submit that got a job id (`submitting` -> `running`, with its `accepted` attempt record)
//! and an import job that completed (`running` -> `completed`).
//!
//! The scheduler collects the answers that arrive together and records them here in one
//! `BEGIN IMMEDIATE` transaction of three statements sent as one list, whatever the group's
//! size: the rows travel as one JSON array each, unpacked by `json_each`. One row at a time
//! cost five statements per row, and every statement is a round trip to SQLite's worker
//! thread, which is what bounded throughput (see BENCHMARKS.md).

use serde::Serialize;

use super::attempts::AttemptRecord;

/// What one group of answers changed.
#[derive(Debug, Default)]
pub struct Progress {
    pub started: Vec<Started>,
    pub finished: Vec<Finished>,
}

/// A submit Importly accepted: its row and the `accepted` record, which carries the job id.
#[derive(Debug, Serialize)]
pub struct Started {
    #[serde(rename = "import_id")]
    id: i64,
    #[serde(flatten)]
    record: AttemptRecord,
}

impl Started {
    /// The row `id` started job `job_id`; `record` is the exchange that said so.
    pub fn new(id: i64, job_id: &str, mut record: AttemptRecord) -> Started {
        record.job_id = Some(job_id.to_owned());
        Started { id, record }
    }
}

/// An import job that completed, with what Importly reported.
#[derive(Debug, Serialize)]
pub struct Finished {
    pub id: i64,
    pub media_url: Option<String>,
    pub credits_used: Option<i64>,
    pub result: String,
}

impl Progress {
    pub fn is_empty(&self) -> bool {
        self.started.is_empty() && self.finished.is_empty()
    }
}
