//! The actions: retry, cancel, bulk retry, resume, purge. Each acts on what it can, reports
//! what it left alone and why, and writes one audit row.

use serde::Serialize;

use super::{Result, ServiceError, Source};
use std::time::SystemTime;

use crate::clock;
use crate::store::{State, Store};

/// The most rows one bulk retry touches: a bigger group is retried in several calls, so no
/// call holds the write lock or the caller for long.
pub const BULK_RETRY_CAP: u32 = 10_000;

/// A row named but not acted on.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub id: i64,
    /// Its state, `None` when it does not exist.
    pub state: Option<State>,
    /// Why, in a sentence.
    pub reason: String,
}

/// What `retry` or `cancel` did with the rows named.
#[derive(Clone, Debug, Serialize)]
pub struct ActionReport {
    pub action: &'static str,
    /// The ids acted on, ascending.
    pub done: Vec<i64>,
    pub skipped: Vec<Skipped>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    Retry,
    Cancel,
}

/// Failed rows back to pending: those named, or with `all_failed` every failed row (updated
/// since `since`).
pub async fn retry(
    store: &Store,
    ids: &[i64],
    all_failed: bool,
    since: Option<SystemTime>,
    source: Source,
) -> Result<ActionReport> {
    if ids.is_empty() && !all_failed {
        return Err(ServiceError::BadRequest("give row ids or --failed".into()));
    }
    let done = store.retry(ids, all_failed, since).await?;
    let report = report(store, ids, done, Verb::Retry).await?;
    let target = if all_failed {
        match since {
            Some(s) => format!("failed rows updated since {}", clock::iso(s)),
            None => "all failed rows".into(),
        }
    } else {
        target_of(ids)
    };
    record(store, "retry", &target, source, &report).await;
    Ok(report)
}

/// Pending rows to cancelled.
pub async fn cancel(store: &Store, ids: &[i64], source: Source) -> Result<ActionReport> {
    let done = store.cancel(ids).await?;
    let report = report(store, ids, done, Verb::Cancel).await?;
    record(store, "cancel", &target_of(ids), source, &report).await;
    Ok(report)
}

/// What a bulk retry did.
#[derive(Clone, Debug, Serialize)]
pub struct BulkReport {
    /// Rows back to pending.
    pub retried: usize,
    /// The cap of one call; when `retried` reaches it, more may match: call again.
    pub cap: u32,
}

/// Up to [`BULK_RETRY_CAP`] failed rows whose url, external_id or last_error contains `q`
/// back to pending. `state` must be `failed` (the only state a retry applies to).
pub async fn bulk_retry(
    store: &Store,
    state: Option<&str>,
    q: Option<&str>,
    source: Source,
) -> Result<BulkReport> {
    if state != Some("failed") {
        return Err(ServiceError::BadRequest(
            "a bulk retry needs state=failed".into(),
        ));
    }
    let ids = store.failed_ids(q, BULK_RETRY_CAP).await?;
    let done = if ids.is_empty() {
        Vec::new()
    } else {
        store.retry(&ids, false, None).await?
    };
    let out = BulkReport {
        retried: done.len(),
        cap: BULK_RETRY_CAP,
    };
    let target = match q.filter(|q| !q.is_empty()) {
        Some(q) => format!("failed rows matching {q:?}"),
        None => "failed rows".into(),
    };
    audit(
        store,
        "bulk_retry",
        &target,
        source,
        true,
        &format!("{} rows back to pending", out.retried),
    )
    .await;
    Ok(out)
}

#[derive(Clone, Debug, Serialize)]
pub struct ResumeReport {
    /// Pauses lifted (0: nothing was paused).
    pub lifted: u64,
}

/// Lifts every stored pause; a running daemon resumes within `poll.queue_interval`.
pub async fn resume(store: &Store, source: Source) -> Result<ResumeReport> {
    let lifted = store.clear_pauses().await?;
    let detail = if lifted == 0 {
        "not paused".to_owned()
    } else {
        format!("{lifted} pauses lifted")
    };
    audit(store, "resume", "pauses", source, true, &detail).await;
    Ok(ResumeReport { lifted })
}

#[derive(Clone, Debug, Serialize)]
pub struct PurgeReport {
    pub rows: u64,
    pub cache_entries: u64,
    pub audit_entries: u64,
}

/// Deletes finished rows (with `completed_only`, completed ones) last changed before
/// `before`, metadata cache entries fetched before it and audit entries older than it.
pub async fn purge(
    store: &Store,
    completed_only: bool,
    before: SystemTime,
    source: Source,
) -> Result<PurgeReport> {
    let rows = store.purge(before, completed_only).await?;
    let cache_entries = store.purge_metadata_cache(before).await?;
    // Pruned before this purge is recorded, so the record of it stays.
    let audit_entries = store.purge_audit(before).await?;
    let what = if completed_only {
        "completed"
    } else {
        "finished"
    };
    audit(
        store,
        "purge",
        &format!("{what} rows last changed before {}", clock::iso(before)),
        source,
        true,
        &format!(
            "{rows} rows, {cache_entries} cache entries, {audit_entries} audit entries deleted"
        ),
    )
    .await;
    Ok(PurgeReport {
        rows,
        cache_entries,
        audit_entries,
    })
}

fn target_of(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    match ids.len() {
        1 => format!("row {}", list.join("")),
        _ => format!("rows {}", list.join(",")),
    }
}

async fn record(store: &Store, action: &str, target: &str, source: Source, r: &ActionReport) {
    let mut detail = format!("{} {}", r.done.len(), action_past(r.action));
    for s in &r.skipped {
        detail.push_str("; ");
        detail.push_str(&s.reason);
    }
    audit(store, action, target, source, r.skipped.is_empty(), &detail).await;
}

fn action_past(action: &str) -> &'static str {
    match action {
        "retry" => "retried",
        _ => "cancelled",
    }
}

/// Writes one audit row. The action is done by now: a failure to record it is logged, not
/// turned into a failure of the action (which would invite doing it twice).
async fn audit(store: &Store, action: &str, target: &str, source: Source, ok: bool, detail: &str) {
    if let Err(e) = store
        .audit(action, target, source.as_str(), ok, detail)
        .await
    {
        tracing::warn!(error = %e, action, "cannot write the audit row");
    }
}

/// For each named row not acted on, why it was left alone.
async fn report(store: &Store, named: &[i64], done: Vec<i64>, verb: Verb) -> Result<ActionReport> {
    let (action, verbed, only) = match verb {
        Verb::Retry => ("retry", "retried", "failed"),
        Verb::Cancel => ("cancel", "cancelled", "pending"),
    };
    let mut skipped: Vec<Skipped> = Vec::new();
    for &id in named {
        if done.contains(&id) || skipped.iter().any(|s| s.id == id) {
            continue;
        }
        let row = store.row(id).await?;
        let reason = match &row {
            Some(r)
                if verb == Verb::Cancel
                    && matches!(r.state, State::Running | State::Submitting) =>
            {
                format!(
                    "row {id} is {} at Importly (job {}): it cannot be cancelled from here and will finish",
                    r.state,
                    r.importly_job_id.as_deref().unwrap_or("not yet known")
                )
            }
            Some(r) => format!("row {id} is {}: only {only} rows can be {verbed}", r.state),
            None => format!("row {id} does not exist"),
        };
        skipped.push(Skipped {
            id,
            state: row.map(|r| r.state),
            reason,
        });
    }
    Ok(ActionReport {
        action,
        done,
        skipped,
    })
}
