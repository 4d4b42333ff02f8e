//! The PostgreSQL store: any number of daemons, on any hosts, share one queue and one
//! account through it.
//!
//! A pool of connections (PostgreSQL handles concurrent writers itself); rows are claimed
//! with `FOR UPDATE SKIP LOCKED`; every time that decides anything (due rows, leases,
//! windows) is the database's `now()`, so the hosts' clocks never need to agree.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

use crate::store::*;

mod attempts;
mod audit;
mod cluster;
mod daemons;
mod dashboard;
mod limits;
mod metadata;
mod ops;
mod progress;
mod queue;

/// The channel the insert trigger NOTIFYs (`migrations_pg`).
pub const CHANNEL: &str = "importlyd_imports";

/// `timestamptz` column (or expression) `$col` as the canonical text (`clock::iso`:
/// `2026-12-07T10:00:00.123Z`), what `state::Iso` (or `LaxIso` for `imports`) reads back
/// into a `SystemTime`. Times go in as that text too, cast with `::timestamptz`.
macro_rules! iso {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        )
    };
}
pub(crate) use iso;

/// Every column of `imports`, as [`Row`] reads it.
pub(crate) const ROW_COLUMNS: &str = concat!(
    "id, url, kind, options::text AS options, external_id, state, attempts::bigint AS attempts, ",
    iso!("next_attempt_at"),
    " AS next_attempt_at, importly_job_id, media_url, credits_used, result::text AS result, \
     last_error, ",
    iso!("created_at"),
    " AS created_at, ",
    iso!("updated_at"),
    " AS updated_at, ",
    iso!("completed_at"),
    " AS completed_at"
);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_pg");

#[derive(Clone, Debug)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    /// The URL without its password, for logs.
    shown: String,
    /// Set by `run` (`register_daemon`): the daemon this store speaks for.
    pub(crate) daemon: Arc<OnceLock<DaemonInfo>>,
    /// This daemon's id in `daemons` (0: none, an operator command): the owner every claim
    /// carries and every write of a claimed row checks (fencing). A fresh id at every
    /// registration, so a daemon that lost its lease and rejoined can never write through a
    /// claim of its previous life.
    pub(crate) me: Arc<AtomicI64>,
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "postgres://(unparseable URL)".to_owned(),
    }
}

impl PgStore {
    /// Connects and applies migrations.
    pub async fn open(url: &str) -> Result<PgStore> {
        let store = PgStore::open_unmigrated(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without touching the schema.
    pub async fn open_unmigrated(url: &str) -> Result<PgStore> {
        let opts: PgConnectOptions = url.parse().map_err(|_| {
            StoreError::Invalid(format!(
                "database.url {} is not a PostgreSQL URL",
                redact_url(url)
            ))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        Ok(PgStore {
            pool,
            shown: redact_url(url),
            daemon: Arc::new(OnceLock::new()),
            me: Arc::new(AtomicI64::new(0)),
        })
    }

    /// Wakes `wake` on every NOTIFY of [`CHANNEL`] (the insert trigger), and once after
    /// every (re)connection: notifications sent while the connection was down are lost, so
    /// a reconnect means "look at everything again". Polling stays the fallback.
    pub fn listen(&self, wake: Arc<Notify>) -> AbortOnDropHandle<()> {
        let pool = self.pool.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            let mut failing = false;
            loop {
                let listener = async {
                    let mut l = PgListener::connect_with(&pool).await?;
                    l.listen(CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                match listener.await {
                    Ok(mut l) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("listening for new rows again");
                        }
                        delay = Duration::from_millis(100);
                        wake.notify_one();
                        loop {
                            match l.try_recv().await {
                                Ok(Some(_)) => wake.notify_one(),
                                // The connection dropped; the next call reconnects and
                                // re-LISTENs. What was sent meanwhile is lost: rescan.
                                Ok(None) => wake.notify_one(),
                                Err(e) => {
                                    tracing::warn!(error = %e, "lost the LISTEN connection; polling until it is back");
                                    failing = true;
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot LISTEN for new rows; polling until it works");
                            failing = true;
                        }
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }))
    }

    /// This daemon's id, the owner of its claims; 0 outside `run`.
    pub(crate) fn me(&self) -> i64 {
        self.me.load(Ordering::Acquire)
    }

    pub fn describe(&self) -> String {
        self.shown.clone()
    }

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
