//! What each classified outcome does to the row, the limiter and the pauses: the error
//! policy table of the README, in code.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::time::Instant;

use super::{
    Applied, Done, Job, Scheduler, Write, attempt_record, lane_index, log_field, poll_backoff,
    scope_of,
};
use crate::backoff;
use crate::clock;
use crate::importly::{Exchange, JobKind, JobState, Outcome};
use crate::limits::Scope;
use crate::store::{AttemptRecord, Claimed, Fate, Finished, Started, Written};

/// A rate-limit 429's block, which every daemon on the account must respect.
fn rate_limited_until(ex: &Exchange) -> Option<SystemTime> {
    match &ex.outcome {
        Outcome::RateLimited { until, .. } => Some(*until),
        _ => None,
    }
}

impl Scheduler {
    pub(super) async fn handle(&mut self, done: Done) {
        count(&done);
        match done {
            Done::Submit {
                row,
                kind,
                ex,
                probe,
                slot_probe,
            } => {
                self.lanes[lane_index(kind)].submitting.remove(&row.id);
                self.lanes[lane_index(kind)]
                    .budget
                    .observe(&ex.headers, ex.finished_at);
                self.observe_shared(kind.as_str(), &ex, rate_limited_until(&ex))
                    .await;
                self.buckets_dirty = true;
                self.lift_pauses(kind, &ex, probe).await;
                let id = row.id;
                self.on_submit(row, kind, ex, slot_probe).await;
                // Used by an accept (its first poll), or moot for any other answer.
                self.early_hints.remove(&id);
            }
            Done::Poll { id, ex, probe } => {
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.polling = false;
                }
                self.status.observe(&ex.headers, ex.finished_at);
                self.observe_shared("status", &ex, rate_limited_until(&ex))
                    .await;
                self.buckets_dirty = true;
                if probe.is_some() || !self.pauses.is_empty() {
                    self.lift_pauses_after_poll(&ex).await;
                }
                self.on_poll(id, ex).await;
            }
            Done::Unsent { li, row } => {
                self.forget_submit(li, row.id);
                self.persist(Write::GiveBackUnsent { id: row.id }).await;
                self.look_for_due_rows();
            }
            Done::PollUnsent { id } => {
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.polling = false;
                }
            }
        }
    }

    /// An answer that proves the key good lifts a 401 pause; one that proves the credits
    /// good (an accepted job, or a concurrency refusal: credits are checked first) lifts a
    /// 402 pause of that kind, if the request was sent after the pause began.
    async fn lift_pauses(&mut self, kind: JobKind, ex: &Exchange, probe: Option<Scope>) {
        if self.pauses.is_empty() && probe.is_none() {
            return;
        }
        let outcome = &ex.outcome;
        let key_ok = !matches!(
            outcome,
            Outcome::Unauthorized { .. } | Outcome::Transient { .. }
        );
        let credits_ok = matches!(
            outcome,
            Outcome::Accepted { .. } | Outcome::ConcurrencyLimited { .. }
        );
        if key_ok {
            self.lift(Scope::All, ex.started_at).await;
        }
        if credits_ok {
            self.lift(scope_of(kind), ex.started_at).await;
        }
    }

    async fn lift_pauses_after_poll(&mut self, ex: &Exchange) {
        if !matches!(
            ex.outcome,
            Outcome::Unauthorized { .. } | Outcome::Transient { .. }
        ) {
            self.lift(Scope::All, ex.started_at).await;
        }
    }

    /// Lifts `scope`'s pause if the request that proved it wrong went out at `sent_at`,
    /// after the pause began (see [`Pauses::lift`]).
    async fn lift(&mut self, scope: Scope, sent_at: SystemTime) {
        if self.pauses.lift(scope, sent_at) {
            tracing::info!(
                scope = scope.as_str(),
                "pause lifted: Importly accepts us again"
            );
            self.persist(Write::ClearPause(scope)).await;
            self.look_for_due_rows();
        }
    }

    async fn pause(&mut self, scope: Scope, reason: String, status: u16) {
        let now = SystemTime::now();
        let interval = self.cfg.pause.probe_interval;
        let first = self.pauses.get(scope).is_none();
        let p = self.pauses.pause(scope, reason, status, now, interval);
        if first {
            tracing::error!(
                scope = scope.as_str(),
                reason = %p.reason,
                next_probe = %clock::iso(p.next_probe),
                "paused; fix it and send SIGHUP or run `importlyd resume`"
            );
        } else {
            // Requests already in flight when the pause began, or a refused probe.
            tracing::warn!(
                scope = scope.as_str(),
                status,
                next_probe = %clock::iso(p.next_probe),
                "still paused"
            );
        }
        self.persist(Write::SetPause(p.to_stored())).await;
    }

    async fn on_submit(&mut self, row: Claimed, kind: JobKind, ex: Exchange, slot_probe: bool) {
        let keep = self.cfg.log.keep_attempts;
        let attempt = row.attempts + 1;
        let id = row.id;
        let now = ex.finished_at;
        if !matches!(ex.outcome, Outcome::Accepted { .. }) {
            self.spend_webhook(id);
        }
        match &ex.outcome {
            Outcome::Accepted { job_id } => {
                self.lanes[lane_index(kind)].slots.accepted(slot_probe, now);
                // Stored with the rest of this group's answers (see `record_group`); the job
                // is polled once its `running` state is on disk.
                let record = attempt_record(&ex, attempt, Some(job_id));
                self.group
                    .progress
                    .started
                    .push(Started::new(id, job_id, record));
                // A webhook that overtook this answer: the job has ended, poll it at once.
                let early = self.early_hints.contains(&id);
                let job = Job {
                    kind,
                    job_id: job_id.clone(),
                    attempts: row.attempts,
                    // Set when the group is stored (`record_group`).
                    next_poll: Instant::now(),
                    polling: false,
                    poll_failures: 0,
                    hinted: false,
                    urgent: early,
                    jumped: false,
                };
                self.group.jobs.push((id, row.url, job));
            }
            Outcome::RateLimited { until, .. } => {
                let until = *until;
                self.lanes[lane_index(kind)].budget.block_until(until);
                tracing::warn!(id, until = %clock::iso(until), bucket = kind.as_str(), "rate limited: snoozing the row and the bucket");
                let why = format!("rate limited until {}", clock::iso(until));
                self.snooze(id, None, why, attempt_record(&ex, attempt, None))
                    .await;
            }
            Outcome::ConcurrencyLimited { limit, current } => {
                let held = self.held(kind);
                self.lanes[lane_index(kind)]
                    .slots
                    .refused(held, *limit, *current, slot_probe, now);
                tracing::warn!(
                    id,
                    ours = held,
                    ?limit,
                    ?current,
                    "concurrency limit: the account's other slots are busy"
                );
                let why = "concurrency limit reached; waiting for a free slot".to_owned();
                self.snooze(id, None, why, attempt_record(&ex, attempt, None))
                    .await;
            }
            Outcome::BadRequest { message } => {
                let reason = format!(
                    "rejected by Importly (HTTP {}): {message}",
                    status_text(&ex)
                );
                self.fail_row(id, reason, None, attempt_record(&ex, attempt, None))
                    .await;
            }
            Outcome::NotFound { message } => {
                let reason = format!("media URL not publicly reachable (HTTP 404): {message}");
                self.fail_row(id, reason, None, attempt_record(&ex, attempt, None))
                    .await;
            }
            Outcome::Unauthorized { message } => {
                let reason = format!("API key rejected (HTTP 401): {message}");
                self.pause(Scope::All, reason.clone(), 401).await;
                self.snooze(id, None, reason, attempt_record(&ex, attempt, None))
                    .await;
            }
            Outcome::InsufficientCredits { message } => {
                let reason = format!("out of credits (HTTP 402): {message}");
                self.pause(scope_of(kind), reason.clone(), 402).await;
                self.snooze(id, None, reason, attempt_record(&ex, attempt, None))
                    .await;
            }
            Outcome::Transient {
                reason,
                retry_after,
                ambiguous,
            } => {
                let policy = backoff::Policy {
                    base: self.cfg.retry.base_delay,
                    max: self.cfg.retry.max_delay,
                };
                let jitter: f64 = rand::random();
                let delay = backoff::delay(policy, attempt as u32, *retry_after, jitter);
                let why = if *ambiguous {
                    format!("{reason} (the submit may have reached Importly)")
                } else {
                    reason.clone()
                };
                let fate = self
                    .persist(Write::Retry {
                        id,
                        wait: delay,
                        max_attempts: self.cfg.retry.max_attempts,
                        why: why.clone(),
                        record: attempt_record(&ex, attempt, None),
                        keep,
                    })
                    .await;
                match fate {
                    Some(Applied::Fate(Fate::Failed)) => {
                        tracing::error!(id, attempts = attempt, reason = %why, "failed: out of attempts")
                    }
                    Some(Applied::Fate(Fate::Pending)) => {
                        tracing::warn!(id, attempt, retry_in = ?delay, reason = %why, "submit failed; will retry")
                    }
                    Some(Applied::Fate(Fate::Gone)) => self.row_gone(id, "its failed submit"),
                    _ => {}
                }
            }
            Outcome::Job { .. } => {
                // The client classifies submit answers as Accepted or an error; this arm
                // only guards against a future change there.
                let reason = "unexpected answer to a submit".to_owned();
                self.snooze(
                    id,
                    Some(Duration::ZERO),
                    reason,
                    attempt_record(&ex, attempt, None),
                )
                .await;
            }
        }
    }

    async fn on_poll(&mut self, id: i64, ex: Exchange) {
        let Some(job) = self.jobs.get(&id).cloned() else {
            return;
        };
        let attempt = job.attempts + 1;
        let now = Instant::now();
        let interval = self.cfg.poll.status_interval;
        match &ex.outcome {
            Outcome::Job {
                state: JobState::Completed,
                data,
            } => {
                match job.kind {
                    // Stored with the rest of this group's answers (see `record_group`).
                    JobKind::Import => self.group.progress.finished.push(Finished {
                        id,
                        media_url: data
                            .get("mediaUrl")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        credits_used: data.get("creditsUsed").and_then(Value::as_i64),
                        result: data.to_string(),
                    }),
                    JobKind::Metadata => {
                        if self.record_metadata(id, &job.job_id, data).await {
                            self.finish_job(id);
                        }
                    }
                }
            }
            Outcome::Job {
                state: JobState::Failed,
                data,
            } => {
                let message = data
                    .get("error")
                    .or_else(|| data.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                let reason = format!("{} job failed at Importly: {message}", job.kind.as_str());
                let record = attempt_record(&ex, attempt, Some(&job.job_id));
                self.fail_row(id, reason, Some(data.to_string()), record)
                    .await;
                self.finish_job(id);
            }
            Outcome::Job { .. } => {
                // A delivery during this poll: the job may have ended after it left.
                let next = if job.hinted { now } else { now + interval };
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.poll_failures = 0;
                    job.urgent = job.hinted && !job.jumped;
                    job.hinted = false;
                }
                self.reschedule_poll(id, next);
            }
            Outcome::NotFound { message } => {
                let reason = format!("job not found or expired (HTTP 404): {message}");
                let record = attempt_record(&ex, attempt, Some(&job.job_id));
                self.fail_row(id, reason, None, record).await;
                self.finish_job(id);
            }
            Outcome::RateLimited { until, .. } => {
                self.status.block_until(*until);
                tracing::warn!(id, until = %clock::iso(*until), "status polls rate limited");
                self.log_poll_failure(id, &ex, attempt, &job.job_id).await;
                // The status budget holds every poll until then; the job keeps its turn.
                self.reschedule_poll(id, now);
            }
            Outcome::Unauthorized { message } => {
                let reason = format!("API key rejected (HTTP 401): {message}");
                self.pause(Scope::All, reason, 401).await;
                self.log_poll_failure(id, &ex, attempt, &job.job_id).await;
                self.reschedule_poll(id, now + interval);
            }
            _ => {
                // A failed poll is Importly's or the network's trouble, not the job's: the
                // job goes on at Importly, so keep polling, slower each time in a row.
                let failures = job.poll_failures.saturating_add(1);
                let wait = poll_backoff(interval, failures);
                tracing::warn!(id, job_id = %job.job_id, outcome = ex.outcome.name(), failures, next_poll_in = ?wait, "status poll failed; will poll again");
                self.log_poll_failure(id, &ex, attempt, &job.job_id).await;
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.poll_failures = failures;
                }
                self.reschedule_poll(id, now + wait);
            }
        }
    }

    /// Records the group's accepted submits and completed imports in one transaction,
    /// then starts polling the accepted jobs and frees the completed ones' slots. Called
    /// after each group of answers; a no-op when the group changed nothing.
    pub(super) async fn record_group(&mut self) {
        if self.group.progress.is_empty() {
            return;
        }
        let super::Group { progress, jobs } = std::mem::take(&mut self.group);
        // The write takes the group's data; the log lines of the completed jobs, after it.
        let completed: Vec<(i64, String, Option<i64>)> = progress
            .finished
            .iter()
            .map(|f| {
                let media_url = log_field(f.media_url.as_deref().unwrap_or(""));
                (f.id, media_url, f.credits_used)
            })
            .collect();
        let stored = self.persist(Write::RecordProgress(progress)).await;
        let Some(Applied::Started(started)) = stored else {
            // Shutdown came first: the rows stay `submitting`/`running` on disk, and start-up
            // recovery resolves them. What only we know goes to the log for the tickets.
            for (id, url, job) in &jobs {
                tracing::error!(id, job_id = %job.job_id, url = %log_field(url), "accepted by Importly but not recorded; the row will be submitted again");
            }
            return;
        };
        // Only the rows really started are polled: one reset, cancelled or deleted while
        // its submit was in flight must not get (or be polled for) this job.
        let started: HashSet<i64> = started.into_iter().collect();
        // The group's jobs are first polled together, one status interval after they were
        // stored: one take from the shared budget for all of them, and their answers come
        // back together to be recorded as one group. Counted from each answer's arrival,
        // they fell due one by one, each poll a take and a FINISH of its own.
        // An urgent one (a webhook overtook its answer) is polled at once.
        let stored = Instant::now();
        let first_poll = stored + self.cfg.poll.status_interval;
        for (id, url, mut job) in jobs {
            job.next_poll = if job.urgent { stored } else { first_poll };
            if started.contains(&id) {
                tracing::info!(id, job_id = %job.job_id, url = %log_field(&url), "submitted");
                self.jobs.insert(id, job);
            } else if self.hand_over(id, &job).await {
                tracing::warn!(id, job_id = %job.job_id, url = %log_field(&url), "accepted after this daemon lost the row (its lease lapsed); the row was still waiting, so it takes this job and is not posted again");
                self.jobs.insert(id, job);
            } else {
                tracing::warn!(id, job_id = %job.job_id, url = %log_field(&url), "accepted by Importly, but the row was reset, cancelled or deleted meanwhile; the job is orphaned at Importly and not polled");
                self.spend_webhook(id);
                // Its slot at Importly is taken until the job ends; ours is free again.
                self.lanes[lane_index(job.kind)].maybe_due = true;
            }
        }
        for (id, media_url, credits) in completed {
            tracing::info!(id, media_url = %media_url, credits, "completed");
            self.finish_job(id);
        }
    }

    /// A completed metadata job: the row and the cache, together.
    async fn record_metadata(&mut self, id: i64, job_id: &str, data: &Value) -> bool {
        let info = crate::guard::meta_info(data);
        let title = log_field(info.title.as_deref().unwrap_or(""));
        let stored = self
            .persist(Write::CompleteMetadata {
                id,
                job_id: job_id.to_owned(),
                title: info.title,
                duration: info.duration,
                formats: info.formats.to_string(),
                result: data.to_string(),
            })
            .await;
        match stored {
            Some(Applied::Row(Written::Row)) => {
                tracing::info!(id, title = %title, "metadata completed and cached")
            }
            Some(Applied::Row(Written::Gone)) => self.row_gone(id, "its completed metadata"),
            _ => {}
        }
        stored.is_some()
    }

    /// Row `id` is no longer ours to write (its owner deleted or reset it, or, with several
    /// daemons, another took it over after our lease lapsed): there is nothing left to
    /// record, which is not an error; its job (if any) is not polled any more.
    pub(super) fn row_gone(&mut self, id: i64, what: &str) {
        tracing::warn!(
            id,
            "the row was deleted, reset or taken over by another daemon while this one \
             handled it; {what} is not recorded"
        );
        self.finish_job(id);
    }

    fn reschedule_poll(&mut self, id: i64, at: Instant) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.next_poll = at;
        }
    }

    /// The job's slot is free again: the lane may have room for a due row.
    fn finish_job(&mut self, id: i64) {
        self.spend_webhook(id);
        if let Some(job) = self.jobs.remove(&id) {
            self.lanes[lane_index(job.kind)].maybe_due = true;
            // Imports waiting on this metadata (the credit guard) were just made due.
            if job.kind == JobKind::Metadata {
                self.lanes[lane_index(JobKind::Import)].maybe_due = true;
            }
        }
    }

    async fn log_poll_failure(&mut self, id: i64, ex: &Exchange, attempt: i64, job_id: &str) {
        let written = self
            .persist(Write::LogFailedPoll {
                id,
                record: attempt_record(ex, attempt, Some(job_id)),
                keep: self.cfg.log.keep_attempts,
            })
            .await;
        if written.is_some_and(|w| w.gone()) {
            self.row_gone(id, "its failed poll");
        }
    }

    /// Back to pending without counting an attempt (429, 401, 402). `wait` `None` keeps the
    /// row's place in the queue: the reason is the account's, not the row's, and the limits
    /// (a blocked bucket, no free slot, a pause) hold every row back until it passes.
    async fn snooze(
        &mut self,
        id: i64,
        wait: Option<Duration>,
        why: String,
        record: AttemptRecord,
    ) {
        let fate = self
            .persist(Write::Snooze {
                id,
                wait,
                max_attempts: self.cfg.retry.max_attempts,
                why,
                record,
                keep: self.cfg.log.keep_attempts,
            })
            .await;
        if fate.is_some_and(|f| f.gone()) {
            self.row_gone(id, "its snooze");
        }
        if wait.is_none_or(|w| w <= Duration::from_millis(10)) {
            for lane in &mut self.lanes {
                lane.maybe_due = true;
            }
        }
    }

    async fn fail_row(
        &mut self,
        id: i64,
        reason: String,
        result: Option<String>,
        record: AttemptRecord,
    ) {
        tracing::error!(id, reason = %reason, "failed");
        let written = self
            .persist(Write::Fail {
                id,
                reason,
                result,
                record,
                keep: self.cfg.log.keep_attempts,
            })
            .await;
        if written.is_some_and(|w| w.gone()) {
            self.row_gone(id, "its failure");
        }
    }
}

