//! The store owns every SQL statement of the daemon and its commands.
//!
//! [`Store`] is the one interface: every verb the scheduler, the CLI, the service layer and
//! the dashboard use. It has two implementations, each with its own SQL: [`sqlite`] (the
//! default: one host, one daemon per file, no server) and [`postgres`] (several daemons on
//! several hosts sharing one queue and one account). Nothing outside this module knows
//! which one it talks to; `tests/conformance.rs` runs the same tests against both.
//!
//! The types that cross the interface live in the modules named for their part of the
//! queue (`queue`, `attempts`, `limits`, ...); the SQL lives in `sqlite/` and `postgres/`.
//! Times cross it as `SystemTime`, kinds as `JobKind`, row states as [`State`] (`state`);
//! each backend renders them in its own SQL and checks what it reads back.

pub mod attempts;
pub mod audit;
pub mod cluster;
pub mod daemons;
pub mod dashboard;
pub mod limits;
pub mod metadata;
pub mod ops;
pub mod postgres;
pub mod progress;
pub mod queue;
pub mod sqlite;
pub mod state;

use futures_util::stream::BoxStream;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::DatabaseConfig;
use crate::importly::JobKind;
use crate::limits::Scope;
use state::{LaxIso, OptLaxIso};

pub use attempts::{AttemptRecord, StoredAttempt, Written};
pub use audit::{AuditEntry, FailureGroup, MinuteCount, PageFilter};
pub use cluster::{Adopted, BudgetGuess, BudgetSeen, Grant, Lease};
pub use daemons::{DAEMON_STALE_AFTER, DaemonInfo, DaemonLock, LockError, StoredDaemon};
pub use limits::{StoredBucket, StoredPause};
pub use metadata::{CachedMetadata, MetadataRow};
pub use ops::{
    ChunkOutcome, EnqueueRow, ExportRow, LastError, ListFilter, MEAN_JOB_SAMPLE, QueueShape,
    RowsProgress, StatusCounts,
};
pub use postgres::PgStore;
pub use progress::{Finished, Progress, Started};
pub use queue::{Claim, Claimed, Fate, Running};
pub use sqlite::{BUSY_TIMEOUT, SqliteStore};
pub use state::State;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    /// `open_existing` found no SQLite file (the path is a mistake, not an empty queue).
    #[error("no database at {0} (check database.path; `importlyd migrate` creates one)")]
    NoDatabase(String),
}

impl StoreError {
    /// True for a failed CHECK/UNIQUE/NOT NULL constraint: the input was bad, not the disk.
    pub fn is_constraint(&self) -> bool {
        match self {
            StoreError::Sql(sqlx::Error::Database(e)) => {
                matches!(
                    e.kind(),
                    sqlx::error::ErrorKind::CheckViolation
                        | sqlx::error::ErrorKind::UniqueViolation
                        | sqlx::error::ErrorKind::NotNullViolation
                        | sqlx::error::ErrorKind::ForeignKeyViolation
                        | sqlx::error::ErrorKind::Other
                ) && e.message().contains("constraint")
            }
            _ => false,
        }
    }

    /// True for what waiting can cure: a busy or locked file, a full disk, a read-only or
    /// failing file system, a pool that timed out. False for a broken statement or schema,
    /// which no retry fixes.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sql(sqlx::Error::Database(e)) => {
                if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    return pg_transient(pg.code());
                }
                // SQLite's primary result code is the low byte of the extended one.
                let code = e
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .map(|c| c & 0xff);
                // BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN
                matches!(code, Some(5 | 6 | 8 | 10 | 13 | 14))
            }
            StoreError::Sql(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_),
            ) => true,
            _ => false,
        }
    }
}

