//! The SQLite store: one host, one daemon per file (`DaemonLock`), no server.
//!
//! One writer connection, behind a mutex, serialises our writes, so we never fight ourselves
//! for the lock; a small reader pool serves reads. WAL lets other processes read and
//! insert while we run, and every write here is one short statement or one
//! `BEGIN IMMEDIATE` transaction, never held across an HTTP call, so their busy timeout
//! always covers our longest lock.

pub(super) mod attempts;
mod audit;
mod cluster;
mod daemons;
mod dashboard;
mod limits;
mod metadata;
mod ops;
mod progress;
pub(super) mod queue;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::sync::{Arc, OnceLock};

use sqlx::{ConnectOptions, Connection, Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

/// How long any of our statements waits for another process's lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

use crate::store::{Result, StoreError};

use crate::store::DaemonInfo;

#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Our one writer: a connection of its own rather than a pool of one, because a pool
    /// pings the connection each time it is handed back (a round trip to SQLite's worker
    /// thread per statement). `None` once closed.
    pub(super) writer: Arc<Mutex<Option<SqliteConnection>>>,
    pub(super) reader: SqlitePool,
    /// How the writer was opened, to open it again (see `begin_immediate`).
    writer_opts: SqliteConnectOptions,
    /// Set by `importlyd run` (`register_daemon`): the daemon whose heartbeat every budget
    /// save refreshes. Unset for the operator commands.
    pub(super) daemon: Arc<OnceLock<DaemonInfo>>,
    /// The file, for logs.
    path: std::path::PathBuf,
}

/// The writer, held for one statement or one transaction.
type Writer<'a> = MappedMutexGuard<'a, SqliteConnection>;

impl SqliteStore {
    /// Opens (creating if missing) the database and applies migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        let store = SqliteStore::open_unmigrated(path).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens an existing database and applies migrations; a missing file is an error, never
    /// created (the operator commands that only read or change rows).
    pub async fn open_existing(path: &Path) -> Result<SqliteStore> {
        if !path.is_file() {
            return Err(StoreError::NoDatabase(path.display().to_string()));
        }
        let store = SqliteStore::connect(path, false).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens without touching the schema (the operator commands that only read).
    pub async fn open_unmigrated(path: &Path) -> Result<SqliteStore> {
        SqliteStore::connect(path, true).await
    }

    async fn connect(path: &Path, create: bool) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            return Err(StoreError::Invalid(format!(
                "config key `database.path`: directory {} does not exist",
                dir.display()
            )));
        }
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across process crashes in WAL mode; FULL would add an
            // fsync per commit for power loss only.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            // A statement that waited out the busy timeout is reported by the caller (once per
            // interval); only slower ones are worth sqlx's own warning.
            .log_slow_statements(
                log::LevelFilter::Warn,
                BUSY_TIMEOUT + Duration::from_secs(1),
            )
            .foreign_keys(true);
        let writer = opts.connect().await?;
        // No ping before each use: a SQLite connection is a file handle that cannot drop the
        // way a network one can, and each ping is one more round trip to its worker thread.
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(opts.clone().read_only(true))
            .await?;
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(Some(writer))),
            reader,
            writer_opts: opts,
            daemon: Arc::new(OnceLock::new()),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn describe(&self) -> String {
        self.path.display().to_string()
    }

    pub async fn migrate(&self) -> Result<()> {
        let mut writer = self.writer().await?;
        let result = MIGRATOR.run(&mut *writer).await;
        if result.is_err() {
            // A migration that manages its own transaction (`-- no-transaction`, a table
            // rebuild with foreign keys off) may have failed half-way: undo it and restore
            // the connection's settings. Both are harmless when nothing was left open.
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *writer).await;
        }
        let _ = sqlx::raw_sql("PRAGMA foreign_keys = ON")
            .execute(&mut *writer)
            .await;
        result?;
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = writer.close().await;
        }
        self.reader.close().await;
    }

    /// The writer connection, waiting for whoever holds it.
    pub(super) async fn writer(&self) -> Result<Writer<'_>> {
        MutexGuard::try_map(self.writer.lock().await, Option::as_mut)
            .map_err(|_| StoreError::Invalid("the database is closed".into()))
    }

    /// Starts a write transaction on `writer` that takes the write lock at once, so it never
    /// fails half-way for want of it. Dropped uncommitted, it rolls back.
    ///
    /// A COMMIT that fails on a full disk or an I/O error may find that SQLite already
    /// rolled the transaction back; sqlx's ROLLBACK then fails too and sqlx counts the
    /// transaction as open for good, refusing every later BEGIN. The writer is then opened
    /// afresh, the only way to reset that count, so the daemon recovers once the disk does.
    pub(super) async fn begin_immediate<'a>(
        &self,
        writer: &'a mut Writer<'_>,
    ) -> Result<Transaction<'a, Sqlite>> {
        if writer.is_in_transaction() {
            // A dropped transaction's ROLLBACK may still be queued: let it run first.
            writer.ping().await?;
        }
        if writer.is_in_transaction() {
            // Debug only: each retry on a full disk comes here; the failure itself is logged
            // once per interval by the caller.
            tracing::debug!("reopening the database after a failed commit");
            let fresh = self.writer_opts.connect().await?;
            let stale = std::mem::replace(&mut **writer, fresh);
            // Closing only shuts its worker down: SQLite has no transaction open on it.
            let _ = stale.close().await;
        }
        Ok(writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real SQLite errors, classified: what waiting can cure is retried by the scheduler
    /// (`persist`), what it cannot starves the watchdog instead.
    #[tokio::test]
    async fn a_read_only_database_is_transient_and_a_bad_row_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("q.db")).await.unwrap();
        // The reader pool opens the file read-only: a write there is SQLITE_READONLY, as on
        // a file system remounted read-only.
        let read_only = sqlx::query("INSERT INTO imports (url) VALUES ('https://e.com/a')")
            .execute(&store.reader)
            .await
            .map_err(StoreError::from)
            .unwrap_err();
        assert!(read_only.is_transient(), "{read_only}");
        assert!(!read_only.is_constraint(), "{read_only}");
        let bad = sqlx::query("INSERT INTO imports (url) VALUES ('ftp://e.com/a')")
            .execute(&mut *store.writer().await.unwrap())
            .await
            .map_err(StoreError::from)
            .unwrap_err();
        assert!(bad.is_constraint(), "{bad}");
        assert!(!bad.is_transient(), "{bad}");
        store.close().await;
    }
}
