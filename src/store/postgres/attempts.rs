//! PostgreSQL: attempts, the failure log behind `importlyd ticket`.
//!
//! The rules are SQLite's (`store::attempts`): a record goes to a row that still exists,
//! the log is trimmed to `keep` failure records, accepted submits are never trimmed. Added
//! here: a daemon writes to the log of a row it owns, nothing else (fencing: a row another
//! daemon adopted, or that lease expiry handed back, answers [`Written::Gone`]).

use std::borrow::Cow;

use serde_json::Value;
use sqlx::PgConnection;

use super::{PgStore, iso};
use crate::store::*;

/// Inserts one record for `import_id`, which the caller has locked (a row lock from its
/// UPDATE, or [`owned`]'s `FOR KEY SHARE`): so the foreign key cannot fail on a row deleted
/// meanwhile. Then trims the row's log to `keep` failure records; accepted submits stay,
/// they are the proof of which job a row started.
pub(super) async fn insert(
    conn: &mut PgConnection,
    import_id: i64,
    r: &AttemptRecord,
    keep: u32,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO import_attempts (import_id, attempt, method, endpoint, request_body, \
         started_at, finished_at, http_status, error, outcome, rate_limit, response_body, \
         body_truncated, job_id, daemon_version) \
         VALUES ($1, $2, $3, $4, $5, $6::timestamptz, $7::timestamptz, $8, $9, $10, \
                 $11::jsonb, $12, $13, $14, $15)",
    )
    .bind(import_id)
    .bind(narrow(r.attempt))
    .bind(text(&r.method))
    .bind(text(&r.endpoint))
    .bind(r.request_body.as_deref().map(text))
    .bind(crate::clock::iso(r.started_at))
    .bind(crate::clock::iso(r.finished_at))
    .bind(r.http_status.map(narrow))
    .bind(r.error.as_deref().map(text))
    .bind(text(&r.outcome))
    .bind(r.rate_limit.as_deref().map(json))
    .bind(r.response_body.as_deref().map(text))
    .bind(r.body_truncated)
    .bind(r.job_id.as_deref().map(text))
    .bind(env!("CARGO_PKG_VERSION"))
    .execute(&mut *conn)
    .await?;
    // As SQLite's: `keep` 0 selects no row, min() is NULL and nothing is deleted.
    sqlx::query(
        "DELETE FROM import_attempts WHERE import_id = $1 AND outcome <> 'accepted' \
         AND id < (SELECT min(id) FROM (SELECT id FROM import_attempts \
                   WHERE import_id = $1 AND outcome <> 'accepted' \
                   ORDER BY id DESC LIMIT $2) AS kept)",
    )
    .bind(import_id)
    .bind(i64::from(keep))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether row `id` exists and is held by daemon `me`, locking it against a delete until
/// the transaction ends (`FOR KEY SHARE`: it does not block the row's other updates).
pub(super) async fn owned(conn: &mut PgConnection, id: i64, me: i64) -> Result<Written> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM imports WHERE id = $1 AND owner = $2 FOR KEY SHARE")
            .bind(id)
            .bind(me)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(if found.is_some() {
        Written::Row
    } else {
        Written::Gone
    })
}

/// PostgreSQL refuses what SQLite stores: a NUL character in `text` (SQLSTATE 22021) and
/// its escape `\u0000` in `jsonb` (22P05). What a server sent is stored and never refused
/// (an error no retry cures would wedge the scheduler's write), so a NUL becomes U+FFFD,
/// the replacement character, in text that comes from outside.
pub(super) fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// [`text`] for JSON text bound to a `jsonb` column: the NULs inside its strings (and
/// keys). Text that is not JSON is left for the cast to refuse, as before.
pub(super) fn json(s: &str) -> Cow<'_, str> {
    if !s.contains("\\u0000") {
        return Cow::Borrowed(s);
    }
    match serde_json::from_str::<Value>(s) {
        Ok(mut v) => {
            scrub(&mut v);
            Cow::Owned(v.to_string())
        }
        Err(_) => Cow::Borrowed(s),
    }
}

/// A list of records (`fields_json`: the string fields that hold JSON text for `jsonb`) as
/// one JSON array ready for `jsonb_to_recordset`, with [`text`]'s and [`json`]'s cleaning:
/// a NUL anywhere shows as `\u0000` in the serialized text, so the usual case costs one scan.
pub(super) fn json_list<T: serde::Serialize>(list: &[T], fields_json: &[&str]) -> Result<String> {
    let invalid = |e: serde_json::Error| StoreError::Invalid(e.to_string());
    let out = serde_json::to_string(list).map_err(invalid)?;
    if !out.contains("\\u0000") {
        return Ok(out);
    }
    let mut v = serde_json::to_value(list).map_err(invalid)?;
    scrub(&mut v);
    if let Value::Array(items) = &mut v {
        for item in items {
            for field in fields_json {
                if let Some(Value::String(s)) = item.get_mut(*field)
                    && let Cow::Owned(clean) = json(s)
                {
                    *s = clean;
                }
            }
        }
    }
    Ok(v.to_string())
}

fn scrub(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(clean) = text(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::Object(m) => {
            if m.keys().any(|k| k.contains('\0')) {
                *m = std::mem::take(m)
                    .into_iter()
                    .map(|(k, v)| (text(&k).into_owned(), v))
                    .collect();
            }
            m.values_mut().for_each(scrub);
        }
        _ => {}
    }
}

/// The `integer` columns (`attempt`, `http_status`) hold what the scheduler counts; a value
/// beyond them is no real count, so it is clamped rather than refused.
fn narrow(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX })
}

impl PgStore {
    /// Logs an exchange that changed nothing about the row (e.g. a failed status poll), if
    /// the row is still this daemon's.
    pub async fn record_attempt(
        &self,
        import_id: i64,
        r: &AttemptRecord,
        keep: u32,
    ) -> Result<Written> {
        let mut tx = self.pool.begin().await?;
        if owned(&mut tx, import_id, self.me()).await? == Written::Gone {
            return Ok(Written::Gone);
        }
        insert(&mut tx, import_id, r, keep).await?;
        tx.commit().await?;
        Ok(Written::Row)
    }

    /// The row's log, oldest first.
    pub async fn attempts(&self, import_id: i64) -> Result<Vec<StoredAttempt>> {
        Ok(sqlx::query_as::<_, StoredAttempt>(concat!(
            "SELECT id, import_id, attempt::bigint AS attempt, method, endpoint, request_body, ",
            iso!("started_at"),
            " AS started_at, ",
            iso!("finished_at"),
            " AS finished_at, http_status::bigint AS http_status, error, outcome, \
             rate_limit::text AS rate_limit, response_body, body_truncated, job_id, \
             daemon_version \
             FROM import_attempts WHERE import_id = $1 ORDER BY id"
        ))
        .bind(import_id)
        .fetch_all(&self.pool)
        .await?)
    }
}
