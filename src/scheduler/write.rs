//! The scheduler's persisted writes as values: each [`Write`] names one thing the scheduler
//! records, holds what it needs (owned), and knows its log text and the store verb that
//! does it. `Scheduler::persist` runs any of them with the same retries, health marks and
//! log lines, so a call site says what it writes and nothing about how.
//!
//! Why one enum with an enum output ([`Applied`]) rather than a trait with a typed output per
//! write: the writes stay plain values (built, compared in tests, retried by one loop)
//! with no boilerplate type per write, and each variant's output is fixed (documented
//! below; `tests::every_write_has_its_output` applies every variant and checks it), so a
//! caller matches the one shape its write gives.
//!
//! Times are kept as [`SystemTime`] and turned into the store's form in [`Write::apply`]
//! only, the same way on each retry: the one place that knows both shapes.

use std::time::SystemTime;

use crate::clock;
use crate::limits::Scope;
use crate::store::{
    AttemptRecord, CachedMetadata, Fate, MetadataRow, Progress, Store, StoredPause, Written,
};

/// The `last_error` of a row whose submit task died without an answer.
const DEAD_SUBMIT: &str = "the submit task ended without an answer";

/// One write the scheduler persists. The comment on each variant names its output.
#[derive(Debug)]
pub(super) enum Write {
    // Rows back to `pending` untouched (`Applied::Done`).
    /// Claimed rows the shared budget had no room for.
    GiveBackUnbudgeted {
        ids: Vec<i64>,
    },
    /// A claimed row whose request never left (the lease might have lapsed first).
    GiveBackUnsent {
        id: i64,
    },
    /// A claimed row whose preflight could not read the metadata cache: retried later.
    Release {
        id: i64,
    },

    // Rows back to `pending` with an attempt record (`Applied::Row`).
    /// A `submitting` row whose HTTP task died: its POST may have reached Importly, so it
    /// gets an ambiguous-submit record, as start-up recovery would give it.
    ReleaseDeadSubmit {
        id: i64,
        endpoint: &'static str,
        keep: u32,
    },

    // Reschedules (`Applied::Fate`).
    /// A transient failure: counted, so it may fail the row (`max_attempts`).
    Retry {
        id: i64,
        due: SystemTime,
        max_attempts: u32,
        why: String,
        record: AttemptRecord,
        keep: u32,
    },
    /// Back to pending without counting an attempt (429, 401, 402); `due` `None` keeps the
    /// row's place in the queue.
    Snooze {
        id: i64,
        due: Option<SystemTime>,
        max_attempts: u32,
        why: String,
        record: AttemptRecord,
        keep: u32,
    },
    /// An import the credit guard holds until its URL's preflight metadata row ends.
    WaitForPreflight {
        id: i64,
        due: SystemTime,
        max_attempts: u32,
        keep: u32,
    },
    /// A metadata row whose URL's call is already under way (ours, or another row's job).
    WaitForMetadata {
        id: i64,
        due: SystemTime,
        max_attempts: u32,
        keep: u32,
    },

    // Failures (`Applied::Row`).
    /// A row failed by an answer (or its job's end), with its record and the job's data.
    Fail {
        id: i64,
        reason: String,
        result: Option<String>,
        record: AttemptRecord,
        keep: u32,
    },
    /// A row whose options cannot make a request body; nothing was sent.
    FailBadOptions {
        id: i64,
        reason: String,
        keep: u32,
    },
    /// A row the credit guard refused; nothing was sent.
    FailGuarded {
        id: i64,
        reason: String,
        keep: u32,
    },
    /// A failed status poll, in the row's attempt log; the row is unchanged.
    LogFailedPoll {
        id: i64,
        record: AttemptRecord,
        keep: u32,
    },

    /// The group commit (`Applied::Started`: the rows really started).
    RecordProgress(Progress),

    // Pauses (`Applied::Done`).
    SetPause(StoredPause),
    ClearPause(Scope),

    // Metadata.
    /// A completed metadata job: the row and the cache together (`Applied::Row`).
    CompleteMetadata {
        id: i64,
        job_id: String,
        title: Option<String>,
        duration: Option<f64>,
        formats: String,
        result: String,
    },
    /// A metadata row answered from the cache (`Applied::Done`).
    CompleteFromCache {
        id: i64,
        cached: CachedMetadata,
    },
    /// The metadata row an import's credit guard needs, unless one exists
    /// (`Applied::Metadata`).
    QueuePreflight {
        id: i64,
        url: String,
    },
}

/// What a [`Write`] gave back: the output of its store verb.
#[derive(Debug)]
pub(super) enum Applied {
    /// Nothing to tell.
    Done,
    /// Whether the row was still there.
    Row(Written),
    /// What a reschedule did to the row.
    Fate(Fate),
    /// The group's accepted rows that were started.
    Started(Vec<i64>),
    /// Where the URL's preflight metadata stands.
    Metadata(MetadataRow),
}