fn status_text(ex: &Exchange) -> String {
    ex.http_status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "?".into())
}

/// Prometheus counters and the poll latency histogram (no-ops without a recorder).
fn count(done: &Done) {
    let (call, ex, kind) = match done {
        Done::Submit { ex, kind, .. } => ("submit", ex, kind.as_str()),
        Done::Poll { ex, .. } => ("poll", ex, "status"),
        Done::Unsent { .. } | Done::PollUnsent { .. } => return,
    };
    let outcome = ex.outcome.name();
    metrics::counter!("importlyd_requests_total", "call" => call, "outcome" => outcome)
        .increment(1);
    match &ex.outcome {
        Outcome::RateLimited { .. } => {
            metrics::counter!("importlyd_429_total", "kind" => "rate", "bucket" => kind)
                .increment(1)
        }
        Outcome::ConcurrencyLimited { .. } => {
            metrics::counter!("importlyd_429_total", "kind" => "concurrency", "bucket" => kind)
                .increment(1)
        }
        Outcome::Transient { .. } if call == "submit" => {
            metrics::counter!("importlyd_retries_total").increment(1)
        }
        _ => {}
    }
    if call == "poll" {
        let secs = ex
            .finished_at
            .duration_since(ex.started_at)
            .unwrap_or_default()
            .as_secs_f64();
        metrics::histogram!("importlyd_poll_latency_seconds").record(secs);
    }
}
