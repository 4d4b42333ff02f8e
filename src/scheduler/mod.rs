//! The scheduler wires the parts together: it claims due rows from the store, asks the
//! limiter whether a request may go, hands the HTTP call to the client in a task, and
//! feeds the classified outcome back to the store and the limiter.
//!
//! One task owns all of this state, so there are no locks: HTTP calls run in a
//! [`JoinSet`] and come back as [`Done`] messages. It holds no SQL and no HTTP details.
//!
//! Time: everything the scheduler schedules (polls, ticks, rechecks, saves, sleeps) runs on
//! tokio's monotonic [`Instant`], so a step of the wall clock neither stops polls nor makes
//! everything due at once. The wall clock is kept for what is wall time by nature: the
//! limits' aligned windows (Importly's resets are unix times), pauses as stored, and stored
//! timestamps. Its deadlines are turned into instants where they meet ([`Now::at`]).

mod cluster;
mod outcome;
mod preflight;
mod record;
mod write;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::{Health, SharedHealth};
use crate::importly::{Client, Exchange, JobKind};
use crate::limits::{Budget, Gate, Pauses, Scope, Slots};
use crate::store::{Claim, Claimed, Progress, Store};
use crate::webhook::Hooks;

pub use record::attempt_record;
use write::{Applied, Write};

/// How long in-flight HTTP calls may run on after SIGTERM before they are abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// An idle daemon writes nothing, so it would not notice its database becoming unwritable
/// (full disk, read-only file system, a lock held elsewhere) until a row arrived. It saves
/// its budgets at least this often, a real write whose result `/healthz` reports.
const WRITE_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Most rows claimed in one statement.
const CLAIM_BATCH: u64 = 64;

/// The longest a job whose status polls keep failing waits between polls (the wait doubles
/// from `poll.status_interval` with each failure in a row).
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(60);

/// A wall-clock jump larger than this between two loop turns (beyond what the monotonic
/// clock saw) is a clock step: the budgets' pacing, kept in wall time, is re-based.
const CLOCK_STEP: Duration = Duration::from_secs(2);

/// The time of one loop turn on both clocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    mono: Instant,
    wall: SystemTime,
}

