//! The daemon as one member of a cluster (PostgreSQL; on SQLite every call here is granted
//! at once by the store): renewing its lease, not sending once the lease might lapse before
//! an answer could come back (fencing), joining again under a new id after it did, adopting
//! the rows of daemons that died, taking every poll from the shared status budget before it
//! goes (a submit's request is taken with its row, by `store::claim_budgeted`), and
//! telling the shared budgets what the answers' headers said.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Job, Scheduler};
use crate::importly::{Exchange, JobKind};
use crate::store::{BudgetGuess, BudgetSeen, DaemonInfo, Grant, Lease, Running};

/// Corrections of a shared budget from answers' headers go at most this often per scope,
/// unless the window or the limit changed (every answer would be one more write).
const OBSERVE_EVERY: Duration = Duration::from_millis(250);

/// A lease that cannot lapse (SQLite), as an instant.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Until when requests may go, shared with the HTTP tasks, which look at it once more right
/// before they send (see `Scheduler::may_send`).
#[derive(Clone, Debug)]
pub(super) struct Fence {
    base: Instant,
    /// Milliseconds after `base`.
    until_ms: Arc<AtomicU64>,
}

impl Fence {
    fn new(now: Instant) -> Fence {
        Fence {
            base: now,
            until_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn set(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.base).as_millis();
        self.until_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
    }

    fn until(&self) -> Instant {
        let ms = self.until_ms.load(Ordering::Acquire);
        self.base
            .checked_add(Duration::from_millis(ms))
            .unwrap_or(self.base + FOREVER)
    }

    /// Whether a request may leave now.
    pub(super) fn open(&self) -> bool {
        Instant::now() < self.until()
    }
}

/// The lease as the scheduler keeps it.
pub(super) struct Membership {
    /// Requests may go until then: the lease's end as of the last renewal (counted from
    /// when that renewal was sent), less a whole request timeout, so an answer is always
    /// back before anybody could take over what the request concerns.
    pub(super) fence: Fence,
    next_beat: Instant,
    /// "Not sending: the lease may lapse" was logged (once per episode).
    warned: bool,
    /// Per shared budget: the last correction sent (window end, limit) and when.
    observed: HashMap<&'static str, (Option<SystemTime>, Option<u64>, Instant)>,
}

impl Membership {
    pub(super) fn new(now: Instant) -> Membership {
        Membership {
            fence: Fence::new(now),
            next_beat: now,
            warned: false,
            observed: HashMap::new(),
        }
    }
}

impl Scheduler {
    /// Whether requests may go now: the lease will outlast their answers.
    pub(super) fn may_send(&mut self, now: Instant) -> bool {
        if now < self.member.fence.until() {
            self.member.warned = false;
            return true;
        }
        if !self.member.warned {
            self.member.warned = true;
            tracing::warn!(
                "not sending: this daemon's lease may lapse before an answer could come back \
                 (the database is unreachable, or the process was frozen); waiting for a renewal"
            );
        }
        false
    }

    /// When the lease wants renewing.
    pub(super) fn next_beat(&self) -> Instant {
        self.member.next_beat
    }

    /// Renews the lease when due, then adopts what dead daemons left. Also the first
    /// thing start-up recovery does (`registered`).
    pub(super) async fn beat_if_due(&mut self, now: Instant) {
        if now < self.member.next_beat {
            return;
        }
        self.member.next_beat = now + self.cfg.cluster.heartbeat();
        let sent = Instant::now();
        let in_flight = u32::try_from(
            self.jobs.len() + self.lanes.iter().map(|l| l.submitting.len()).sum::<usize>(),
        )
        .unwrap_or(u32::MAX);
        match self.store.heartbeat(in_flight).await {
            Ok(Lease::Held { valid_for }) => {
                self.renewed(sent, valid_for);
                self.adopt().await;
            }
            Ok(Lease::Lost) => self.rejoin().await,
            Err(e) => {
                self.health.write_failed("renew this daemon's lease", &e);
            }
        }
    }

    fn renewed(&mut self, sent: Instant, valid_for: Option<Duration>) {
        self.member.fence.set(match valid_for {
            Some(lease) => sent + lease.saturating_sub(self.cfg.api.request_timeout),
            None => sent + FOREVER,
        });
    }

    /// Start-up: make sure this daemon is a member (on PostgreSQL `run` registered it, but
    /// the database may have been down then), with a live lease.
    pub(super) async fn join(&mut self) -> anyhow::Result<()> {
        let sent = Instant::now();
        match self.store.heartbeat(0).await? {
            Lease::Held { valid_for } => self.renewed(sent, valid_for),
            Lease::Lost => {
                self.store
                    .register_daemon(DaemonInfo::this_process(), self.cfg.cluster.lease)
                    .await?;
                self.renewed(sent, Some(self.cfg.cluster.lease));
            }
        }
        self.member.next_beat = Instant::now() + self.cfg.cluster.heartbeat();
        Ok(())
    }

