//! What several daemons on one database share beyond the queue: their leases and the
//! account's rate budgets. On SQLite one daemon owns the file (`DaemonLock`), so its lease
//! never lapses and its own in-memory budgets are the truth: every verb here grants
//! everything there. On PostgreSQL the database decides, on its own clock.

use std::time::{Duration, SystemTime};

use super::Running;

/// The config's first guess at a budget, used by the first daemon to need the shared row.
#[derive(Clone, Copy, Debug)]
pub struct BudgetGuess {
    pub limit: u32,
    /// Requests per window left unused for other programs on the key (this daemon's
    /// `limits.<scope>.reserve`).
    pub reserve: u32,
    pub window: Duration,
}

/// How many of the requests asked for may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub granted: u32,
    /// When fewer were granted than asked: when more may be (the window's end, or a
    /// rate-limit 429's block).
    pub until: Option<SystemTime>,
}

impl Grant {
    pub fn all(n: u32) -> Grant {
        Grant {
            granted: n,
            until: None,
        }
    }
}

/// What an answer's `X-RateLimit-*` headers said, or a rate-limit 429's block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetSeen {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// When the server's window ends.
    pub reset: Option<SystemTime>,
    pub window: Option<Duration>,
    /// A 429 said: nothing before then.
    pub blocked_until: Option<SystemTime>,
}

/// A daemon's lease after a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Ours for `valid_for` from the moment the heartbeat was sent (`None`: for as long as
    /// the process lives, SQLite's file lock).
    Held { valid_for: Option<Duration> },
    /// It lapsed (we were frozen or cut off longer than the lease): others may have taken
    /// our rows and slots. Stop sending, forget every claim, join again.
    Lost,
}

/// What a live daemon took over from dead ones.
#[derive(Clone, Debug, Default)]
pub struct Adopted {
    /// Their `running` rows, now ours to poll (never to submit again).
    pub running: Vec<Running>,
    /// Their `submitting` rows, back to `pending` with an `ambiguous_submit` record.
    pub released: Vec<i64>,
}
