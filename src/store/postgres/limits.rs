//! PostgreSQL: pauses and budgets.
//!
//! Pauses are one plain table every daemon reads and writes, as in SQLite. Budgets are not
//! SQLite's per-daemon `buckets` snapshot: PostgreSQL has the shared `budgets` table (one
//! row per scope, which every daemon takes from). This file only maps between the two
//! shapes; the atomic taking from a shared row is the shared-budget code's, and a daemon's
//! local snapshot never overwrites a row that exists.
//!
//! Names: a `budgets` row of scope `S` reads back as the bucket `S` when its `source` is
//! `server` (the window Importly reported, which `Budget::restore` adopts as the server's)
//! and as `S.local` when it is `config` (the configured guess, which only caps the config
//! window), so `status` says "server" or "config" truthfully. A snapshot's `S` and
//! `S.local` both go to scope `S`.

use std::collections::BTreeMap;

use super::{PgStore, iso};
use crate::clock;
use crate::limits::Scope;
use crate::store::*;

/// The suffix `Budget::snapshot` gives its config window's row.
const LOCAL: &str = ".local";

/// `timestamptz` column `$col` as unix milliseconds (bigint).
macro_rules! unix_ms {
    ($col:literal) => {
        concat!("(extract(epoch FROM ", $col, ") * 1000)::bigint")
    };
}

impl PgStore {
    pub async fn pauses(&self) -> Result<Vec<StoredPause>> {
        Ok(sqlx::query_as::<_, StoredPause>(concat!(
            "SELECT scope, reason, http_status::bigint AS http_status, ",
            iso!("since"),
            " AS since, ",
            iso!("next_probe"),
            " AS next_probe FROM pauses ORDER BY scope"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sets or refreshes a pause; `since` is kept when the scope was already paused.
    pub async fn set_pause(&self, p: &StoredPause) -> Result<()> {
        let status = p.http_status.map(|s| i32::try_from(s).unwrap_or(i32::MAX));
        sqlx::query(
            "INSERT INTO pauses (scope, reason, http_status, since, next_probe) \
             VALUES ($1, $2, $3, $4::timestamptz, $5::timestamptz) \
             ON CONFLICT (scope) DO UPDATE SET reason = excluded.reason, \
               http_status = excluded.http_status, next_probe = excluded.next_probe",
        )
        .bind(p.scope)
        .bind(&p.reason)
        .bind(status)
        .bind(clock::iso(p.since))
        .bind(clock::iso(p.next_probe))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn clear_pause(&self, scope: Scope) -> Result<()> {
        sqlx::query("DELETE FROM pauses WHERE scope = $1")
            .bind(scope)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `importlyd resume`: lifts every pause; every daemon sees it on its next queue tick.
    pub async fn clear_pauses(&self) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM pauses")
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// The shared budgets, as buckets (see the module's note on names).
    pub async fn buckets(&self) -> Result<Vec<StoredBucket>> {
        Ok(sqlx::query_as::<_, StoredBucket>(concat!(
            "SELECT CASE WHEN source = 'server' THEN scope ELSE scope || '",
            ".local",
            "' END AS name, lim::bigint AS lim, greatest(lim - used, 0)::bigint AS remaining, ",
            unix_ms!("window_end"),
            " AS reset_at, window_ms, ",
            unix_ms!("blocked_until"),
            " AS blocked_until, ",
            iso!("updated_at"),
            " AS updated_at FROM budgets ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Creates the shared budget row of every scope in `buckets` that has none yet (the
    /// first daemon's snapshot seeds it); an existing row belongs to the shared-budget code
    /// and is left alone. In `run` this is also the heartbeat: it renews our lease, in the
    /// same transaction, but only while the lease is live; a lapsed one is not revived
    /// (our claims may already be another daemon's).
    pub async fn save_buckets(&self, buckets: &[StoredBucket]) -> Result<()> {
        let me = self.me();
        if buckets.is_empty() && me == 0 {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (scope, (b, source)) in seeds(buckets) {
            let lim = b.lim.clamp(0, i64::from(i32::MAX));
            let used = (lim - b.remaining).clamp(0, lim);
            sqlx::query(
                "INSERT INTO budgets (scope, lim, used, window_ms, window_end, blocked_until, \
                   source, updated_at) \
                 VALUES ($1, $2, $3, $4, timestamptz 'epoch' + $5 * interval '1 millisecond', \
                   timestamptz 'epoch' + $6 * interval '1 millisecond', $7, now()) \
                 ON CONFLICT (scope) DO NOTHING",
            )
            .bind(scope)
            .bind(i32::try_from(lim).unwrap_or(i32::MAX))
            .bind(i32::try_from(used).unwrap_or(i32::MAX))
            .bind(b.window_ms.max(0))
            .bind(b.reset_at)
            .bind(b.blocked_until)
            .bind(source)
            .execute(&mut *tx)
            .await?;
        }
        if me != 0 {
            sqlx::query(
                "UPDATE daemons SET heartbeat_at = now() \
                 WHERE id = $1 AND stopped_at IS NULL \
                   AND heartbeat_at + lease_ms * interval '1 millisecond' > now()",
            )
            .bind(me)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The row to seed each scope with, and its `source`: the server's window when the snapshot
/// has one of known length (the truth), else the config's (always of known length), else a
/// server window of unknown length.
fn seeds(buckets: &[StoredBucket]) -> BTreeMap<&str, (&StoredBucket, &'static str)> {
    let (mut server, mut config) = (BTreeMap::new(), BTreeMap::new());
    for b in buckets {
        match b.name.strip_suffix(LOCAL) {
            Some(scope) => config.insert(scope, b),
            None => server.insert(b.name.as_str(), b),
        };
    }
    let mut out: BTreeMap<&str, (&StoredBucket, &'static str)> = config
        .into_iter()
        .map(|(scope, b)| (scope, (b, "config")))
        .collect();
    for (scope, b) in server {
        if b.window_ms > 0 || !out.contains_key(scope) {
            out.insert(scope, (b, "server"));
        }
    }
    out
}