impl Now {
    fn read() -> Now {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The instant of wall-clock time `t` (from the limits): as far from now as `t` is,
    /// now if it has passed, at most an hour on (the loop wakes at least that often anyway).
    fn at(&self, t: SystemTime) -> Instant {
        let ahead = t.duration_since(self.wall).unwrap_or(Duration::ZERO);
        self.mono + ahead.min(Duration::from_secs(3600))
    }
}

/// The wait before polling a job again after `failures` failed polls in a row:
/// `interval * 2^failures`, at most [`MAX_POLL_BACKOFF`] (or `interval` if that is longer).
pub(crate) fn poll_backoff(interval: Duration, failures: u32) -> Duration {
    let doubled = interval.saturating_mul(1u32 << failures.min(16));
    doubled.min(MAX_POLL_BACKOFF.max(interval))
}

/// Messages from the outside (signals) to the running scheduler.
#[derive(Debug)]
pub enum Control {
    /// SIGHUP: a new config and, if one could be read, a new key. Pauses probe at once.
    /// `applied` is told once they are in force (systemd's READY=1 waits for it).
    Reload {
        config: Box<Config>,
        key: Option<SecretString>,
        applied: oneshot::Sender<()>,
    },
}

/// A job in progress at Importly that we poll.
#[derive(Clone, Debug)]
struct Job {
    kind: JobKind,
    job_id: String,
    attempts: i64,
    next_poll: Instant,
    polling: bool,
    /// Failed polls in a row: each doubles the wait before the next (see [`poll_backoff`]).
    poll_failures: u32,
    /// A webhook delivery came while a poll was in flight: that poll may have left before
    /// the job ended, so an answer "still running" is followed by another poll at once.
    hinted: bool,
    /// A delivery asks for a poll now: it goes before the others and out of the status
    /// budget's pacing turn (never past the window, see `Budget::may_jump`).
    urgent: bool,
    /// The job had its one out-of-turn poll: a stream of deliveries (Importly retrying, or
    /// someone replaying a live token) only makes its polls due, paced like any other.
    jumped: bool,
}

/// What a running HTTP task holds, by its tokio task id: if the task dies (a panic), this
/// is what gets released, so no slot leaks and no row is stranded in `submitting`.
#[derive(Debug)]
enum Held {
    Submit { li: usize, row: Claimed },
    Poll { id: i64 },
}

/// What an HTTP task hands back.
enum Done {
    Submit {
        row: Claimed,
        kind: JobKind,
        ex: Exchange,
        probe: Option<Scope>,
        /// This submit is the probe for one more concurrency slot (see `Slots::sent`).
        slot_probe: bool,
    },
    Poll {
        id: i64,
        ex: Exchange,
        probe: Option<Scope>,
    },
    /// The lease could lapse before an answer came back (the process was frozen between
    /// the claim and the send): nothing was sent; the row goes back, if still ours.
    Unsent { li: usize, row: Claimed },
    /// Likewise for a poll: nothing was sent; the job is polled once the lease is renewed.
    PollUnsent { id: i64 },
}

/// The writes of one group of answers, stored together by `record_group`.
#[derive(Default)]
struct Group {
    progress: Progress,
    /// Accepted jobs (row id, URL for the log), polled once their state is stored.
    jobs: Vec<(i64, String, Job)>,
}

/// Per-kind state: its budget, its concurrency and whether its queue may have due rows.
struct Lane {
    kind: JobKind,
    budget: Budget,
    slots: Slots,
    /// Rows we have claimed and not yet heard back about.
    submitting: HashSet<i64>,
    /// False once a claim came back short; set again on each queue tick and on events.
    maybe_due: bool,
    /// The last claim got every row it asked for, so rows are surely left: claim without
    /// reading first.
    more_due: bool,
    /// The last claim found the account's slots all taken (several daemons share them).
    full: Option<Full>,
}

impl Lane {
    /// Whether the lane waits for room in a full account before it claims again (see
    /// [`Full`]); the next queue tick ends the wait.
    fn waits_for_room(&self, held: u32) -> bool {
        self.full
            .is_some_and(|f| held.saturating_add(f.room) > f.held)
    }
}

/// The account's slots were all taken when this daemon held `held` jobs of the kind: it
/// claims again once `room` of them ended (or at the next queue tick).
#[derive(Clone, Copy, Debug)]
struct Full {
    held: u32,
    room: u32,
}

/// The part of the account's slots a daemon waits to see freed by its own jobs before it
/// claims again into a full account: 1/32 of them (at least one).
const FULL_ROOM_PART: u32 = 32;

/// When to look again for due rows after the database file changed (see `rechecks`).
const RECHECKS: [Duration; 2] = [Duration::from_millis(3), Duration::from_millis(20)];

pub struct Scheduler {
    cfg: Arc<Config>,
    store: Store,
    client: Client,
    lanes: [Lane; 2],
    status: Budget,
    pauses: Pauses,
    jobs: HashMap<i64, Job>,
    tasks: JoinSet<Done>,
    /// What each task in `tasks` holds, by task id.
    held_by: HashMap<tokio::task::Id, Held>,
    /// Answers handled but not yet stored (group commit, see `record_group`).
    group: Group,
    shutdown: CancellationToken,
    buckets_dirty: bool,
    buckets_saved_at: Instant,
    health: SharedHealth,
    /// Told once start-up recovery is done (systemd's READY=1 waits for it).
    ready: Option<oneshot::Sender<()>>,
    /// Notified when the database file changes (see `wakeup`): new rows may be due.
    db_changed: Arc<Notify>,
    /// Second looks after a change: inotify reports the WAL write before the other
    /// process's commit is visible to readers, so the first look can come too early.
    rechecks: Vec<Instant>,
    /// Webhook deliveries that came for rows whose submit's answer was not handled yet (the
    /// callback can overtake it): their job's first poll goes at once when it is.
    early_hints: HashSet<i64>,
    /// The previous loop turn, to notice a step of the wall clock.
    last_turn: Now,
    /// Webhook tokens, when `webhook.public_url` is set (see `webhook.rs`).
    hooks: Option<Hooks>,
    /// Row ids whose webhook was delivered: poll that job now.
    deliveries: Option<mpsc::Receiver<i64>>,
    /// This daemon's lease and shared-budget bookkeeping (see `cluster.rs`).
    member: cluster::Membership,
}

/// The next delivery's row id; never, without webhooks.
async fn next_delivery(rx: &mut Option<mpsc::Receiver<i64>>) -> Option<i64> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A server- or user-given text as a log field: at most [`crate::importly::MAX_LOG_FIELD`] bytes, so no
/// row's URL or job's title can make a log line huge.
fn log_field(text: &str) -> String {
    crate::importly::bounded(text, crate::importly::MAX_LOG_FIELD)
}

fn lane_index(kind: JobKind) -> usize {
    match kind {
        JobKind::Import => 0,
        JobKind::Metadata => 1,
    }
}

fn scope_of(kind: JobKind) -> Scope {
    match kind {
        JobKind::Import => Scope::Import,
        JobKind::Metadata => Scope::Metadata,
    }
}

impl Scheduler {
    pub fn new(cfg: Config, store: Store, client: Client, shutdown: CancellationToken) -> Self {
        let turn = Now::read();
        let now = turn.wall;
        let probe_delay = cfg.limits.probe_delay;
        let lane = |kind: JobKind, limit: &crate::config::BucketLimit, name| Lane {
            kind,
            budget: Budget::new(name, limit, now),
            slots: Slots::new(limit.concurrent, probe_delay),
            submitting: HashSet::new(),
            maybe_due: true,
            more_due: false,
            full: None,
        };
        let lanes = [
            lane(JobKind::Import, &cfg.limits.import, "import"),
            lane(JobKind::Metadata, &cfg.limits.metadata, "metadata"),
        ];
        let status = Budget::new("status", &cfg.limits.status, now);
        Scheduler {
            cfg: Arc::new(cfg),
            store,
            client,
            lanes,
            status,
            pauses: Pauses::default(),
            jobs: HashMap::new(),
            tasks: JoinSet::new(),
            held_by: HashMap::new(),
            group: Group::default(),
            shutdown,
            buckets_dirty: false,
            buckets_saved_at: turn.mono,
            health: Health::new(),
            ready: None,
            db_changed: Arc::new(Notify::new()),
            rechecks: Vec::new(),
            early_hints: HashSet::new(),
            last_turn: turn,
            hooks: None,
            deliveries: None,
            member: cluster::Membership::new(turn.mono),
        }
    }

    /// Webhooks on: every submit carries a fresh token's `webhookUrl`, and a delivery (its
    /// row id on `deliveries`) makes that job's next poll due at once.
    pub fn with_webhooks(mut self, hooks: Hooks, deliveries: mpsc::Receiver<i64>) -> Self {
        self.hooks = Some(hooks);
        self.deliveries = Some(deliveries);
        self
    }

    /// What `wakeup::watch` notifies when the database changes.
    pub fn db_changed(&self) -> Arc<Notify> {
        self.db_changed.clone()
    }

    /// `ready` is sent `()` once start-up recovery has run, before the first claim.
    pub fn with_ready(mut self, ready: oneshot::Sender<()>) -> Self {
        self.ready = Some(ready);
        self
    }

