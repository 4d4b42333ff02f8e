//! What the scheduler tells the outside about itself, shared without locks: when its loop
//! last made progress (the systemd watchdog pings only while it does) and whether database
//! writes are failing (`/healthz` answers 503 then).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct Health {
    progress_ms: AtomicU64,
    db_failing: AtomicBool,
}

pub type SharedHealth = Arc<Health>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Health {
    pub fn new() -> SharedHealth {
        let h = Health::default();
        h.beat();
        Arc::new(h)
    }

    /// The scheduler loop went round (or is alive inside a retry of a store write).
    pub fn beat(&self) {
        self.progress_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// How long since the last beat.
    pub fn since_progress(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.progress_ms.load(Ordering::Relaxed)))
    }

    pub fn set_db_failing(&self, failing: bool) {
        self.db_failing.store(failing, Ordering::Relaxed);
    }

    pub fn db_failing(&self) -> bool {
        self.db_failing.load(Ordering::Relaxed)
    }
}
