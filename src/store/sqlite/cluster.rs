//! SQLite: one daemon per file (`DaemonLock`), so there is nobody to share with: the lease
//! is the process's own, nobody's rows are left to adopt, and the daemon's in-memory
//! budgets (saved by `save_buckets`) are the whole truth.

use super::SqliteStore;
use crate::importly::JobKind;
use crate::store::{Adopted, BudgetGuess, BudgetSeen, Grant, Lease, Result};

impl SqliteStore {
    pub async fn heartbeat(&self, _in_flight: u32) -> Result<Lease> {
        Ok(Lease::Held { valid_for: None })
    }

    pub async fn adopt(
        &self,
        _keep: u32,
        _endpoint: fn(JobKind) -> &'static str,
    ) -> Result<Adopted> {
        Ok(Adopted::default())
    }

    /// Never needed: one daemon, whose lease cannot lapse, so it never loses a row.
    pub async fn attach_job(&self, _id: i64, _job_id: &str) -> Result<bool> {
        Ok(false)
    }

    pub async fn take_budget(&self, _scope: &str, n: u32, _guess: &BudgetGuess) -> Result<Grant> {
        Ok(Grant::all(n))
    }

    pub async fn observe_budget(&self, _scope: &str, _seen: &BudgetSeen) -> Result<()> {
        Ok(())
    }
}