impl Write {
    /// What is being written, for the log and `/healthz` while it fails.
    pub(super) fn what(&self) -> &'static str {
        match self {
            Write::GiveBackUnbudgeted { .. } => "give back rows the shared budget had no room for",
            Write::GiveBackUnsent { .. } => "give back a row never sent",
            Write::Release { .. } => "release row",
            Write::ReleaseDeadSubmit { .. } => "release a row whose submit died",
            Write::Retry { .. } => "reschedule row",
            Write::Snooze { .. } => "snooze row",
            Write::WaitForPreflight { .. } => "wait for preflight metadata",
            Write::WaitForMetadata { .. } => "wait for metadata in flight",
            Write::Fail { .. } => "fail row",
            Write::FailBadOptions { .. } => "fail a row with bad options",
            Write::FailGuarded { .. } => "fail row (credit guard)",
            Write::LogFailedPoll { .. } => "log a failed poll",
            Write::RecordProgress(_) => "record progress",
            Write::SetPause(_) => "store pause",
            Write::ClearPause(_) => "lift pause",
            Write::CompleteMetadata { .. } => "record metadata",
            Write::CompleteFromCache { .. } => "complete from metadata cache",
            Write::QueuePreflight { .. } => "queue preflight metadata",
        }
    }

    /// Makes the write once. Safe to repeat after an error: each is one statement or one
    /// transaction, so a failed attempt left nothing behind.
    pub(super) async fn apply(&self, store: &Store) -> crate::store::Result<Applied> {
        Ok(match self {
            Write::GiveBackUnbudgeted { ids } => {
                store.release(ids).await?;
                Applied::Done
            }
            Write::GiveBackUnsent { id } | Write::Release { id } => {
                store.release(&[*id]).await?;
                Applied::Done
            }
            Write::ReleaseDeadSubmit { id, endpoint, keep } => Applied::Row(
                store
                    .release_ambiguous(*id, endpoint, DEAD_SUBMIT, *keep)
                    .await?,
            ),
            Write::Retry {
                id,
                due,
                max_attempts,
                why,
                record,
                keep,
            } => {
                let due = clock::iso(*due);
                Applied::Fate(
                    store
                        .reschedule(
                            *id,
                            Some(&due),
                            true,
                            *max_attempts,
                            why,
                            Some(record),
                            *keep,
                        )
                        .await?,
                )
            }
            Write::Snooze {
                id,
                due,
                max_attempts,
                why,
                record,
                keep,
            } => {
                let due = due.map(clock::iso);
                Applied::Fate(
                    store
                        .reschedule(
                            *id,
                            due.as_deref(),
                            false,
                            *max_attempts,
                            why,
                            Some(record),
                            *keep,
                        )
                        .await?,
                )
            }
            Write::WaitForPreflight {
                id,
                due,
                max_attempts,
                keep,
            }
            | Write::WaitForMetadata {
                id,
                due,
                max_attempts,
                keep,
            } => {
                // The text marks the row as waiting (see `MetadataRow::WAITING`): the end
                // of the metadata row wakes it (store::WAKE_WAITERS).
                let due = clock::iso(*due);
                Applied::Fate(
                    store
                        .reschedule(
                            *id,
                            Some(&due),
                            false,
                            *max_attempts,
                            MetadataRow::WAITING,
                            None,
                            *keep,
                        )
                        .await?,
                )
            }
            Write::Fail {
                id,
                reason,
                result,
                record,
                keep,
            } => Applied::Row(
                store
                    .fail(*id, reason, result.as_deref(), Some(record), *keep)
                    .await?,
            ),
            Write::FailBadOptions { id, reason, keep }
            | Write::FailGuarded { id, reason, keep } => {
                Applied::Row(store.fail(*id, reason, None, None, *keep).await?)
            }
            Write::LogFailedPoll { id, record, keep } => {
                Applied::Row(store.record_attempt(*id, record, *keep).await?)
            }
            Write::RecordProgress(progress) => {
                Applied::Started(store.record_progress(progress).await?)
            }
            Write::SetPause(p) => {
                store.set_pause(p).await?;
                Applied::Done
            }
            Write::ClearPause(scope) => {
                store.clear_pause(scope.as_str()).await?;
                Applied::Done
            }
            Write::CompleteMetadata {
                id,
                job_id,
                title,
                duration,
                formats,
                result,
            } => Applied::Row(
                store
                    .complete_metadata(*id, job_id, title.as_deref(), *duration, formats, result)
                    .await?,
            ),
            Write::CompleteFromCache { id, cached } => {
                store.complete_from_cache(*id, cached).await?;
                Applied::Done
            }
            Write::QueuePreflight { id, url } => {
                Applied::Metadata(store.ensure_metadata_row(*id, url).await?)
            }
        })
    }
}

impl Applied {
    /// Whether a single-row write found its row gone (deleted by its owner meanwhile).
    pub(super) fn gone(&self) -> bool {
        matches!(
            self,
            Applied::Row(Written::Gone) | Applied::Fate(Fate::Gone)
        )
    }
}