    /// Our lease lapsed: whatever we held may be another daemon's now. Forget every claim
    /// and job and join again under a new id; our old rows are adopted like any dead
    /// daemon's, by us or another. Calls still in flight are kept: their writes are fenced
    /// off, but an accepted submit's job can still be handed over (`hand_over`).
    async fn rejoin(&mut self) {
        tracing::warn!(
            jobs = self.jobs.len(),
            "this daemon's lease lapsed (frozen or cut off for longer than cluster.lease); \
             dropping its claims and joining again"
        );
        self.jobs.clear();
        self.group = Default::default();
        self.early_hints.clear();
        for lane in &mut self.lanes {
            lane.submitting.clear();
            lane.maybe_due = true;
        }
        match self.join().await {
            Ok(()) => tracing::info!("joined the cluster again"),
            Err(e) => {
                self.health
                    .write_failed("join the cluster again", &format!("{e:#}"));
            }
        }
    }

    async fn adopt(&mut self) {
        let keep = self.cfg.log.keep_attempts;
        let adopted = match self.store.adopt(keep, JobKind::submit_path).await {
            Ok(a) => a,
            Err(e) => {
                self.health.write_failed("adopt a dead daemon's rows", &e);
                return;
            }
        };
        if !adopted.released.is_empty() {
            tracing::warn!(
                rows = ?adopted.released,
                "a daemon died while submitting these rows; back to pending \
                 (a duplicate job at Importly is possible, see their tickets)"
            );
            self.look_for_due_rows();
        }
        if !adopted.running.is_empty() {
            tracing::warn!(
                jobs = adopted.running.len(),
                "adopted the running jobs of a daemon whose lease lapsed; polling them"
            );
            for r in adopted.running {
                self.resume_job(r, Instant::now());
            }
        }
    }

    /// An accepted submit for row `id` that this daemon could not start (it lost the row):
    /// if the row is still waiting for a job (handed back to pending, or still held by a
    /// dead daemon, maybe our former self), it takes this one and is polled, never posted
    /// again. False when it moved on (claimed anew, cancelled, deleted).
    pub(super) async fn hand_over(&mut self, id: i64, job: &Job) -> bool {
        match self.store.attach_job(id, &job.job_id).await {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!(id, error = %e, "could not hand an accepted job over to its row");
                false
            }
        }
    }

    /// A running row (ours after a restart, or adopted): polled from `at`, never resubmitted.
    pub(super) fn resume_job(&mut self, r: Running, at: Instant) {
        let kind = r.kind;
        self.jobs.insert(
            r.id,
            Job {
                kind,
                job_id: r.importly_job_id,
                attempts: r.attempts,
                next_poll: at,
                polling: false,
                poll_failures: 0,
                hinted: false,
                urgent: false,
                jumped: false,
            },
        );
    }

    /// The config's guess at `scope`'s budget, for the shared row's first creation.
    pub(super) fn guess(&self, scope: &str) -> BudgetGuess {
        let b = match scope {
            "import" => &self.cfg.limits.import,
            "metadata" => &self.cfg.limits.metadata,
            _ => &self.cfg.limits.status,
        };
        BudgetGuess {
            limit: u32::try_from(b.requests).unwrap_or(u32::MAX),
            reserve: u32::try_from(b.reserve).unwrap_or(u32::MAX),
            window: b.window,
        }
    }

    /// Takes `n` requests of `scope` from the shared budget. An error grants nothing (the
    /// database decides; without it, nothing goes).
    pub(super) async fn take_shared(&mut self, scope: &'static str, n: u32) -> Grant {
        if n == 0 {
            return Grant::all(0);
        }
        let guess = self.guess(scope);
        // Success is not reported to `health`: on SQLite nothing was written, so it would
        // hide a database that refuses the writes that matter.
        match self.store.take_budget(scope, n, &guess).await {
            Ok(g) => g,
            Err(e) => {
                self.health.write_failed("take from the shared budget", &e);
                Grant {
                    granted: 0,
                    until: Some(SystemTime::now() + Duration::from_secs(1)),
                }
            }
        }
    }

    /// Tells the shared budget what an answer said: at once when the window or the limit
    /// changed or the server blocks us, otherwise at most every [`OBSERVE_EVERY`].
    pub(super) async fn observe_shared(
        &mut self,
        scope: &'static str,
        ex: &Exchange,
        blocked_until: Option<SystemTime>,
    ) {
        let h = &ex.headers;
        let reset = h.reset_at(ex.finished_at);
        let complete = h.limit.is_some() && h.remaining.is_some() && reset.is_some();
        if !complete && blocked_until.is_none() {
            return;
        }
        let now = Instant::now();
        let due = match self.member.observed.get(scope) {
            Some((r, l, at)) => *r != reset || *l != h.limit || now >= *at + OBSERVE_EVERY,
            None => true,
        };
        if !due && blocked_until.is_none() && h.remaining != Some(0) {
            return;
        }
        self.member.observed.insert(scope, (reset, h.limit, now));
        let seen = BudgetSeen {
            limit: h.limit,
            remaining: h.remaining,
            reset,
            window: h.window_len(),
            blocked_until,
        };
        if let Err(e) = self.store.observe_budget(scope, &seen).await {
            tracing::debug!(error = %e, scope, "could not correct the shared budget");
        }
    }
}
