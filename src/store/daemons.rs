//! One daemon per SQLite file, and the trace it leaves for `status`.
//!
//! Two daemons on one file would undo each other's work: start-up recovery and shutdown put
//! every `submitting` row back to `pending`, including the other daemon's. So `run` takes an
//! exclusive advisory lock (`flock`) on `<db>.lock` for its whole life; the kernel drops it
//! when the process ends, kill -9 included, so a dead daemon never blocks its successor.
//! The holder writes who it is into the lock file, for the refusal message.
//!
//! The `daemons` row is the heartbeat: written at start, refreshed by every budget save
//! (`save_buckets`, at least every 10 s while the daemon runs), marked stopped at a clean
//! shutdown. A row whose heartbeat is older than [`DAEMON_STALE_AFTER`] is a daemon that
//! died (or is wedged), whatever it last said.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::state::{self, Iso, OptIso};
use crate::clock;

/// A heartbeat older than this means the daemon is not running: three missed beats of the
/// 10 s write probe.
pub const DAEMON_STALE_AFTER: Duration = Duration::from_secs(30);

/// Who a daemon is: written into the lock file and the `daemons` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    #[serde(serialize_with = "state::iso", deserialize_with = "state::from_iso")]
    pub started_at: SystemTime,
}

impl DaemonInfo {
    /// This process, starting now.
    pub fn this_process() -> DaemonInfo {
        // To the millisecond, as it is stored: the row read back equals this.
        let now = clock::from_unix_ms(clock::unix_ms(SystemTime::now()));
        let host = host_name();
        let pid = std::process::id();
        DaemonInfo {
            id: format!("{host}:{pid}:{}", clock::unix_ms(now)),
            host,
            pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: now,
        }
    }
}

/// A `daemons` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct StoredDaemon {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "Iso")]
    pub started_at: SystemTime,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "Iso")]
    pub heartbeat_at: SystemTime,
    /// Set at a clean shutdown.
    #[serde(serialize_with = "state::iso_opt")]
    #[sqlx(try_from = "OptIso")]
    pub stopped_at: Option<SystemTime>,
    /// Jobs it holds (submitting or running), when the backend keeps count (PostgreSQL).
    pub in_flight: Option<i64>,
    /// Whether its lease is live by the database's clock (PostgreSQL); SQLite leaves it to
    /// [`StoredDaemon::is_live`]'s heartbeat age.
    pub live: Option<bool>,
}

impl StoredDaemon {
    /// Running: not stopped, and its heartbeat is fresh at `now`.
    pub fn is_live(&self, now: SystemTime) -> bool {
        if let Some(live) = self.live {
            return live && self.stopped_at.is_none();
        }
        self.stopped_at.is_none() && self.silent_for(now) <= DAEMON_STALE_AFTER
    }

    /// How long since its last heartbeat (zero if the heartbeat is in the future).
    pub fn silent_for(&self, now: SystemTime) -> Duration {
        now.duration_since(self.heartbeat_at)
            .unwrap_or(Duration::ZERO)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another importlyd daemon is running on this database ({holder}; lock file {path}); \
         stop it first"
    )]
    Held { path: String, holder: String },
    #[error("config key `database.path`: directory {0} does not exist")]
    NoDirectory(String),
    #[error("cannot open the lock file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl LockError {
    /// 2 for a configuration error, 1 otherwise (another daemon runs, an I/O failure).
    pub fn exit_code(&self) -> u8 {
        match self {
            LockError::NoDirectory(_) => 2,
            _ => 1,
        }
    }
}

/// The exclusive lock on `<db>.lock`, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DaemonLock {
    /// `None` on PostgreSQL, where daemons share the queue and leases keep them apart.
    _file: Option<File>,
    pub info: DaemonInfo,
}

impl DaemonLock {
    /// What `run` needs before it opens the database: on SQLite the file's lock (one
    /// daemon per file); on PostgreSQL nothing to hold, only who we are.
    pub fn for_daemon(
        db: &crate::config::DatabaseConfig,
    ) -> std::result::Result<DaemonLock, LockError> {
        match db.url() {
            Some(_) => Ok(DaemonLock {
                _file: None,
                info: DaemonInfo::this_process(),
            }),
            None => DaemonLock::acquire(&db.path),
        }
    }

    /// `<db>.lock`, beside the database. An existing database is named by its real path, so
    /// two spellings of it (a symlink, `./q.db` and `/srv/q.db`) share one lock.
    pub fn path_for(db: &Path) -> PathBuf {
        let real = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_owned());
        let mut p = real.into_os_string();
        p.push(".lock");
        PathBuf::from(p)
    }

    /// Takes the lock without waiting, or says who holds it.
    pub fn acquire(db: &Path) -> std::result::Result<DaemonLock, LockError> {
        let path = DaemonLock::path_for(db);
        let shown = path.display().to_string();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| match db.parent() {
                Some(dir) if source.kind() == std::io::ErrorKind::NotFound => {
                    LockError::NoDirectory(dir.display().to_string())
                }
                _ => LockError::Io {
                    path: shown.clone(),
                    source,
                },
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    holder: holder_of(&path),
                    path: shown,
                });
            }
            // A file system without flock (some network mounts): refusing to start there
            // would stop the daemon for good, so go on, unguarded, and say so.
            Err(TryLockError::Error(e)) => tracing::warn!(
                lock_file = %shown,
                error = %e,
                "cannot lock the database's lock file; make sure only one daemon runs on it"
            ),
        }
        let info = DaemonInfo::this_process();
        // Who we are, for a second daemon's message; a courtesy, so a failure is only logged.
        let written = serde_json::to_vec(&info)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
                file.write_all(&json)?;
                file.write_all(b"\n")
            });
        if let Err(e) = written {
            tracing::warn!(lock_file = %shown, error = %e, "cannot write the lock file");
        }
        Ok(DaemonLock {
            _file: Some(file),
            info,
        })
    }
}

/// "pid N on HOST since T", from the lock file the holder wrote.
fn holder_of(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str::<DaemonInfo>(s.trim()).ok())
        .map(|d| {
            format!(
                "pid {} on {} since {}",
                d.pid,
                d.host,
                clock::iso(d.started_at)
            )
        })
        .unwrap_or_else(|| "holder unknown".to_owned())
}

/// The kernel's host name (Linux), else `$HOSTNAME`, else "unknown".
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
