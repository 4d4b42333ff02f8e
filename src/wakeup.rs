//! Wakes the scheduler when the database file changes, so that a row another process
//! inserts while the daemon idles is claimed within milliseconds instead of at the next
//! `poll.queue_interval` tick. The tick stays as the fallback (a file system without
//! inotify, a watch that could not be set up), so a missed event only costs latency.
//!
//! A commit in WAL mode writes the `-wal` file (a checkpoint writes the main file); both
//! are watched through their directory, because the `-wal` file comes and goes. Our own
//! writes wake the scheduler too: harmless, since a wake-up only makes it look for due rows
//! when it has a free slot, which is a single indexed read.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Keeps the watch alive; dropping it stops the wake-ups.
pub struct DbWatcher {
    _watcher: RecommendedWatcher,
}

/// Watches `db` (and its `-wal` file) and calls `wake.notify_one()` on every change.
/// `None`, logged, when the platform or the file system cannot watch: the queue tick
/// then does all the work.
pub fn watch(db: &Path, wake: Arc<Notify>) -> Option<DbWatcher> {
    match try_watch(db, wake) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::info!(error = %e, "not watching the database file; new rows are found at each queue tick");
            None
        }
    }
}

fn try_watch(db: &Path, wake: Arc<Notify>) -> notify::Result<DbWatcher> {
    let db = std::fs::canonicalize(db)?;
    let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
        return Err(notify::Error::generic("the database path has no file name"));
    };
    let name = name.to_owned();
    let mut wal: OsString = name.clone();
    wal.push("-wal");
    let handler = move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|event| is_a_write_to(&event, &name, &wal)) {
            // Coalesces: many events before the scheduler looks make one wake-up.
            wake.notify_one();
        }
    };
    let mut watcher = notify::recommended_watcher(handler)?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(DbWatcher { _watcher: watcher })
}

/// Whether `event` is a write to (or the creation of) the file `name` or `wal` in the
/// watched directory.
fn is_a_write_to(event: &notify::Event, name: &OsStr, wal: &OsStr) -> bool {
    matches!(event.kind, EventKind::Modify(_) | EventKind::Create(_))
        && event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|f| f == name || f == wal))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RemoveKind};
    use std::time::Duration;

    #[test]
    fn only_writes_to_the_database_or_its_wal_count() {
        let (name, wal) = (OsStr::new("q.db"), OsStr::new("q.db-wal"));
        let event =
            |kind, file: &str| notify::Event::new(kind).add_path(format!("/d/{file}").into());
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(is_a_write_to(&event(modify, "q.db-wal"), name, wal));
        assert!(is_a_write_to(&event(modify, "q.db"), name, wal));
        assert!(is_a_write_to(
            &event(EventKind::Create(CreateKind::File), "q.db-wal"),
            name,
            wal
        ));
        assert!(!is_a_write_to(&event(modify, "q.db-shm"), name, wal));
        assert!(!is_a_write_to(&event(modify, "other.txt"), name, wal));
        assert!(!is_a_write_to(
            &event(EventKind::Remove(RemoveKind::File), "q.db-wal"),
            name,
            wal
        ));
    }

    #[tokio::test]
    async fn a_write_to_the_wal_file_wakes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        std::fs::write(&db, b"").unwrap();
        let wake = Arc::new(Notify::new());
        let _w = watch(&db, wake.clone()).expect("inotify works here");
        // An unrelated file in the same directory does not wake.
        std::fs::write(dir.path().join("other.txt"), b"x").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(200), wake.notified()).await;
        assert!(quiet.is_err(), "woken by an unrelated file");
        std::fs::write(dir.path().join("q.db-wal"), b"commit").unwrap();
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .expect("woken by the -wal write");
    }
}