/// PostgreSQL SQLSTATEs that waiting cures: a lost or refused connection (class 08), a
/// server shutting down or starting (57P01-57P03), no room (53: disk full, out of memory,
/// too many connections), a serialization failure or deadlock (40001, 40P01), a lock not
/// available (55P03), a read-only standby (25006).
fn pg_transient(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03" | "25006"
        )
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Every column of `imports`. Its times are read with `LaxIso`: users write this table (see
/// `state::LaxIso`).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Row {
    pub id: i64,
    pub url: String,
    pub kind: JobKind,
    pub options: String,
    pub external_id: Option<String>,
    pub state: State,
    pub attempts: i64,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "LaxIso")]
    pub next_attempt_at: SystemTime,
    pub importly_job_id: Option<String>,
    pub media_url: Option<String>,
    pub credits_used: Option<i64>,
    pub result: Option<String>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "LaxIso")]
    pub created_at: SystemTime,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "LaxIso")]
    pub updated_at: SystemTime,
    #[serde(serialize_with = "state::iso_opt")]
    #[sqlx(try_from = "OptLaxIso")]
    pub completed_at: Option<SystemTime>,
}

pub(crate) const ROW_COLUMNS: &str = "id, url, kind, options, external_id, state, attempts, \
     next_attempt_at, importly_job_id, media_url, credits_used, result, last_error, \
     created_at, updated_at, completed_at";

/// Keeps a change watch alive (see [`Store::watch`]).
pub enum Watch {
    File(Option<crate::wakeup::DbWatcher>),
    Task(tokio_util::task::AbortOnDropHandle<()>),
}