    /// Shares the loop's heartbeat and database state with the watchdog and `/healthz`.
    pub fn with_health(mut self, health: SharedHealth) -> Self {
        self.health = health;
        self
    }

    /// Runs until the shutdown token is cancelled, then drains in-flight calls (bounded by
    /// [`SHUTDOWN_GRACE`]) and returns.
    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) -> anyhow::Result<()> {
        if !self.recover_until_done().await {
            return Ok(());
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        let mut next_tick = Instant::now();
        loop {
            self.health.beat();
            let now = Now::read();
            self.notice_clock_step(now);
            if now.mono >= next_tick {
                self.tick().await;
                // Read each time: SIGHUP may have changed it.
                next_tick = now.mono + self.cfg.poll.queue_interval;
            }
            if self.rechecks.iter().any(|t| *t <= now.mono) {
                self.rechecks.retain(|t| *t > now.mono);
                self.look_for_due_rows();
            }
            self.beat_if_due(now.mono).await;
            self.dispatch_polls(now).await;
            for i in 0..self.lanes.len() {
                self.dispatch_submits(i, now).await;
            }
            self.save_buckets_if_due(now).await;
            let mut wake = self.next_wake(now).min(next_tick);
            if let Some(t) = self.rechecks.iter().min() {
                wake = wake.min(*t);
            }
            let sleep = tokio::time::sleep_until(wake.max(now.mono + Duration::from_millis(1)));
            let db_changed = self.db_changed.clone();
            tokio::select! {
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.joined(joined).await;
                    // Answers that came in meanwhile join this group: their writes share
                    // one transaction. Bounded: only tasks already spawned can finish here.
                    while let Some(joined) = self.tasks.try_join_next_with_id() {
                        self.joined(joined).await;
                    }
                    self.record_group().await;
                }
                Some(c) = control.recv() => {
                    self.apply(c).await;
                    // A new `poll.queue_interval` counts from now.
                    next_tick = Instant::now();
                }
                Some(id) = next_delivery(&mut self.deliveries) => {
                    self.webhook_delivered(id);
                    while let Some(id) = self.deliveries.as_mut().and_then(|rx| rx.try_recv().ok()) {
                        self.webhook_delivered(id);
                    }
                }
                _ = db_changed.notified() => {
                    self.look_for_due_rows();
                    let at = Instant::now();
                    self.rechecks = RECHECKS.iter().map(|d| at + *d).collect();
                }
                _ = sleep => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        self.drain().await;
        Ok(())
    }

    /// Spawns an HTTP task and records what it holds, to release it if the task dies.
    fn spawn_tracked<F>(&mut self, held: Held, task: F)
    where
        F: std::future::Future<Output = Done> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.held_by.insert(handle.id(), held);
    }

    async fn joined(&mut self, joined: Result<(tokio::task::Id, Done), JoinError>) {
        match joined {
            Ok((task, done)) => {
                self.held_by.remove(&task);
                self.handle(done).await;
            }
            Err(e) => self.task_died(e).await,
        }
    }

    /// An HTTP task ended without an answer (it panicked): release what it held. A submit's
    /// slot is freed and its row goes back to `pending` with an ambiguous-submit record (the
    /// POST may have reached Importly), as start-up recovery would do; a poll's job is
    /// polled again later.
    async fn task_died(&mut self, e: JoinError) {
        let held = self.held_by.remove(&e.id());
        // The row's id only: its URL and options are the user's and unbounded.
        let row = match &held {
            Some(Held::Submit { row, .. }) => Some(row.id),
            Some(Held::Poll { id }) => Some(*id),
            None => None,
        };
        let error = log_field(&e.to_string());
        tracing::error!(error = %error, ?row, "HTTP task failed; releasing what it held");
        match held {
            Some(Held::Submit { li, row }) => {
                self.forget_submit(li, row.id);
                let id = row.id;
                let written = self
                    .persist(Write::ReleaseDeadSubmit {
                        id,
                        endpoint: row.kind.submit_path(),
                        keep: self.cfg.log.keep_attempts,
                    })
                    .await;
                if written.is_some_and(|w| w.gone()) {
                    self.row_gone(id, "the release of its dead submit");
                }
                self.look_for_due_rows();
            }
            Some(Held::Poll { id }) => {
                let interval = self.cfg.poll.status_interval;
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.polling = false;
                    job.poll_failures = job.poll_failures.saturating_add(1);
                    job.next_poll = Instant::now() + poll_backoff(interval, job.poll_failures);
                }
            }
            None => {}
        }
    }

    /// A submit of row `id` that got no answer (its task died, or it never left): the lane
    /// no longer waits for it, and whatever webhook it carried is spent.
    fn forget_submit(&mut self, li: usize, id: i64) {
        self.lanes[li].submitting.remove(&id);
        self.early_hints.remove(&id);
        self.spend_webhook(id);
    }

    /// A step of the wall clock (NTP, an operator) leaves the budgets' pacing, kept in wall
    /// time, as far off as the step: a step back would hold requests for its length. Their
    /// state is re-based through a snapshot, which keeps what was spent and any block.
    fn notice_clock_step(&mut self, now: Now) {
        let last = std::mem::replace(&mut self.last_turn, now);
        let mono = now.mono.saturating_duration_since(last.mono);
        let (step, back) = match now.wall.duration_since(last.wall) {
            Ok(wall) => (wall.abs_diff(mono), wall < mono),
            Err(e) => (e.duration() + mono, true),
        };
        if step < CLOCK_STEP {
            return;
        }
        tracing::warn!(
            step = ?step,
            direction = if back { "back" } else { "forward" },
            "the wall clock stepped; re-basing the rate budgets"
        );
        let rebased = |b: &Budget, limit: &crate::config::BucketLimit| {
            let mut fresh = Budget::new(b.name, limit, now.wall);
            fresh.restore(&b.snapshot(), now.wall);
            fresh
        };
        for lane in &mut self.lanes {
            let limit = match lane.kind {
                JobKind::Import => &self.cfg.limits.import,
                JobKind::Metadata => &self.cfg.limits.metadata,
            };
            lane.budget = rebased(&lane.budget, limit);
        }
        self.status = rebased(&self.status, &self.cfg.limits.status);
        self.buckets_dirty = true;
    }

