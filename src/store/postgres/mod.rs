//! The PostgreSQL store: any number of daemons, on any hosts, share one queue and one
//! account through it.
//!
//! A pool of connections (PostgreSQL handles concurrent writers itself); rows are claimed
//! with `FOR UPDATE SKIP LOCKED`; every time that decides anything (due rows, leases,
//! windows) is the database's `now()`, so the hosts' clocks never need to agree.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::stream::BoxStream;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

use crate::store::*;

mod daemons;

/// The channel the insert trigger NOTIFYs (`migrations_pg`).
pub const CHANNEL: &str = "importlyd_imports";

/// `timestamptz` column (or expression) `$col` as the canonical text every time crosses the
/// store interface in (`clock::iso`: `2026-12-07T10:00:00.123Z`).
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

fn todo_verb(name: &str) -> StoreError {
    StoreError::Invalid(format!("PostgreSQL: {name} is not implemented yet"))
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

    pub fn export(&self, _f: &ListFilter) -> BoxStream<'_, Result<ExportRow>> {
        Box::pin(futures_util::stream::once(async {
            Err(todo_verb("export"))
        }))
    }

    pub async fn claim_due(&self, _kind: &str, _n: u32, _now: &str) -> Result<Vec<Claimed>> {
        Err(todo_verb("claim_due"))
    }

    pub async fn next_due(&self, _kind: &str) -> Result<Option<String>> {
        Err(todo_verb("next_due"))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn reschedule(
        &self,
        _id: i64,
        _due: Option<&str>,
        _count: bool,
        _max_attempts: u32,
        _last_error: &str,
        _record: Option<&AttemptRecord>,
        _keep: u32,
    ) -> Result<Fate> {
        Err(todo_verb("reschedule"))
    }

    pub async fn fail(
        &self,
        _id: i64,
        _reason: &str,
        _result: Option<&str>,
        _record: Option<&AttemptRecord>,
        _keep: u32,
    ) -> Result<Written> {
        Err(todo_verb("fail"))
    }

    pub async fn running(&self) -> Result<Vec<Running>> {
        Err(todo_verb("running"))
    }

    pub async fn recover_submitting(
        &self,
        _keep: u32,
        _endpoint: fn(&str) -> &'static str,
    ) -> Result<Vec<i64>> {
        Err(todo_verb("recover_submitting"))
    }

    pub async fn release_ambiguous(
        &self,
        _id: i64,
        _endpoint: &str,
        _why: &str,
        _keep: u32,
    ) -> Result<Written> {
        Err(todo_verb("release_ambiguous"))
    }

    pub async fn release(&self, _ids: &[i64]) -> Result<()> {
        Err(todo_verb("release"))
    }

    pub async fn record_progress(&self, _p: &Progress) -> Result<Vec<i64>> {
        Err(todo_verb("record_progress"))
    }

    pub async fn record_attempt(
        &self,
        _import_id: i64,
        _r: &AttemptRecord,
        _keep: u32,
    ) -> Result<Written> {
        Err(todo_verb("record_attempt"))
    }

    pub async fn attempts(&self, _import_id: i64) -> Result<Vec<StoredAttempt>> {
        Err(todo_verb("attempts"))
    }

    pub async fn pauses(&self) -> Result<Vec<StoredPause>> {
        Err(todo_verb("pauses"))
    }

    pub async fn set_pause(&self, _p: &StoredPause) -> Result<()> {
        Err(todo_verb("set_pause"))
    }

    pub async fn clear_pause(&self, _scope: &str) -> Result<()> {
        Err(todo_verb("clear_pause"))
    }

    pub async fn clear_pauses(&self) -> Result<u64> {
        Err(todo_verb("clear_pauses"))
    }

    pub async fn buckets(&self) -> Result<Vec<StoredBucket>> {
        Err(todo_verb("buckets"))
    }

    pub async fn save_buckets(&self, _buckets: &[StoredBucket]) -> Result<()> {
        Err(todo_verb("save_buckets"))
    }

    pub async fn cached_metadata(
        &self,
        _url: &str,
        _fresh_since: &str,
    ) -> Result<Option<CachedMetadata>> {
        Err(todo_verb("cached_metadata"))
    }

    pub async fn metadata_running(&self, _url: &str) -> Result<bool> {
        Err(todo_verb("metadata_running"))
    }

    pub async fn complete_metadata(
        &self,
        _id: i64,
        _job_id: &str,
        _title: Option<&str>,
        _duration: Option<f64>,
        _formats: &str,
        _data: &str,
    ) -> Result<Written> {
        Err(todo_verb("complete_metadata"))
    }

    pub async fn complete_from_cache(&self, _id: i64, _cached: &CachedMetadata) -> Result<()> {
        Err(todo_verb("complete_from_cache"))
    }

    pub async fn ensure_metadata_row(&self, _import_id: i64, _url: &str) -> Result<MetadataRow> {
        Err(todo_verb("ensure_metadata_row"))
    }

    pub async fn enqueue(&self, _rows: &[EnqueueRow]) -> Result<Vec<i64>> {
        Err(todo_verb("enqueue"))
    }

    pub async fn enqueue_chunk(&self, _rows: &[EnqueueRow]) -> Result<ChunkOutcome> {
        Err(todo_verb("enqueue_chunk"))
    }

    pub async fn ids_by_external_id(&self, _external_ids: &[String]) -> Result<Vec<i64>> {
        Err(todo_verb("ids_by_external_id"))
    }

    pub async fn select_ids(
        &self,
        _ids: Option<&[i64]>,
        _since: Option<&str>,
        _prefix: Option<&str>,
        _unfinished: bool,
    ) -> Result<Vec<i64>> {
        Err(todo_verb("select_ids"))
    }

    pub async fn progress_of(&self, _ids: &[i64]) -> Result<RowsProgress> {
        Err(todo_verb("progress_of"))
    }

    pub async fn unsuccessful_among(&self, _ids: &[i64], _limit: u32) -> Result<Vec<Row>> {
        Err(todo_verb("unsuccessful_among"))
    }

    pub async fn row(&self, _id: i64) -> Result<Option<Row>> {
        Err(todo_verb("row"))
    }

    pub async fn list(&self, _f: &ListFilter) -> Result<Vec<Row>> {
        Err(todo_verb("list"))
    }

    pub async fn status_counts(&self) -> Result<StatusCounts> {
        Err(todo_verb("status_counts"))
    }

    pub async fn recount(&self) -> Result<()> {
        Err(todo_verb("recount"))
    }

    pub async fn queue_shape(&self) -> Result<QueueShape> {
        Err(todo_verb("queue_shape"))
    }

    pub async fn retry(
        &self,
        _ids: &[i64],
        _all_failed: bool,
        _since: Option<&str>,
    ) -> Result<Vec<i64>> {
        Err(todo_verb("retry"))
    }

    pub async fn cancel(&self, _ids: &[i64]) -> Result<Vec<i64>> {
        Err(todo_verb("cancel"))
    }

    pub async fn purge(&self, _before: &str, _completed_only: bool) -> Result<u64> {
        Err(todo_verb("purge"))
    }

    pub async fn purge_audit(&self, _before: &str) -> Result<u64> {
        Err(todo_verb("purge_audit"))
    }

    pub async fn purge_metadata_cache(&self, _before: &str) -> Result<u64> {
        Err(todo_verb("purge_metadata_cache"))
    }

    pub async fn audit(
        &self,
        _action: &str,
        _target: &str,
        _source: &str,
        _ok: bool,
        _detail: &str,
    ) -> Result<()> {
        Err(todo_verb("audit"))
    }

    pub async fn audit_log(&self, _limit: u32) -> Result<Vec<AuditEntry>> {
        Err(todo_verb("audit_log"))
    }

    pub async fn page(&self, _f: &PageFilter) -> Result<Vec<Row>> {
        Err(todo_verb("page"))
    }

    pub async fn failure_groups(&self, _limit: u32) -> Result<Vec<FailureGroup>> {
        Err(todo_verb("failure_groups"))
    }

    pub async fn finished_per_minute(&self, _since: &str) -> Result<Vec<MinuteCount>> {
        Err(todo_verb("finished_per_minute"))
    }

    pub async fn failed_ids(&self, _q: Option<&str>, _cap: u32) -> Result<Vec<i64>> {
        Err(todo_verb("failed_ids"))
    }

    pub async fn latest_failed(&self, _limit: u32) -> Result<Vec<Row>> {
        Err(todo_verb("latest_failed"))
    }
}
