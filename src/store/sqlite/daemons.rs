//! SQLite: daemons.

use super::SqliteStore;
use crate::clock;
use crate::store::Result;
use crate::store::daemons::*;
use sqlx::SqliteConnection;

/// Writes (or refreshes) `d`'s row with `heartbeat_at = now`, in the caller's transaction.
pub(crate) async fn beat(conn: &mut SqliteConnection, d: &DaemonInfo, now: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO daemons (id, host, pid, version, started_at, heartbeat_at) \
         VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, stopped_at = NULL",
    )
    .bind(&d.id)
    .bind(&d.host)
    .bind(i64::from(d.pid))
    .bind(&d.version)
    .bind(clock::iso(d.started_at))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

impl SqliteStore {
    /// `run`, holding the lock: this store's budget saves now refresh `info`'s heartbeat.
    /// The rows of earlier daemons go (they are dead: we hold the lock) and ours is written.
    pub async fn register_daemon(
        &self,
        info: DaemonInfo,
        _lease: std::time::Duration,
    ) -> Result<()> {
        let info = self.daemon.get_or_init(|| info).clone();
        let mut writer = self.writer().await?;
        let mut tx = self.begin_immediate(&mut writer).await?;
        sqlx::query("DELETE FROM daemons WHERE id <> ?")
            .bind(&info.id)
            .execute(&mut *tx)
            .await?;
        beat(&mut tx, &info, &clock::now_iso()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A clean shutdown: our row says when we stopped, so `status` does not wait for the
    /// heartbeat to go stale.
    pub async fn daemon_stopped(&self) -> Result<()> {
        let Some(info) = self.daemon.get() else {
            return Ok(());
        };
        let now = clock::now_iso();
        sqlx::query("UPDATE daemons SET stopped_at = ?1, heartbeat_at = ?1 WHERE id = ?2")
            .bind(&now)
            .bind(&info.id)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(())
    }

    /// Every daemon row, the most recently seen first.
    pub async fn daemons(&self) -> Result<Vec<StoredDaemon>> {
        Ok(sqlx::query_as::<_, StoredDaemon>(
            "SELECT id, host, pid, version, started_at, heartbeat_at, stopped_at, \
             NULL AS in_flight, NULL AS live \
             FROM daemons ORDER BY heartbeat_at DESC, id",
        )
        .fetch_all(&self.reader)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::store::*;
    #[allow(unused_imports)]
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_second_lock_on_the_same_database_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let first = DaemonLock::acquire(&db).unwrap();
        let err = DaemonLock::acquire(&db).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {} on {}", first.info.pid, first.info.host)),
            "{text}"
        );
        assert_eq!(err.exit_code(), 1);
        drop(first);
        DaemonLock::acquire(&db).expect("free again once the holder is gone");
    }

    #[test]
    fn a_symlink_to_the_database_shares_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        std::fs::write(&db, b"").unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let _held = DaemonLock::acquire(&db).unwrap();
        assert!(matches!(
            DaemonLock::acquire(&link),
            Err(LockError::Held { .. })
        ));
    }

    #[test]
    fn a_missing_directory_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = DaemonLock::acquire(&dir.path().join("nope/q.db")).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().contains("database.path"), "{err}");
    }

    #[test]
    fn a_heartbeat_older_than_the_threshold_is_not_live() {
        let now = SystemTime::now();
        let at = |ago: Duration| now - ago;
        let mut d = StoredDaemon {
            id: "h:1:0".into(),
            host: "h".into(),
            pid: 1,
            version: "0".into(),
            started_at: at(Duration::from_secs(600)),
            heartbeat_at: at(Duration::from_secs(5)),
            stopped_at: None,
            in_flight: None,
            live: None,
        };
        assert!(d.is_live(now));
        d.heartbeat_at = at(DAEMON_STALE_AFTER + Duration::from_secs(1));
        assert!(!d.is_live(now));
        d.heartbeat_at = at(Duration::from_secs(1));
        d.stopped_at = Some(d.heartbeat_at);
        assert!(!d.is_live(now));
    }
}
