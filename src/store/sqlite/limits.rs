//! SQLite: limits.

use super::SqliteStore;
use crate::clock;
use crate::limits::Scope;
use crate::store::Result;
use crate::store::limits::*;

impl SqliteStore {
    pub async fn pauses(&self) -> Result<Vec<StoredPause>> {
        Ok(sqlx::query_as::<_, StoredPause>(
            "SELECT scope, reason, http_status, since, next_probe FROM pauses ORDER BY scope",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// Sets or refreshes a pause; `since` is kept when the scope was already paused.
    pub async fn set_pause(&self, p: &StoredPause) -> Result<()> {
        sqlx::query(
            "INSERT INTO pauses (scope, reason, http_status, since, next_probe) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (scope) DO UPDATE SET reason = excluded.reason, \
               http_status = excluded.http_status, next_probe = excluded.next_probe",
        )
        .bind(p.scope)
        .bind(&p.reason)
        .bind(p.http_status)
        .bind(clock::iso(p.since))
        .bind(clock::iso(p.next_probe))
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    pub async fn clear_pause(&self, scope: Scope) -> Result<()> {
        sqlx::query("DELETE FROM pauses WHERE scope = ?")
            .bind(scope)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(())
    }

    /// `importlyd resume`: lifts every pause; the daemon sees it on its next queue tick.
    pub async fn clear_pauses(&self) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM pauses")
            .execute(&mut *self.writer().await?)
            .await?
            .rows_affected())
    }

    pub async fn buckets(&self) -> Result<Vec<StoredBucket>> {
        Ok(sqlx::query_as::<_, StoredBucket>(
            "SELECT name, lim, remaining, reset_at, window_ms, blocked_until, updated_at \
             FROM buckets ORDER BY name",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// Saves all buckets in one transaction. In `importlyd run` this is also the daemon's
    /// heartbeat (`daemons.heartbeat_at`): the scheduler saves at least every 10 s as its
    /// idle write probe, and the beat rides in the same transaction.
    pub async fn save_buckets(&self, buckets: &[StoredBucket]) -> Result<()> {
        let daemon = self.daemon.get();
        if buckets.is_empty() && daemon.is_none() {
            return Ok(());
        }
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        let now = clock::now_iso();
        for b in buckets {
            sqlx::query(
                "INSERT INTO buckets (name, lim, remaining, reset_at, window_ms, blocked_until, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET lim = excluded.lim, \
                   remaining = excluded.remaining, reset_at = excluded.reset_at, \
                   window_ms = excluded.window_ms, blocked_until = excluded.blocked_until, \
                   updated_at = excluded.updated_at",
            )
            .bind(&b.name)
            .bind(b.lim)
            .bind(b.remaining)
            .bind(b.reset_at)
            .bind(b.window_ms)
            .bind(b.blocked_until)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(d) = daemon {
            super::daemons::beat(&mut tx, d, &now).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
