//! PostgreSQL: the daemons table, the cluster's membership. Each registration gets a fresh
//! id (the fencing token its claims carry); its lease is live while
//! `heartbeat_at + lease_ms > now()` on the database's clock.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{PgStore, iso};
use crate::store::{DaemonInfo, Result, StoredDaemon};

impl PgStore {
    /// `run`: a new member with a fresh id, its lease starting now. The id becomes the
    /// owner of every row this store claims.
    pub async fn register_daemon(&self, info: DaemonInfo, lease: Duration) -> Result<()> {
        let info = self.daemon.get_or_init(|| info).clone();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO daemons (host, pid, version, lease_ms) VALUES ($1, $2, $3, $4) \
             RETURNING id",
        )
        .bind(&info.host)
        .bind(i32::try_from(info.pid).unwrap_or(i32::MAX))
        .bind(&info.version)
        .bind(lease_ms)
        .fetch_one(&self.pool)
        .await?;
        self.me.store(id, Ordering::Release);
        Ok(())
    }

    /// A clean shutdown: our lease ends now, so nobody waits for it to lapse. Rows still
    /// ours (`running`) are adopted by the others at once.
    pub async fn daemon_stopped(&self) -> Result<()> {
        let me = self.me();
        if me == 0 {
            return Ok(());
        }
        sqlx::query("UPDATE daemons SET stopped_at = now() WHERE id = $1")
            .bind(me)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every daemon row, the most recently seen first, with whether its lease is live by
    /// the database's clock and how many jobs it holds.
    pub async fn daemons(&self) -> Result<Vec<StoredDaemon>> {
        Ok(sqlx::query_as::<_, StoredDaemon>(concat!(
            "SELECT d.id::text AS id, d.host, d.pid::bigint AS pid, d.version, ",
            iso!("d.started_at"),
            " AS started_at, ",
            iso!("d.heartbeat_at"),
            " AS heartbeat_at, ",
            iso!("d.stopped_at"),
            " AS stopped_at, \
             (SELECT count(*) FROM imports i WHERE i.owner = d.id \
                AND i.state IN ('submitting', 'running')) AS in_flight, \
             (d.stopped_at IS NULL \
                AND d.heartbeat_at + d.lease_ms * interval '1 millisecond' > now()) AS live \
             FROM daemons d ORDER BY d.heartbeat_at DESC, d.id DESC LIMIT 100"
        ))
        .fetch_all(&self.pool)
        .await?)
    }
}
