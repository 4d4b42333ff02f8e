//! The audit log of operator actions and the row pages of the admin API.

use serde::Serialize;

use std::time::SystemTime;

use super::State;
use super::state::{self, Iso, LaxIso};

/// One operator action as recorded.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "Iso")]
    pub at: SystemTime,
    pub action: String,
    pub target: String,
    pub source: String,
    pub ok: bool,
    pub detail: Option<String>,
}

/// Failed rows sharing one `last_error`.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct FailureGroup {
    /// The error; `null` for failed rows without one.
    pub reason: Option<String>,
    pub rows: i64,
    /// The most recently failed row of the group.
    pub latest_id: i64,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "LaxIso")]
    pub latest_at: SystemTime,
}

/// Rows that ended in one minute (UTC, `2026-12-07T01:52`).
#[derive(Clone, Debug, Serialize)]
pub struct MinuteCount {
    #[serde(serialize_with = "state::minute")]
    pub minute: SystemTime,
    pub completed: i64,
    pub failed: i64,
}

/// `finished_per_minute`'s rows, `(minute, state, count)` ordered by minute (the minute as
/// the first 16 characters of the stored `updated_at`, read leniently as `state::LaxIso`;
/// the state `completed` or `failed`), folded into one count per minute.
pub(crate) fn per_minute(rows: Vec<(String, String, i64)>) -> Vec<MinuteCount> {
    let mut out: Vec<MinuteCount> = Vec::new();
    for (minute, state, n) in rows {
        let minute = state::lax_minute(&minute);
        if out.last().is_none_or(|m| m.minute != minute) {
            out.push(MinuteCount {
                minute,
                completed: 0,
                failed: 0,
            });
        }
        if let Some(m) = out.last_mut() {
            if state == "completed" {
                m.completed = n;
            } else {
                m.failed = n;
            }
        }
    }
    out
}

/// What a page of rows is cut by: all filters apply.
#[derive(Clone, Debug, Default)]
pub struct PageFilter {
    pub state: Option<State>,
    /// Matched, as a substring, against url, external_id and last_error.
    pub q: Option<String>,
    /// Rows with an id above this one (the previous page's last id).
    pub after: Option<i64>,
    pub limit: u32,
}

/// `q` as a LIKE pattern matching it anywhere, with `%`, `_` and `\` taken literally.
pub(crate) fn like_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}
