//! The status view: counts, budgets, pauses, daemons and the drain estimate.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Value, json};

use super::Result;
use crate::clock;
use crate::config::Config;
use crate::estimate::{self, Estimate};
use crate::limits::{Budget, BudgetView, Scope};
use crate::store::{
    LastError, QueueShape, State, Store, StoreError, StoredBucket, StoredDaemon, StoredPause,
};

/// What `status --json` and `GET /api/v1/status` answer. The skipped fields serve the text
/// rendering.
#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    pub counts: BTreeMap<State, i64>,
    pub in_flight: i64,
    /// The most severe pause (a 401 stops everything), if any.
    pub paused: Option<Value>,
    pub pauses: Vec<StoredPause>,
    pub buckets: BTreeMap<&'static str, BudgetView>,
    #[serde(serialize_with = "crate::store::state::iso_opt")]
    pub oldest_pending: Option<SystemTime>,
    pub oldest_pending_age_secs: Option<u64>,
    pub last_error: Option<LastError>,
    pub credits_used: i64,
    /// The live daemons.
    pub daemons: Vec<Value>,
    pub estimate: Estimate,
    /// Every daemon ever seen, the most recent first (for the text's "daemon:" line).
    #[serde(skip)]
    pub all_daemons: Vec<StoredDaemon>,
    #[serde(skip)]
    pub now: SystemTime,
}

impl StatusView {
    /// The JSON of `status --json` (keys sorted, as before the service layer existed).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Each bucket as the daemon last saved it (the server's window once known, else the
/// config's), rolled forward to `now`.
pub fn budget_views(
    stored: &[StoredBucket],
    cfg: &Config,
    now: SystemTime,
) -> BTreeMap<&'static str, BudgetView> {
    let mut buckets = BTreeMap::new();
    for (name, limit) in [
        ("import", &cfg.limits.import),
        ("status", &cfg.limits.status),
        ("metadata", &cfg.limits.metadata),
    ] {
        let mut b = Budget::new(name, limit, now);
        b.restore(stored, now);
        buckets.insert(name, b.view(now));
    }
    buckets
}

/// The drain estimate from what the database holds: the queue's shape, the saved budgets,
/// the configured concurrency and any pause (see `crate::estimate`).
pub async fn drain_estimate(
    store: &Store,
    cfg: &Config,
    now: SystemTime,
) -> std::result::Result<Estimate, StoreError> {
    let shape = store.queue_shape().await?;
    let stored = store.buckets().await?;
    let pauses = store.pauses().await?;
    let views = budget_views(&stored, cfg, now);
    Ok(estimate_from(&shape, &views, &pauses, cfg, now))
}

fn estimate_from(
    shape: &QueueShape,
    views: &BTreeMap<&'static str, BudgetView>,
    pauses: &[StoredPause],
    cfg: &Config,
    now: SystemTime,
) -> Estimate {
    let lanes = estimate::inputs(shape, views, cfg);
    // A pause of the imports or of everything stops the queue; a metadata-only pause
    // stops only that lane, which the estimate cannot time either.
    let paused = pauses.first().map(|p| p.reason.as_str());
    estimate::estimate(&lanes, paused, now)
}

pub async fn status(store: &Store, cfg: &Config) -> Result<StatusView> {
    let counts = store.status_counts().await?;
    let pauses = store.pauses().await?;
    let stored = store.buckets().await?;
    let all_daemons = store.daemons().await?;
    let shape = store.queue_shape().await?;
    let now = SystemTime::now();
    let buckets = budget_views(&stored, cfg, now);
    let estimate = estimate_from(&shape, &buckets, &pauses, cfg, now);
    let paused = pauses
        .iter()
        .find(|p| p.scope == Scope::All)
        .or_else(|| pauses.first())
        .map(|p| {
            json!({"reason": p.reason, "scope": p.scope, "http_status": p.http_status,
                   "since": clock::iso(p.since), "next_probe": clock::iso(p.next_probe)})
        });
    let in_flight = counts.counts.get(&State::Running).copied().unwrap_or(0)
        + counts.counts.get(&State::Submitting).copied().unwrap_or(0);
    let oldest_pending_age_secs = counts
        .oldest_pending
        .and_then(|t| now.duration_since(t).ok())
        .map(|d| d.as_secs());
    Ok(StatusView {
        daemons: live_daemons(&all_daemons, now, in_flight),
        counts: counts.counts,
        in_flight,
        paused,
        pauses,
        buckets,
        oldest_pending: counts.oldest_pending,
        oldest_pending_age_secs,
        last_error: counts.last_error,
        credits_used: counts.credits_used,
        estimate,
        all_daemons,
        now,
    })
}

/// The daemons whose heartbeat is fresh (the names of the PostgreSQL contract). PostgreSQL
/// counts each daemon's jobs; on SQLite at most one daemon runs, so every row in flight is
/// its own.
fn live_daemons(all: &[StoredDaemon], now: SystemTime, in_flight: i64) -> Vec<Value> {
    all.iter()
        .filter(|d| d.is_live(now))
        .map(|d| {
            json!({"id": d.id, "host": d.host, "pid": d.pid, "version": d.version,
                   "started_at": clock::iso(d.started_at),
                   "heartbeat_at": clock::iso(d.heartbeat_at),
                   "in_flight": d.in_flight.unwrap_or(in_flight)})
        })
        .collect()
}
