//! The operator commands over the store: status, list, show, retry, cancel, purge, resume.
//! They read through the store's reader pool and write with single short statements, so
//! they work while the daemon runs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::{CmdResult, Failure};
use crate::clock;
use crate::config::Config;
use crate::estimate::{self, Estimate};
use crate::limits::{Budget, BudgetView};
use crate::store::{
    ListFilter, QueueShape, Row, Store, StoreError, StoredBucket, StoredDaemon, StoredPause,
};

/// Each bucket as the daemon last saved it (the server's window once known, else the
/// config's), rolled forward to `now`.
fn budget_views(
    stored: &[StoredBucket],
    cfg: &Config,
    now: SystemTime,
) -> BTreeMap<&'static str, BudgetView> {
    let mut buckets = BTreeMap::new();
    for (name, limit) in [
        ("import", &cfg.limits.import),
        ("status", &cfg.limits.status),
        ("metadata", &cfg.limits.metadata),
    ] {
        let mut b = Budget::new(name, limit, now);
        b.restore(stored, now);
        buckets.insert(name, b.view(now));
    }
    buckets
}

/// The drain estimate from what the database holds: the queue's shape, the saved budgets,
/// the configured concurrency and any pause (see `crate::estimate`).
pub async fn drain_estimate(
    store: &Store,
    cfg: &Config,
    now: SystemTime,
) -> Result<Estimate, StoreError> {
    let shape = store.queue_shape().await?;
    let stored = store.buckets().await?;
    let pauses = store.pauses().await?;
    let views = budget_views(&stored, cfg, now);
    Ok(estimate_from(&shape, &views, &pauses, cfg, now))
}

fn estimate_from(
    shape: &QueueShape,
    views: &BTreeMap<&'static str, BudgetView>,
    pauses: &[StoredPause],
    cfg: &Config,
    now: SystemTime,
) -> Estimate {
    let lanes = estimate::inputs(shape, views, cfg);
    // A pause of the imports or of everything stops the queue; a metadata-only pause
    // stops only that lane, which the estimate cannot time either.
    let paused = pauses.first().map(|p| p.reason.as_str());
    estimate::estimate(&lanes, paused, now)
}

/// "19:40 UTC" today, "2026-12-08 19:40 UTC" on another day.
pub fn clock_text(unix_secs: u64, now: SystemTime) -> String {
    let at = clock::iso(SystemTime::UNIX_EPOCH + Duration::from_secs(unix_secs));
    let today = clock::iso(now);
    let (day, time) = (&at[..10], &at[11..16]);
    if day == &today[..10] {
        format!("{time} UTC")
    } else {
        format!("{day} {time} UTC")
    }
}

