//! The operator commands over the store: status, list, show, retry, cancel, purge, resume.
//! They read through the store's reader pool and write with single short statements, so
//! they work while the daemon runs.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{CmdResult, Failure};
use crate::clock;
use crate::config::Config;
use crate::service::{self, ActionReport, ServiceError, Source};
use crate::store::{ListFilter, State, Store, StoredDaemon};

pub use crate::service::{drain_estimate, row_json};

impl From<ServiceError> for Failure {
    fn from(e: ServiceError) -> Failure {
        match e {
            ServiceError::BadRequest(m) => Failure::usage(m),
            ServiceError::NotFound(m) => Failure {
                code: 1,
                message: m,
            },
            ServiceError::Store(e) => e.into(),
        }
    }
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
    let v = service::status(store, cfg).await?;
    if as_json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&v.to_json()).unwrap_or_default()
        );
        return Ok(());
    }
    let (counts, pauses, buckets, now) = (&v.counts, &v.pauses, &v.buckets, v.now);
    let (in_flight, oldest_age, daemons) = (v.in_flight, v.oldest_pending_age_secs, &v.all_daemons);
    let line: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    outln!("daemon:    {}", daemon_line(daemons, now));
    outln!("rows:      {}", line.join(", "));
    outln!("in flight: {in_flight}   credits used: {}", v.credits_used);
    match oldest_age {
        Some(a) => outln!(
            "oldest pending: {} ago",
            humantime::format_duration(Duration::from_secs(a))
        ),
        None => outln!("oldest pending: none"),
    }
    for (name, b) in buckets {
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
    for p in pauses {
        outln!(
            "PAUSED ({}): {} since {}; next probe {} (`importlyd resume` to retry now)",
            p.scope,
            p.reason,
            clock::iso(p.since),
            clock::iso(p.next_probe)
        );
    }
    outln!("estimate:  {}", v.estimate.line(|t| clock_text(t, now)));
    if let Some(e) = &v.last_error {
        outln!(
            "last error: row {} at {}: {}",
            e.id,
            clock::iso(e.updated_at),
            e.last_error
        );
    }
    Ok(())
}

pub async fn list(store: &Store, filter: &ListFilter, as_json: bool) -> CmdResult {
    let rows = service::list(store, filter).await?;
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
        let note = match (r.state, &r.last_error, &r.media_url) {
            (State::Completed, _, Some(m)) => format!(" -> {m}"),
            (_, Some(e), _) if r.state != State::Completed => format!("  [{e}]"),
            _ => String::new(),
        };
        // The URL is what identifies the row: it gets the room first; the note what is left
        // (at least a 12-character stub, so a failure is always visible).
        let url = shorten(&r.url, room);
        let note_room = room.saturating_sub(url.chars().count()).max(12);
        let updated: String = clock::iso(r.updated_at).chars().take(19).collect();
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

pub async fn show(store: &Store, id: i64, as_json: bool) -> CmdResult {
    let d = service::show(store, id).await?;
    if as_json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&d.to_json()).unwrap_or_default()
        );
        return Ok(());
    }
    let (row, attempts) = (&d.row, &d.attempts);
    let v = row_json(row);
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
    for a in attempts {
        let status = a
            .http_status
            .map(|s| s.to_string())
            .or_else(|| a.error.clone())
            .unwrap_or_default();
        outln!(
            "  {} -> {}  try {} {} {} -> {} ({})",
            clock::iso(a.started_at),
            clock::iso(a.finished_at),
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
    since: Option<SystemTime>,
) -> CmdResult {
    let r = service::retry(store, &ids, all_failed, since, Source::Cli).await?;
    outln!("{} rows back to pending", r.done.len());
    left_alone(&r)
}

pub async fn cancel(store: &Store, ids: Vec<i64>) -> CmdResult {
    let r = service::cancel(store, &ids, Source::Cli).await?;
    outln!("cancelled {} rows", r.done.len());
    left_alone(&r)
}

/// `retry` and `cancel` behave alike: they act on every named row they can, say for each
/// other one why it was left alone, and exit 1 if there was any (0 only when every named row
/// was acted on).
fn left_alone(r: &ActionReport) -> CmdResult {
    for s in &r.skipped {
        outln!("{}", s.reason);
    }
    if r.skipped.is_empty() {
        return Ok(());
    }
    let verb = if r.action == "retry" {
        "retried"
    } else {
        "cancelled"
    };
    Err(Failure {
        code: 1,
        message: format!(
            "{} of the rows named {} not {verb}",
            r.skipped.len(),
            if r.skipped.len() == 1 { "was" } else { "were" }
        ),
    })
}

pub async fn purge(store: &Store, completed_only: bool, before: SystemTime) -> CmdResult {
    let r = service::purge(store, completed_only, before, Source::Cli).await?;
    let before = clock::iso(before);
    outln!("deleted {} rows last changed before {before}", r.rows);
    if r.cache_entries > 0 {
        outln!(
            "deleted {} metadata cache entries fetched before {before}",
            r.cache_entries
        );
    }
    if r.audit_entries > 0 {
        outln!(
            "deleted {} audit entries from before {before}",
            r.audit_entries
        );
    }
    Ok(())
}

pub async fn resume(store: &Store) -> CmdResult {
    let r = service::resume(store, Source::Cli).await?;
    if r.lifted == 0 {
        outln!("not paused");
    } else {
        outln!("pause lifted; a running daemon resumes within poll.queue_interval");
    }
    Ok(())
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
            clock::iso(d.started_at),
            clock::iso(d.heartbeat_at)
        ),
        Some(at) => format!(
            "not running; the last one ({who}) stopped at {}, {silent} ago",
            clock::iso(*at)
        ),
        None => format!(
            "no daemon seen for {silent} (the last, {who}, was killed or is stuck; \
             last heartbeat {})",
            clock::iso(d.heartbeat_at)
        ),
    }
}
