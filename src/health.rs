//! What the scheduler tells the outside about itself, shared without locks: when its loop
//! last made progress (the systemd watchdog pings only while it does) and whether database
//! writes are failing (`/healthz` answers 503 then, and `STATUS=` says so).
//!
//! Every store write of the scheduler should report its result here ([`Health::write_failed`]
//! / [`Health::write_ok`]), whichever call site it is (claims, budgets, row updates): the
//! flag then turns on at the first failure, and the failure is logged once per
//! [`FAILURE_LOG_INTERVAL`] however many call sites retry, instead of once per retry.

use std::fmt::Display;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// While writes keep failing, how often the failure is logged again.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Health {
    progress_ms: AtomicU64,
    db_failing: AtomicBool,
    /// When a write failure was last logged (unix ms); 0 while writes succeed.
    failure_logged_ms: AtomicU64,
}

pub type SharedHealth = Arc<Health>;

/// Milliseconds on the monotonic clock (since the first call), so that a step of the wall
/// clock neither fakes a stall (the watchdog would withhold its ping) nor hides one.
fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    // +1: 0 means "never" for `failure_logged_ms`.
    u64::try_from(origin.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
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

    /// A store write failed (`what` names it, e.g. "record completion"): `/healthz` answers
    /// 503 from now on until a write succeeds. Logs at most once per
    /// [`FAILURE_LOG_INTERVAL`]; returns whether it did.
    pub fn write_failed(&self, what: &str, error: &dyn Display) -> bool {
        self.db_failing.store(true, Ordering::Relaxed);
        let now = now_ms().max(1);
        let last = self.failure_logged_ms.load(Ordering::Relaxed);
        let interval = FAILURE_LOG_INTERVAL.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < interval {
            return false;
        }
        if self
            .failure_logged_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        tracing::error!(
            error = %error,
            "{what}: database write failed; retrying (logged again every {}s while writes fail)",
            FAILURE_LOG_INTERVAL.as_secs()
        );
        true
    }

    /// A store write succeeded: clears the failing state, logging the recovery once.
    pub fn write_ok(&self) {
        if self.db_failing.swap(false, Ordering::Relaxed) {
            self.failure_logged_ms.store(0, Ordering::Relaxed);
            tracing::info!("database writes succeed again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_log_once_per_interval_and_clear_on_success() {
        let h = Health::new();
        assert!(!h.db_failing());
        assert!(h.write_failed("claim rows", &"database is locked"));
        assert!(h.db_failing());
        assert!(!h.write_failed("record completion", &"database is locked"));
        assert!(!h.write_failed("claim rows", &"database is locked"));
        h.write_ok();
        assert!(!h.db_failing());
        // A new failure after a recovery is news again.
        assert!(h.write_failed("claim rows", &"disk I/O error"));
    }
}