pub async fn status(store: &Store, cfg: &Config, as_json: bool) -> CmdResult {
    let counts = store.status_counts().await?;
    let pauses = store.pauses().await?;
    let stored = store.buckets().await?;
    let daemons = store.daemons().await?;
    let shape = store.queue_shape().await?;
    let now = SystemTime::now();
    let buckets = budget_views(&stored, cfg, now);
    let estimate = estimate_from(&shape, &buckets, &pauses, cfg, now);
    // The most severe pause first: a 401 stops everything.
    let paused = pauses
        .iter()
        .find(|p| p.scope == "all")
        .or_else(|| pauses.first())
        .map(|p| {
            json!({"reason": p.reason, "scope": p.scope, "http_status": p.http_status,
                   "since": p.since, "next_probe": p.next_probe})
        });
    let in_flight = counts.counts.get("running").copied().unwrap_or(0)
        + counts.counts.get("submitting").copied().unwrap_or(0);
    let oldest_age = counts
        .oldest_pending
        .as_deref()
        .and_then(clock::parse_iso)
        .and_then(|t| now.duration_since(t).ok())
        .map(|d| d.as_secs());
    if as_json {
        let out = json!({
            "counts": counts.counts,
            "in_flight": in_flight,
            "paused": paused,
            "pauses": pauses,
            "buckets": buckets,
            "oldest_pending": counts.oldest_pending,
            "oldest_pending_age_secs": oldest_age,
            "last_error": counts.last_error,
            "credits_used": counts.credits_used,
            "daemons": live_daemons(&daemons, now, in_flight),
            "estimate": estimate,
        });
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    let line: Vec<String> = counts
        .counts
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    outln!("daemon:    {}", daemon_line(&daemons, now));
    outln!("rows:      {}", line.join(", "));
    outln!(
        "in flight: {in_flight}   credits used: {}",
        counts.credits_used
    );
    match oldest_age {
        Some(a) => outln!(
            "oldest pending: {} ago",
            humantime::format_duration(Duration::from_secs(a))
        ),
        None => outln!("oldest pending: none"),
    }
    for (name, b) in &buckets {
        let reset = clock::iso(SystemTime::UNIX_EPOCH + Duration::from_secs(b.reset));
        let blocked = b
            .blocked_until
            .as_deref()
            .map(|u| format!(", blocked until {u}"))
            .unwrap_or_default();
        outln!(
            "budget {name:<8} {}/{} left, resets {reset} ({}){blocked}",
            b.remaining,
            b.limit,
            b.source
        );
    }
    if pauses.is_empty() {
        outln!("paused:    no");
    }
    for p in &pauses {
        outln!(
            "PAUSED ({}): {} since {}; next probe {} (`importlyd resume` to retry now)",
            p.scope,
            p.reason,
            p.since,
            p.next_probe
        );
    }
    outln!("estimate:  {}", estimate.line(|t| clock_text(t, now)));
    if let Some(e) = &counts.last_error {
        outln!(
            "last error: row {} at {}: {}",
            e.id,
            e.updated_at,
            e.last_error
        );
    }
    Ok(())
}

pub async fn list(store: &Store, filter: &ListFilter, as_json: bool) -> CmdResult {
    let rows = store.list(filter).await?;
    if as_json {
        let out: Vec<Value> = rows.iter().map(row_json).collect();
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    outln!(
        "{:>6}  {:<10}  {:>3}  {:<20}  URL / ERROR",
        "ID",
        "STATE",
        "TRY",
        "UPDATED"
    );
    // The URL and its note share what is left of the terminal after the fixed columns.
    let width = terminal_width();
    let room = width.saturating_sub(47).max(30);
    for r in &rows {
        let note = match (&r.state[..], &r.last_error, &r.media_url) {
            ("completed", _, Some(m)) => format!(" -> {m}"),
            (_, Some(e), _) if r.state != "completed" => format!("  [{e}]"),
            _ => String::new(),
        };
        // The URL is what identifies the row: it gets the room first; the note what is left
        // (at least a 12-character stub, so a failure is always visible).
        let url = shorten(&r.url, room);
        let note_room = room.saturating_sub(url.chars().count()).max(12);
        let updated: String = r.updated_at.chars().take(19).collect();
        outln!(
            "{:>6}  {:<10}  {:>3}  {:<20}  {}{}",
            r.id,
            r.state,
            r.attempts,
            updated,
            url,
            shorten(&note, note_room)
        );
    }
    Ok(())
}

/// The terminal's width from `COLUMNS` (shells export it to programs that ask), or 100.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|w: &usize| *w >= 40)
        .unwrap_or(100)
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A row as JSON, with `options` and `result` as objects rather than strings.
pub fn row_json(r: &Row) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    for k in ["options", "result"] {
        if let Some(s) = v.get(k).and_then(Value::as_str)
            && let Ok(parsed) = serde_json::from_str::<Value>(s)
        {
            v[k] = parsed;
        }
    }
    v
}

pub async fn show(store: &Store, id: i64, as_json: bool) -> CmdResult {
    let Some(row) = store.row(id).await? else {
        return Err(Failure {
            code: 1,
            message: format!("no row with id {id}"),
        });
    };
    let attempts = store.attempts(id).await?;
    if as_json {
        let out = json!({"row": row_json(&row), "attempts": attempts});
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    let v = row_json(&row);
    if let Value::Object(m) = &v {
        for (k, val) in m {
            let text = match val {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            outln!("{k:>16}: {text}");
        }
    }
    outln!("\n{} logged exchanges (oldest first):", attempts.len());
    for a in &attempts {
        let status = a
            .http_status
            .map(|s| s.to_string())
            .or_else(|| a.error.clone())
            .unwrap_or_default();
        outln!(
            "  {} -> {}  try {} {} {} -> {} ({})",
            a.started_at,
            a.finished_at,
            a.attempt,
            a.method,
            a.endpoint,
            status,
            a.outcome
        );
        if let Some(j) = &a.job_id {
            outln!("      job id: {j}");
        }
        if let Some(r) = &a.rate_limit {
            outln!("      rate limit: {r}");
        }
        if let Some(b) = &a.response_body {
            let cut = if a.body_truncated { " (truncated)" } else { "" };
            outln!("      response body{cut}: {b}");
        }
    }
    outln!("\n(`importlyd ticket {id}` formats this for Importly's support)");
    Ok(())
}

pub async fn retry(
    store: &Store,
    ids: Vec<i64>,
    all_failed: bool,
    since: Option<String>,
) -> CmdResult {
    if ids.is_empty() && !all_failed {
        return Err(Failure::usage("give row ids or --failed"));
    }
    let done = store.retry(&ids, all_failed, since.as_deref()).await?;
    outln!("{} rows back to pending", done.len());
    left_alone(store, &ids, &done, Action::Retry).await
}

pub async fn cancel(store: &Store, ids: Vec<i64>) -> CmdResult {
    let done = store.cancel(&ids).await?;
    outln!("cancelled {} rows", done.len());
    left_alone(store, &ids, &done, Action::Cancel).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Retry,
    Cancel,
}

/// `retry` and `cancel` behave alike: they act on every named row they can, say for each
/// other one why it was left alone, and exit 1 if there was any (0 only when every named row
/// was acted on).
async fn left_alone(store: &Store, named: &[i64], done: &[i64], action: Action) -> CmdResult {
    let (verb, only) = match action {
        Action::Retry => ("retried", "failed"),
        Action::Cancel => ("cancelled", "pending"),
    };
    let mut skipped = Vec::new();
    for &id in named {
        if done.contains(&id) || skipped.contains(&id) {
            continue;
        }
        skipped.push(id);
        match store.row(id).await? {
            Some(r)
                if action == Action::Cancel
                    && (r.state == "running" || r.state == "submitting") =>
            {
                outln!(
                    "row {id} is {} at Importly (job {}): it cannot be cancelled from here and will finish",
                    r.state,
                    r.importly_job_id.as_deref().unwrap_or("not yet known")
                )
            }
            Some(r) => outln!("row {id} is {}: only {only} rows can be {verb}", r.state),
            None => outln!("row {id} does not exist"),
        }
    }
    if skipped.is_empty() {
        return Ok(());
    }
    Err(Failure {
        code: 1,
        message: format!(
            "{} of the rows named {} not {verb}",
            skipped.len(),
            if skipped.len() == 1 { "was" } else { "were" }
        ),
    })
}

pub async fn purge(store: &Store, completed_only: bool, before: String) -> CmdResult {
    let n = store.purge(&before, completed_only).await?;
    outln!("deleted {n} rows last changed before {before}");
    let cached = store.purge_metadata_cache(&before).await?;
    if cached > 0 {
        outln!("deleted {cached} metadata cache entries fetched before {before}");
    }
    Ok(())
}

pub async fn resume(store: &Store) -> CmdResult {
    let n = store.clear_pauses().await?;
    if n == 0 {
        outln!("not paused");
    } else {
        outln!("pause lifted; a running daemon resumes within poll.queue_interval");
    }
    Ok(())
}

/// The daemons whose heartbeat is fresh, for `status --json` (the names of the PostgreSQL
/// contract; on SQLite at most one daemon runs, so every row in flight is its own).
fn live_daemons(all: &[StoredDaemon], now: SystemTime, in_flight: i64) -> Vec<Value> {
    all.iter()
        .filter(|d| d.is_live(now))
        .map(|d| {
            json!({"id": d.id, "host": d.host, "pid": d.pid, "version": d.version,
                   "started_at": d.started_at, "heartbeat_at": d.heartbeat_at,
                   "in_flight": in_flight})
        })
        .collect()
}

/// Whether a daemon runs, from the most recently seen `daemons` row.
fn daemon_line(all: &[StoredDaemon], now: SystemTime) -> String {
    let Some(d) = all.first() else {
        return "no daemon has run against this database".into();
    };
    let ago = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
    let silent = ago(d.silent_for(now));
    let who = format!("pid {} on {}", d.pid, d.host);
    match &d.stopped_at {
        _ if d.is_live(now) => format!(
            "running since {}, last seen {} ({silent} ago) ({who})",
            d.started_at, d.heartbeat_at
        ),
        Some(at) => format!("not running; the last one ({who}) stopped at {at}, {silent} ago"),
        None => format!(
            "no daemon seen for {silent} (the last, {who}, was killed or is stuck; \
             last heartbeat {})",
            d.heartbeat_at
        ),
    }
}