/// The queue, in SQLite or in PostgreSQL.
#[derive(Clone, Debug)]
// Unboxed: a store is made once and cloned into tasks; the size is a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Runs `$e` with `$s` bound to whichever implementation `$store` is.
macro_rules! each {
    ($store:expr, $s:ident => $e:expr) => {
        match $store {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

/// The interface: each verb, once, dispatched to the implementation. Both implement every
/// verb with the same signature (the compiler checks it here).
macro_rules! verbs {
    ($( $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Store {
            $(
                $(#[$m])*
                #[allow(clippy::too_many_arguments)]
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    each!(self, s => s.$name($($arg),*).await)
                }
            )*
        }
    };
}

impl Store {
    /// Opens (creating a SQLite file if missing) the database `cfg` names and applies
    /// migrations.
    pub async fn open(cfg: &DatabaseConfig) -> Result<Store> {
        let store = Store::open_unmigrated(cfg).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens an existing database and applies migrations; a missing SQLite file is an
    /// error, never created (the operator commands that only read or change rows).
    pub async fn open_existing(cfg: &DatabaseConfig) -> Result<Store> {
        Ok(match cfg.url() {
            Some(url) => Store::Postgres(PgStore::open(url).await?),
            None => Store::Sqlite(SqliteStore::open_existing(&cfg.path).await?),
        })
    }

    /// Opens without touching the schema (the operator commands that only read).
    pub async fn open_unmigrated(cfg: &DatabaseConfig) -> Result<Store> {
        Ok(match cfg.url() {
            Some(url) => Store::Postgres(PgStore::open_unmigrated(url).await?),
            None => Store::Sqlite(SqliteStore::open_unmigrated(&cfg.path).await?),
        })
    }

    /// A SQLite file's store (tests, `demo`).
    pub async fn open_sqlite(path: &std::path::Path) -> Result<Store> {
        Ok(Store::Sqlite(SqliteStore::open(path).await?))
    }

    /// Where the queue lives, for logs: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        each!(self, s => s.describe())
    }

    /// Wakes `wake` whenever another process may have queued a row (SQLite: a watch on the
    /// file; PostgreSQL: LISTEN). Dropping the guard stops it. Polling at
    /// `poll.queue_interval` stays the fallback either way.
    pub fn watch(&self, wake: std::sync::Arc<tokio::sync::Notify>) -> Watch {
        match self {
            Store::Sqlite(s) => Watch::File(crate::wakeup::watch(s.path(), wake)),
            Store::Postgres(s) => Watch::Task(s.listen(wake)),
        }
    }

    /// The rows a `ListFilter` selects, as a stream (`export`): memory stays bounded.
    pub fn export(&self, f: &ListFilter) -> BoxStream<'_, Result<ExportRow>> {
        each!(self, s => s.export(f))
    }
}

verbs! {
    /// Creates or upgrades the schema.
    fn migrate(&self) -> Result<()>;
    /// Closes every connection.
    fn close(&self) -> ();

    // The row lifecycle (`queue`).
    /// Claims up to `n` due pending rows of `kind`, oldest due first; no row is claimed
    /// twice, by this daemon or another. `slots`: the most jobs of `kind` the account may
    /// have at once, as this daemon knows it; where several daemons share the account
    /// (PostgreSQL) the claim leaves the rows already submitting or running, anyone's,
    /// inside it. (SQLite: one daemon, whose own count already is.)
    fn claim_due(&self, kind: JobKind, n: u32, now: SystemTime, slots: u32) -> Result<Vec<Claimed>>;
    /// As `claim_due`, and in the same call takes one request per row from the shared
    /// budget of scope `kind` (see `take_budget`): only the rows it grants are claimed.
    /// The grant says until when the budget has no more, when it had fewer than the rows
    /// due; `full`, that the account's slots are all taken. (SQLite: granted in full, as
    /// `take_budget`, and never full: its scheduler's own count is the account's.)
    fn claim_budgeted(&self, kind: JobKind, n: u32, now: SystemTime, slots: u32,
        guess: &BudgetGuess)
        -> Result<Claim>;
    /// When the next pending row of `kind` is due, if any.
    fn next_due(&self, kind: JobKind) -> Result<Option<SystemTime>>;
    /// Back to `pending` (a snooze, or a counted failure that may fail the row), due `after`
    /// this long from now by the database's clock (PostgreSQL's `now()`: hosts' clocks need
    /// not agree), or, `None`, at its old due time (it keeps its place in the queue).
    fn reschedule(&self, id: i64, after: Option<Duration>, count: bool, max_attempts: u32,
        last_error: &str, record: Option<&AttemptRecord>, keep: u32) -> Result<Fate>;
    /// `failed`, with the reason (and the final job data, if any).
    fn fail(&self, id: i64, reason: &str, result: Option<&str>, record: Option<&AttemptRecord>,
        keep: u32) -> Result<Written>;
    /// The running rows this daemon polls.
    fn running(&self) -> Result<Vec<Running>>;
    /// Start-up and shutdown: this daemon's `submitting` rows back to `pending`, each with
    /// an `ambiguous_submit` record.
    fn recover_submitting(&self, keep: u32, endpoint: fn(JobKind) -> &'static str) -> Result<Vec<i64>>;
    /// One `submitting` row whose submit's answer was lost, back to `pending`.
    fn release_ambiguous(&self, id: i64, endpoint: &str, why: &str, keep: u32) -> Result<Written>;
    /// Claimed (`submitting`) rows whose submit never started back to `pending`, untouched
    /// otherwise.
    fn release(&self, ids: &[i64]) -> Result<()>;
    /// The group commit: accepted submits started, finished jobs recorded, one transaction.
    fn record_progress(&self, p: &Progress) -> Result<Vec<i64>>;

    // The failure log (`attempts`).
    fn record_attempt(&self, import_id: i64, r: &AttemptRecord, keep: u32) -> Result<Written>;
    fn attempts(&self, import_id: i64) -> Result<Vec<StoredAttempt>>;

    // Limits (`limits`).
    fn pauses(&self) -> Result<Vec<StoredPause>>;
    fn set_pause(&self, p: &StoredPause) -> Result<()>;
    fn clear_pause(&self, scope: Scope) -> Result<()>;
    fn clear_pauses(&self) -> Result<u64>;
    fn buckets(&self) -> Result<Vec<StoredBucket>>;
    fn save_buckets(&self, buckets: &[StoredBucket]) -> Result<()>;

    // Metadata rows and their cache (`metadata`).
    fn cached_metadata(&self, url: &str, fresh_since: SystemTime) -> Result<Option<CachedMetadata>>;
    fn metadata_running(&self, url: &str) -> Result<bool>;
    fn complete_metadata(&self, id: i64, job_id: &str, title: Option<&str>,
        duration: Option<f64>, formats: &str, data: &str) -> Result<Written>;
    /// A claimed metadata row completes from the cache: `Gone` when it is no longer this
    /// daemon's `submitting` row (deleted, reset, or taken by another daemon).
    fn complete_from_cache(&self, id: i64, cached: &CachedMetadata) -> Result<Written>;
    fn ensure_metadata_row(&self, import_id: i64, url: &str) -> Result<MetadataRow>;

    // Daemons (`daemons`).
    /// `run`: this store now speaks for `info`; its heartbeats refresh that row. `lease`:
    /// how long it may stay silent before others take its claims (PostgreSQL).
    fn register_daemon(&self, info: DaemonInfo, lease: std::time::Duration) -> Result<()>;
    fn daemon_stopped(&self) -> Result<()>;
    fn daemons(&self) -> Result<Vec<StoredDaemon>>;

    // The cluster (`cluster`): leases, adoption, shared budgets.
    /// Renews this daemon's lease (and says how many jobs it holds), or finds it lost.
    fn heartbeat(&self, in_flight: u32) -> Result<Lease>;
    /// Takes over the rows of daemons whose lease lapsed: their running jobs to poll,
    /// their submitting rows back to pending with an ambiguous-submit record.
    fn adopt(&self, keep: u32, endpoint: fn(JobKind) -> &'static str) -> Result<Adopted>;
    /// An accepted job for a row this daemon no longer holds (its lease lapsed while the
    /// submit was in flight): the row takes the job and becomes ours, `running`, if it
    /// still waits for one (back in `pending` with no job, or held by a dead daemon).
    fn attach_job(&self, id: i64, job_id: &str) -> Result<bool>;
    /// Takes up to `n` requests from the shared budget `scope` before they are sent.
    fn take_budget(&self, scope: &str, n: u32, guess: &BudgetGuess) -> Result<Grant>;
    /// Corrects the shared budget `scope` from what an answer said.
    fn observe_budget(&self, scope: &str, seen: &BudgetSeen) -> Result<()>;

    // Operator verbs (`ops`, `audit`, `dashboard`).
    fn enqueue(&self, rows: &[EnqueueRow]) -> Result<Vec<i64>>;
    fn enqueue_chunk(&self, rows: &[EnqueueRow]) -> Result<ChunkOutcome>;
    fn ids_by_external_id(&self, external_ids: &[String]) -> Result<Vec<i64>>;
    fn select_ids(&self, ids: Option<&[i64]>, since: Option<SystemTime>, prefix: Option<&str>,
        unfinished: bool) -> Result<Vec<i64>>;
    fn progress_of(&self, ids: &[i64]) -> Result<RowsProgress>;
    fn unsuccessful_among(&self, ids: &[i64], limit: u32) -> Result<Vec<Row>>;
    fn row(&self, id: i64) -> Result<Option<Row>>;
    fn list(&self, f: &ListFilter) -> Result<Vec<Row>>;
    fn status_counts(&self) -> Result<StatusCounts>;
    fn recount(&self) -> Result<()>;
    fn queue_shape(&self) -> Result<QueueShape>;
    fn retry(&self, ids: &[i64], all_failed: bool, since: Option<SystemTime>) -> Result<Vec<i64>>;
    fn cancel(&self, ids: &[i64]) -> Result<Vec<i64>>;
    fn purge(&self, before: SystemTime, completed_only: bool) -> Result<u64>;
    fn purge_audit(&self, before: SystemTime) -> Result<u64>;
    fn purge_metadata_cache(&self, before: SystemTime) -> Result<u64>;
    fn audit(&self, action: &str, target: &str, source: &str, ok: bool, detail: &str) -> Result<()>;
    fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>>;
    fn page(&self, f: &PageFilter) -> Result<Vec<Row>>;
    fn failure_groups(&self, limit: u32) -> Result<Vec<FailureGroup>>;
    fn finished_per_minute(&self, since: SystemTime) -> Result<Vec<MinuteCount>>;
    fn failed_ids(&self, q: Option<&str>, cap: u32) -> Result<Vec<i64>>;
    fn latest_failed(&self, limit: u32) -> Result<Vec<Row>>;
}
