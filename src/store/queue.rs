//! The row lifecycle as the scheduler drives it:
//! pending -> submitting -> running -> completed | failed, with pending again on a retry.
//! Each change is one statement or one short `BEGIN IMMEDIATE` transaction.

use std::time::SystemTime;

use super::attempts::AttemptRecord;
use crate::importly::JobKind;

/// A row the scheduler now owns (state `submitting`).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub url: String,
    pub kind: JobKind,
    pub options: String,
    pub attempts: i64,
}

/// What `claim_budgeted` claimed.
#[derive(Debug)]
pub struct Claim {
    pub rows: Vec<Claimed>,
    /// The shared budget's grant: `until` is set when it had room for fewer rows than were
    /// due.
    pub grant: crate::store::Grant,
    /// The account's slots for the kind are all taken now, counting every daemon's jobs
    /// (PostgreSQL; always false on SQLite, where the scheduler's own count is the
    /// account's).
    pub full: bool,
}

/// What a reschedule did to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Back to `pending`, due later.
    Pending,
    /// Out of attempts: `failed`.
    Failed,
    /// The row was deleted meanwhile; nothing was written.
    Gone,
}

/// A running row, as the scheduler resumes it after a restart.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Running {
    pub id: i64,
    pub kind: JobKind,
    pub importly_job_id: String,
    pub attempts: i64,
}

/// The record of a submit whose answer we never read: a job may exist at Importly.
pub(crate) fn ambiguous_submit(
    attempt: i64,
    endpoint: &str,
    now: SystemTime,
    why: &str,
) -> AttemptRecord {
    AttemptRecord {
        attempt,
        method: "POST".into(),
        endpoint: endpoint.into(),
        started_at: now,
        finished_at: now,
        error: Some(why.to_owned()),
        outcome: "ambiguous_submit".into(),
        ..AttemptRecord::default()
    }
}
