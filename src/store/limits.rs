//! Persistence for the limiter: pauses (401/402) and request budgets. Stored so that a
//! restart neither forgets a pause nor grants a second burst.

use std::time::SystemTime;

use serde::Serialize;

use super::state::{self, Iso};
use crate::limits::Scope;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct StoredPause {
    /// `all` (401: nothing may be sent) or `import` / `metadata` (402: no new jobs).
    pub scope: Scope,
    pub reason: String,
    pub http_status: Option<i64>,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "Iso")]
    pub since: SystemTime,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "Iso")]
    pub next_probe: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct StoredBucket {
    pub name: String,
    pub lim: i64,
    pub remaining: i64,
    /// Unix milliseconds.
    pub reset_at: i64,
    pub window_ms: i64,
    pub blocked_until: Option<i64>,
    #[serde(serialize_with = "state::iso")]
    #[sqlx(try_from = "Iso")]
    pub updated_at: SystemTime,
}