    /// Runs start-up recovery until it succeeds: a database that is locked, full or
    /// read-only at start is waited for (logged once per interval), not a reason to exit and
    /// be restarted in a loop. False when shutdown came first.
    async fn recover_until_done(&mut self) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.recover().await {
                Ok(()) => {
                    self.health.write_ok();
                    return true;
                }
                Err(e) => {
                    self.health.beat();
                    self.health
                        .write_failed("start-up recovery", &format!("{e:#}"));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => return false,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Start-up: resolve rows a crash left in `submitting`, resume polling `running` ones,
    /// and restore pauses and budgets.
    async fn recover(&mut self) -> anyhow::Result<()> {
        self.join().await?;
        let keep = self.cfg.log.keep_attempts;
        let recovered = self
            .store
            .recover_submitting(keep, JobKind::submit_path)
            .await?;
        if !recovered.is_empty() {
            tracing::warn!(
                rows = ?recovered,
                "rows were being submitted when the daemon stopped; back to pending \
                 (a duplicate job at Importly is possible, see their tickets)"
            );
        }
        let now = SystemTime::now();
        for r in self.store.running().await? {
            self.resume_job(r, Instant::now());
        }
        if !self.jobs.is_empty() {
            tracing::info!(jobs = self.jobs.len(), "resuming polls of running jobs");
        }
        let stored = self.store.buckets().await?;
        for lane in &mut self.lanes {
            lane.budget.restore(&stored, now);
        }
        self.status.restore(&stored, now);
        self.pauses.load(&self.store.pauses().await?);
        // The cause may have been fixed while we were down (that is often why we were
        // restarted): probe once now rather than after a whole probe interval.
        for p in self.pauses.probe_now(now) {
            tracing::warn!(scope = p.scope.as_str(), reason = %p.reason, "paused since a previous run; probing once now");
            self.store.set_pause(&p.to_stored()).await?;
        }
        Ok(())
    }

    /// The next loop turn reads whether rows are due, in every lane.
    fn look_for_due_rows(&mut self) {
        for lane in &mut self.lanes {
            lane.maybe_due = true;
        }
    }

    /// Every `poll.queue_interval`: look for new rows, end any wait for room in a full
    /// account (other daemons' jobs end too), and re-read pauses (an operator's `importlyd
    /// resume` deletes them in the database).
    async fn tick(&mut self) {
        self.look_for_due_rows();
        for lane in &mut self.lanes {
            lane.full = None;
        }
        match self.store.pauses().await {
            Ok(stored) => {
                let before = self.pauses.clone();
                self.pauses.load(&stored);
                if !before.is_empty() && self.pauses.is_empty() {
                    tracing::info!("pause lifted");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read pauses"),
        }
    }

    /// Jobs of `kind` holding an account slot as far as we know: being submitted, running,
    /// or accepted in the group not yet stored; not those whose completion it holds.
    fn held(&self, kind: JobKind) -> u32 {
        let lane = &self.lanes[lane_index(kind)];
        let running = self.jobs.values().filter(|j| j.kind == kind).count();
        let accepted = self.group.jobs.iter().filter(|(_, _, j)| j.kind == kind);
        let finished = self
            .group
            .progress
            .finished
            .iter()
            .filter(|f| self.jobs.get(&f.id).is_some_and(|j| j.kind == kind));
        let held = running + accepted.count() + lane.submitting.len();
        u32::try_from(held.saturating_sub(finished.count())).unwrap_or(u32::MAX)
    }

    async fn dispatch_submits(&mut self, li: usize, turn: Now) {
        let now = turn.wall;
        let kind = self.lanes[li].kind;
        if !self.lanes[li].maybe_due || self.shutdown.is_cancelled() || !self.may_send(turn.mono) {
            return;
        }
        let (gate_n, probe) = match self.pauses.submit_gate(scope_of(kind), now) {
            Gate::Open => (u64::MAX, None),
            Gate::Probe(scope) => (1, Some(scope)),
            Gate::Closed { .. } => return,
        };
        let held = self.held(kind);
        let guess = self.guess(kind.as_str());
        let lane = &mut self.lanes[li];
        if lane.waits_for_room(held) {
            return;
        }
        let free_slots = lane.slots.free(held, now);
        let free = u64::from(free_slots);
        let n = gate_n
            .min(free)
            .min(lane.budget.burst(now))
            .min(CLAIM_BATCH);
        if n == 0 {
            return;
        }
        // A read first: an idle tick must not take the write lock that other processes'
        // INSERTs wait for. Not needed while claims come back full (a busy queue).
        if !lane.more_due {
            match self.store.next_due(kind).await {
                Ok(Some(due)) if due <= now => {}
                Ok(_) => {
                    lane.maybe_due = false;
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "reading the queue failed; claiming anyway"),
            }
        }
        let Claim {
            rows: claimed,
            grant,
            full,
        } = match self
            .store
            .claim_budgeted(kind, n as u32, now, held.saturating_add(free_slots), &guess)
            .await
        {
            Ok(claim) => {
                self.health.write_ok();
                claim
            }
            Err(e) => {
                self.health.write_failed("claim rows", &e);
                lane.maybe_due = false;
                lane.more_due = false;
                return;
            }
        };
        lane.more_due = claimed.len() as u64 == n;
        if !lane.more_due {
            lane.maybe_due = false;
        }
        // Every slot of the account is taken, other daemons' jobs included: claiming again
        // as soon as one of ours ends would mostly find none free, and each try costs the
        // claim lock and a count. Wait until a few of ours ended, or the next queue tick
        // (other daemons' jobs end too).
        lane.full = full.then(|| Full {
            held: held.saturating_add(u32::try_from(claimed.len()).unwrap_or(u32::MAX)),
            room: (held.saturating_add(free_slots) / FULL_ROOM_PART).max(1),
        });
        // The shared budget had room for fewer rows than were due (the others stay pending,
        // untouched): the lane waits for its window.
        if let Some(until) = grant.until {
            lane.budget.block_until(until);
            lane.more_due = false;
            tracing::debug!(kind = kind.as_str(), "shared budget spent");
        }
        for row in claimed {
            self.submit(li, row, probe, now).await;
        }
    }

    async fn submit(&mut self, li: usize, row: Claimed, probe: Option<Scope>, now: SystemTime) {
        let kind = self.lanes[li].kind;
        if let preflight::Verdict::Done = self.preflight(kind, &row).await {
            return;
        }
        if kind == JobKind::Metadata && self.metadata_in_flight(&row).await {
            self.wait_for_metadata(&row).await;
            return;
        }
        let mut body = match crate::importly::submit_body(&row.url, &row.options) {
            Ok(b) => b,
            Err(reason) => {
                // CHECK constraints make this unreachable for rows inserted normally; a row
                // edited around them still fails cleanly rather than loop.
                let id = row.id;
                let written = self
                    .persist(Write::FailBadOptions {
                        id,
                        reason,
                        keep: self.cfg.log.keep_attempts,
                    })
                    .await;
                if written.is_some_and(|w| w.gone()) {
                    self.row_gone(id, "its failure");
                }
                return;
            }
        };
        if probe.is_some() {
            // One probe for every due pause this request is gated by (a 401 and a 402
            // both due must not cost two requests).
            self.note_probe(&[Scope::All, scope_of(kind)], now).await;
        }
        let token = self.attach_webhook(row.id, &mut body);
        let held = self.held(kind);
        let lane = &mut self.lanes[li];
        lane.budget.take(now);
        let slot_probe = lane.slots.sent(held, now);
        lane.submitting.insert(row.id);
        self.buckets_dirty = true;
        tracing::debug!(id = row.id, url = %log_field(&row.url), kind = kind.as_str(), "submitting");
        let client = self.client.clone();
        let held = Held::Submit {
            li,
            row: row.clone(),
        };
        let fence = self.member.fence.clone();
        self.spawn_tracked(held, async move {
            // The last look before the request leaves: a task spawned just before the
            // process froze must not send once it thaws with its lease gone.
            if !fence.open() {
                return Done::Unsent { li, row };
            }
            let mut ex = client.submit(kind, &body).await;
            // The token is a live capability until the job ends: the attempt log (and so a
            // ticket) keeps the request without it.
            if let (Some(token), Some(sent)) = (&token, ex.request_body.as_mut()) {
                *sent = sent.replace(token.as_str(), "[token]");
            }
            Done::Submit {
                row,
                kind,
                ex,
                probe,
                slot_probe,
            }
        });
    }

    async fn dispatch_polls(&mut self, turn: Now) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let now = turn.wall;
        // Urgent first (a webhook said the job ended), then the longest due.
        let mut due: Vec<(bool, Instant, i64)> = self
            .jobs
            .iter()
            .filter(|(_, j)| !j.polling && j.next_poll <= turn.mono)
            .map(|(id, j)| (!j.urgent, j.next_poll, *id))
            .collect();
        due.sort_unstable();
        if due.is_empty() || !self.may_send(turn.mono) {
            return;
        }
        // One take from the shared budget for what the local one lets go now, and no more:
        // what is taken and not sent is lost to every daemon until the window ends. A pause
        // sends nothing, or one probe; an urgent poll's jump uses the pacing turn that a
        // paced one would have had (see `Budget::may_jump`).
        let urgent = u64::from(due.iter().any(|(paced, _, _)| !paced));
        let want = match self.pauses.poll_gate(now) {
            Gate::Closed { .. } => return,
            Gate::Probe(_) => 1,
            Gate::Open => self.status.burst(now).max(urgent),
        };
        let want = usize::try_from(want).unwrap_or(usize::MAX).min(due.len());
        let grant = self
            .take_shared("status", u32::try_from(want).unwrap_or(u32::MAX))
            .await;
        if let Some(until) = grant.until {
            self.status.block_until(until);
        }
        due.truncate(usize::try_from(grant.granted).unwrap_or(0));
        for (paced, _, id) in due {
            let probe = match self.pauses.poll_gate(now) {
                Gate::Open => None,
                Gate::Probe(scope) => Some(scope),
                Gate::Closed { .. } => return,
            };
            let may = if paced {
                self.status.burst(now) > 0
            } else {
                self.status.may_jump(now)
            };
            if !may {
                return;
            }
            if probe.is_some() {
                self.note_probe(&[Scope::All], now).await;
            }
            self.status.take(now);
            self.buckets_dirty = true;
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            job.polling = true;
            if job.urgent {
                job.urgent = false;
                job.jumped = true;
            }
            let (kind, job_id) = (job.kind, job.job_id.clone());
            let client = self.client.clone();
            let fence = self.member.fence.clone();
            self.spawn_tracked(Held::Poll { id }, async move {
                if !fence.open() {
                    return Done::PollUnsent { id };
                }
                let ex = client.status(kind, &job_id).await;
                Done::Poll { id, ex, probe }
            });
        }
    }

    /// With webhooks on, `body` gets `webhookUrl` with a fresh token for this job, which is
    /// returned. A row whose own `options` set `webhookUrl` keeps it (the user's hook wins)
    /// and its job is polled only.
    fn attach_webhook(&self, id: i64, body: &mut serde_json::Value) -> Option<String> {
        let hooks = self.hooks.as_ref()?;
        let map = body.as_object_mut()?;
        if map.contains_key("webhookUrl") {
            hooks.spend(id);
            return None;
        }
        let url = hooks.issue(id);
        let token = url.rsplit('/').next().unwrap_or_default().to_owned();
        map.insert("webhookUrl".into(), serde_json::Value::String(url));
        Some(token)
    }

    /// The row's webhook token is spent: its job ended, its submit was not accepted, or the
    /// row is gone. A later delivery to it answers 404.
    fn spend_webhook(&self, id: i64) {
        if let Some(hooks) = &self.hooks {
            hooks.spend(id);
        }
    }

    /// A webhook delivery for row `id`: a hint only. Its job is polled at once (through the
    /// status budget like any poll); that answer, never the delivery's body, changes the row.
    fn webhook_delivered(&mut self, id: i64) {
        let pending = self.group.jobs.iter_mut().find(|(row, _, _)| *row == id);
        let job = match (self.jobs.get_mut(&id), pending) {
            (Some(job), _) | (None, Some((_, _, job))) => job,
            (None, None) => {
                // The callback overtook the submit's answer: remember it for the accept.
                // Otherwise the job is not polled (any more): spent tokens cover it.
                if self.lanes.iter().any(|l| l.submitting.contains(&id)) {
                    self.early_hints.insert(id);
                }
                return;
            }
        };
        if job.polling {
            job.hinted = true;
        } else {
            job.next_poll = job.next_poll.min(Instant::now());
            job.urgent = !job.jumped;
        }
    }

    /// A request goes out as the probe of every pause among `scopes` that is due: each
    /// waits a whole interval for its next probe.
    async fn note_probe(&mut self, scopes: &[Scope], now: SystemTime) {
        let probed = self
            .pauses
            .probed(scopes, now, self.cfg.pause.probe_interval);
        let names: Vec<&str> = probed.iter().map(|p| p.scope.as_str()).collect();
        tracing::info!(
            scope = %names.join(","),
            "paused: sending one request as a probe"
        );
        for p in probed {
            self.persist(Write::SetPause(p.to_stored())).await;
        }
    }

    /// The earliest time anything could be dispatched.
    fn next_wake(&mut self, turn: Now) -> Instant {
        let now = turn.wall;
        let mut wake = turn.mono + Duration::from_secs(3600);
        let poll_gate = self.pauses.poll_gate(now);
        let paced_from = turn.at(self.status.next_send_at(now));
        let jump = self.status.may_jump(now);
        let next_poll = self
            .jobs
            .values()
            .filter(|j| !j.polling)
            .map(|j| {
                if j.urgent && jump {
                    j.next_poll
                } else {
                    j.next_poll.max(paced_from)
                }
            })
            .min();
        if let Some(mut t) = next_poll {
            if let Gate::Closed { until } = poll_gate {
                t = t.max(turn.at(until));
            }
            wake = wake.min(t);
        }
        for i in 0..self.lanes.len() {
            let kind = self.lanes[i].kind;
            let held = self.held(kind);
            let gate = self.pauses.submit_gate(scope_of(kind), now);
            let lane = &mut self.lanes[i];
            if !lane.maybe_due {
                continue;
            }
            // A probe for a slot only matters with a row to send; a past one is already
            // counted in `free` below (waking for it would spin).
            if let Some(p) = lane.slots.probe_at().filter(|p| *p > now) {
                wake = wake.min(turn.at(p));
            }
            // No room: what frees it (a job of ours ending, the queue tick) wakes the loop.
            if lane.slots.free(held, now) == 0 || lane.waits_for_room(held) {
                continue;
            }
            let mut t = lane.budget.next_send_at(now);
            if let Gate::Closed { until } = gate {
                t = t.max(until);
            }
            wake = wake.min(turn.at(t));
        }
        wake.min(self.buckets_save_at()).min(self.next_beat())
    }

    /// Changed budgets are saved within a second; unchanged ones every
    /// [`WRITE_PROBE_INTERVAL`], as the probe of an idle daemon's database.
    fn buckets_save_at(&self) -> Instant {
        let after = if self.buckets_dirty {
            Duration::from_secs(1)
        } else {
            WRITE_PROBE_INTERVAL
        };
        self.buckets_saved_at + after
    }

    async fn save_buckets_if_due(&mut self, now: Now) {
        if now.mono < self.buckets_save_at() {
            return;
        }
        self.save_buckets(now.mono).await;
    }

    async fn save_buckets(&mut self, now: Instant) {
        let mut rows = self.status.snapshot();
        for lane in &self.lanes {
            rows.extend(lane.budget.snapshot());
        }
        match self.store.save_buckets(&rows).await {
            Ok(()) => self.health.write_ok(),
            Err(e) => {
                self.health.write_failed("save rate-limit budgets", &e);
            }
        }
        self.buckets_dirty = false;
        self.buckets_saved_at = now;
    }

    async fn apply(&mut self, c: Control) {
        match c {
            Control::Reload {
                config,
                key,
                applied,
            } => {
                let now = SystemTime::now();
                if let Some(key) = key {
                    self.client.set_key(key);
                }
                for lane in &mut self.lanes {
                    let limit = match lane.kind {
                        JobKind::Import => &config.limits.import,
                        JobKind::Metadata => &config.limits.metadata,
                    };
                    lane.budget.reconfigure(limit, now);
                    lane.slots
                        .reconfigure(limit.concurrent, config.limits.probe_delay, now);
                    lane.maybe_due = true;
                }
                self.status.reconfigure(&config.limits.status, now);
                self.cfg = Arc::new(*config);
                for p in self.pauses.probe_now(now) {
                    self.persist(Write::SetPause(p.to_stored())).await;
                }
                // The outcome line of the reload is the signal handler's (one per SIGHUP).
                tracing::debug!("new configuration and API key in force");
                let _ = applied.send(());
            }
        }
    }

    /// After SIGTERM: wait (bounded) for calls in flight and record their outcomes, then
    /// give back rows whose submit never got an answer.
    async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(joined)) => {
                    self.joined(joined).await;
                    self.record_group().await;
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        calls = self.tasks.len(),
                        "abandoning HTTP calls still in flight"
                    );
                    self.tasks.abort_all();
                    // Recovery below releases their rows, whatever they held.
                    self.held_by.clear();
                    break;
                }
            }
        }
        let keep = self.cfg.log.keep_attempts;
        match self
            .store
            .recover_submitting(keep, JobKind::submit_path)
            .await
        {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!(rows = ?ids, "submits abandoned at shutdown; rows back to pending")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "could not release rows at shutdown"),
        }
        self.save_buckets(Instant::now()).await;
    }

    /// Runs a store write until it succeeds (a full disk or a locked file is retried, not
    /// dropped: a row must never be reported done that we could not record). Gives up only
    /// at shutdown, leaving the row as it was for start-up recovery.
    async fn persist(&self, w: Write) -> Option<Applied> {
        let what = w.what();
        let mut delay = Duration::from_millis(100);
        loop {
            match w.apply(&self.store).await {
                Ok(v) => {
                    self.health.write_ok();
                    return Some(v);
                }
                Err(e) => {
                    // Still alive, only waiting for the disk: keep the watchdog fed. An error
                    // no wait cures (a broken schema) starves it instead, so that systemd
                    // restarts the daemon and start-up recovery gets its turn.
                    if e.is_transient() {
                        self.health.beat();
                    }
                    self.health.write_failed(what, &e);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => {
                    tracing::error!("{what}: giving up at shutdown; start-up recovery will resolve the row");
                    return None;
                }
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scheduler over a fresh database in `dir` (its client aims at a closed port: these
    /// tests drive the scheduler's own bookkeeping), with `tune` applied to the config.
    async fn scheduler_in(
        dir: &std::path::Path,
        tune: impl FnOnce(&mut Config),
    ) -> (Scheduler, Store) {
        let mut cfg = Config::default();
        cfg.database.path = dir.join("q.db");
        tune(&mut cfg);
        let store = Store::open(&cfg.database).await.unwrap();
        let client = Client::new(
            "http://127.0.0.1:9",
            SecretString::from("k".to_owned()),
            Duration::from_secs(1),
        )
        .unwrap();
        let s = Scheduler::new(cfg, store.clone(), client, CancellationToken::new());
        (s, store)
    }

    #[test]
    fn failed_polls_back_off_doubling_up_to_a_minute() {
        let s = Duration::from_secs;
        let interval = Duration::from_millis(500);
        assert_eq!(poll_backoff(interval, 0), interval);
        assert_eq!(poll_backoff(interval, 1), s(1));
        assert_eq!(poll_backoff(interval, 2), s(2));
        assert_eq!(poll_backoff(interval, 7), s(60));
        assert_eq!(poll_backoff(interval, u32::MAX), s(60));
        // An interval above the cap is never shortened.
        assert_eq!(poll_backoff(s(120), 3), s(120));
    }

    #[test]
    fn wall_deadlines_become_instants_as_far_away() {
        let now = Now::read();
        assert_eq!(now.at(now.wall), now.mono);
        assert_eq!(now.at(now.wall - Duration::from_secs(5)), now.mono);
        assert_eq!(
            now.at(now.wall + Duration::from_secs(5)),
            now.mono + Duration::from_secs(5)
        );
        // A deadline centuries away is an hour away (the loop looks again by then).
        assert_eq!(
            now.at(now.wall + Duration::from_secs(100 * 365 * 24 * 3600)),
            now.mono + Duration::from_secs(3600)
        );
    }

    /// Issue 11: a panicked HTTP task must not leak its slot or strand its row in
    /// `submitting`. A real task cannot be made to panic from outside (the client never
    /// panics on any answer), so this drives the release path with a task that panics in
    /// place of the HTTP call, through the same tracking as a real submit.
    #[tokio::test]
    async fn a_submit_task_that_panics_frees_its_slot_and_its_row() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, store) = scheduler_in(dir.path(), |_| {}).await;
        let ids = store
            .enqueue(&[crate::store::EnqueueRow {
                url: "https://e.com/a".into(),
                ..Default::default()
            }])
            .await
            .unwrap();
        let row = store
            .claim_due(JobKind::Import, 1, SystemTime::now(), u32::MAX)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(row.id, ids[0]);
        s.lanes[0].submitting.insert(row.id);
        assert_eq!(s.held(JobKind::Import), 1);
        let held = Held::Submit {
            li: 0,
            row: row.clone(),
        };
        s.spawn_tracked(held, async move {
            if row.id > 0 {
                panic!("a bug in an HTTP task");
            }
            unreachable!()
        });
        let joined = s.tasks.join_next_with_id().await.unwrap();
        assert!(joined.as_ref().is_err_and(|e| e.is_panic()));
        s.joined(joined).await;
        assert_eq!(s.held(JobKind::Import), 0, "the slot is free again");
        assert!(s.held_by.is_empty());
        let r = store.row(ids[0]).await.unwrap().unwrap();
        assert_eq!(r.state, "pending");
        let log = store.attempts(ids[0]).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].outcome, "ambiguous_submit");

        // A poll task that panics: its job is polled again later, not forgotten.
        s.jobs.insert(
            7,
            Job {
                kind: JobKind::Import,
                job_id: "job-7".into(),
                attempts: 0,
                next_poll: Instant::now(),
                polling: true,
                poll_failures: 0,
                hinted: false,
                urgent: false,
                jumped: false,
            },
        );
        s.spawn_tracked(Held::Poll { id: 7 }, async move {
            panic!("a bug in a poll task");
        });
        let joined = s.tasks.join_next_with_id().await.unwrap();
        s.joined(joined).await;
        let job = &s.jobs[&7];
        assert!(!job.polling, "the job is polled again");
        assert_eq!(job.poll_failures, 1);
        store.close().await;
    }

    /// Issue 12: a 401 pause and an import 402 pause both due. The submit that probes goes
    /// out for both: neither gate lets a second request through (a status poll would
    /// otherwise probe the 401 again before the first probe's answer).
    #[tokio::test]
    async fn one_request_probes_every_due_pause_it_passes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, store) = scheduler_in(dir.path(), |_| {}).await;
        let now = SystemTime::now();
        let due = now - Duration::from_secs(1);
        let stored = |scope: Scope, status| crate::store::StoredPause {
            scope,
            reason: "x".into(),
            http_status: Some(status),
            since: due,
            next_probe: due,
        };
        s.pauses
            .load(&[stored(Scope::All, 401), stored(Scope::Import, 402)]);
        assert!(matches!(
            s.pauses.submit_gate(Scope::Import, now),
            Gate::Probe(_)
        ));
        s.note_probe(&[Scope::All, Scope::Import], now).await;
        assert!(matches!(
            s.pauses.submit_gate(Scope::Import, now),
            Gate::Closed { .. }
        ));
        assert!(matches!(s.pauses.poll_gate(now), Gate::Closed { .. }));
        // And the database says so too (the queue tick reloads pauses from there).
        for p in store.pauses().await.unwrap() {
            assert!(p.next_probe > now, "{p:?}");
        }
        store.close().await;
    }

    /// A wall clock stepped back an hour: the status budget's pacing, set in the old
    /// timeline, would hold every poll for that hour. The step is noticed and the pacing
    /// re-based; what was spent is kept.
    /// A lane waiting for room in a full account (several daemons share it) does not wake
    /// the loop: what ends the wait (a job of ours ending, the queue tick) does. It used to
    /// ask for a turn at once, every millisecond, until then.
    #[tokio::test]
    async fn a_lane_waiting_for_room_does_not_wake_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, store) = scheduler_in(dir.path(), |cfg| {
            cfg.limits.import = crate::config::BucketLimit {
                requests: 1_000_000,
                window: Duration::from_secs(3600),
                concurrent: 10,
                reserve: 0,
            };
        })
        .await;
        let now = Now::read();
        // The lease renewed, so only the lanes and the budgets' save decide the wake.
        s.beat_if_due(now.mono).await;
        let li = lane_index(JobKind::Import);
        for lane in &mut s.lanes {
            lane.maybe_due = false;
        }
        s.lanes[li].maybe_due = true;
        assert!(
            s.next_wake(now) <= now.mono + Duration::from_millis(1),
            "a due row and a free slot: a turn at once"
        );
        s.lanes[li].full = Some(Full { held: 0, room: 1 });
        assert!(s.lanes[li].waits_for_room(0));
        assert!(
            s.next_wake(now) >= now.mono + Duration::from_millis(100),
            "waiting for room: no turn until something frees it"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_wall_clock_step_back_rebases_the_budgets() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, store) = scheduler_in(dir.path(), |cfg| {
            cfg.limits.status = crate::config::BucketLimit {
                requests: 4,
                window: Duration::from_secs(3600),
                concurrent: 0,
                reserve: 0,
            };
        })
        .await;
        let now = Now::read();
        let hour = Duration::from_secs(3600);
        // The last turn ran an hour ahead of the wall clock now, and sent a poll then.
        let before = Now {
            mono: now.mono,
            wall: now.wall + hour,
        };
        s.status = Budget::new("status", &s.cfg.limits.status, before.wall);
        s.status.take(before.wall);
        s.last_turn = before;
        assert!(s.status.next_send_at(now.wall) > now.wall + Duration::from_secs(600));
        s.notice_clock_step(now);
        assert_eq!(s.status.next_send_at(now.wall), now.wall);
        // An ordinary turn (both clocks moved alike) changes nothing.
        s.status.take(now.wall);
        let paced = s.status.next_send_at(now.wall);
        s.notice_clock_step(now);
        assert_eq!(s.status.next_send_at(now.wall), paced);
        store.close().await;
    }

    /// A callback can overtake the answer to its own submit (the job ended before the
    /// scheduler handled the accept): it is kept, and the job's first poll goes at once.
    #[tokio::test]
    async fn a_webhook_that_overtakes_its_submit_is_kept_for_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, store) = scheduler_in(dir.path(), |_| {}).await;
        // Row 7 is being submitted; row 8 is not ours at all.
        s.lanes[0].submitting.insert(7);
        s.webhook_delivered(7);
        s.webhook_delivered(8);
        assert!(s.early_hints.contains(&7), "kept for the accept");
        assert!(
            !s.early_hints.contains(&8),
            "a row we do not submit leaves no trace"
        );
        // Accepted, in the group not yet stored: the delivery makes its poll due now.
        let later = Instant::now() + Duration::from_secs(30);
        let job = Job {
            kind: JobKind::Import,
            job_id: "j9".into(),
            attempts: 0,
            next_poll: later,
            polling: false,
            poll_failures: 0,
            hinted: false,
            urgent: false,
            jumped: false,
        };
        s.group.jobs.push((9, "https://e.example/9".into(), job));
        s.webhook_delivered(9);
        let (_, _, job) = &s.group.jobs[0];
        assert!(job.next_poll < later && job.urgent, "{job:?}");
        store.close().await;
    }
}
