//! Before a claimed row is sent: a metadata row whose URL is cached completes from the
//! cache; an import row with the credit guard on waits for (or reuses) its URL's metadata
//! and fails without a POST when the chosen format costs more than `max_credits`.
//!
//! The guard's metadata travels the ordinary queue: it inserts a `kind = 'metadata'` row
//! and snoozes the import row until that row has filled the cache, so metadata fetches get
//! the same limits, retries, pauses and tickets as everything else.

use std::time::SystemTime;

use super::{Applied, Scheduler, Write, log_field};
use crate::clock;
use crate::guard::{self, Guard};
use crate::importly::JobKind;
use crate::store::{CachedMetadata, Claimed, MetadataRow};

/// What to do with a claimed row.
pub(super) enum Verdict {
    /// Send it.
    Submit,
    /// Dealt with here (completed from cache, failed, or snoozed).
    Done,
}

/// How many status intervals an import waiting for its preflight metadata sleeps before it
/// looks again on its own (the end of the metadata row normally wakes it first).
const WAITING_FALLBACK_POLLS: u32 = 6;

impl Scheduler {
    pub(super) async fn preflight(&mut self, kind: JobKind, row: &Claimed) -> Verdict {
        let now = SystemTime::now();
        // A TTL longer than the time since 1970 ("100y" meant as forever) keeps everything.
        let fresh_since = now
            .checked_sub(self.cfg.metadata.cache_ttl)
            .unwrap_or(std::time::UNIX_EPOCH);
        match kind {
            JobKind::Metadata => {
                let cached = self.store.cached_metadata(&row.url, fresh_since).await;
                let Ok(Some(cached)) = cached else {
                    return Verdict::Submit;
                };
                let id = row.id;
                let fetched_at = cached.fetched_at;
                match self.persist(Write::CompleteFromCache { id, cached }).await {
                    Some(done) if done.gone() => self.row_gone(id, "its completion from the cache"),
                    Some(_) => {
                        tracing::info!(id, url = %log_field(&row.url), fetched_at = %clock::iso(fetched_at), "metadata completed from the cache, no API call");
                        self.lanes[super::lane_index(kind)].maybe_due = true;
                    }
                    None => {}
                }
                Verdict::Done
            }
            JobKind::Import => {
                let default_max =
                    (self.cfg.metadata.max_credits > 0).then_some(self.cfg.metadata.max_credits);
                match Guard::from_options(&row.options, self.cfg.metadata.preflight, default_max) {
                    Ok(g) if !g.preflight => Verdict::Submit,
                    Ok(g) => self.guard_import(row, &g, fresh_since).await,
                    Err(reason) => self.fail_guarded(row, reason).await,
                }
            }
        }
    }

    async fn guard_import(&mut self, row: &Claimed, g: &Guard, fresh_since: SystemTime) -> Verdict {
        let id = row.id;
        match self.store.cached_metadata(&row.url, fresh_since).await {
            Ok(Some(cached)) => self.judge(row, g, &cached).await,
            Ok(None) => {
                let state = self
                    .persist(Write::QueuePreflight {
                        id,
                        url: row.url.clone(),
                    })
                    .await;
                match state {
                    Some(Applied::Metadata(MetadataRow::Ready(cached))) => {
                        self.judge(row, g, &cached).await
                    }
                    Some(Applied::Metadata(MetadataRow::Failed(reason))) => {
                        let reason = format!("preflight metadata failed: {reason}");
                        self.fail_guarded(row, reason).await
                    }
                    Some(Applied::Metadata(m)) => {
                        if let MetadataRow::Queued(mid) = m {
                            tracing::info!(
                                id,
                                metadata_row = mid,
                                "credit guard: fetching metadata first"
                            );
                            self.lanes[super::lane_index(JobKind::Metadata)].maybe_due = true;
                        }
                        // Wait for the metadata row without counting an attempt; the
                        // last_error marks the row as waiting (see `MetadataRow::WAITING`).
                        // The end of the metadata row wakes this one (store::WAKE_WAITERS);
                        // the snooze is only a fallback (a cancelled or purged metadata
                        // row), long enough that many waiting rows do not churn the writer.
                        let wait = self.cfg.poll.status_interval * WAITING_FALLBACK_POLLS;
                        let fate = self
                            .persist(Write::WaitForPreflight {
                                id,
                                wait,
                                max_attempts: self.cfg.retry.max_attempts,
                                keep: self.cfg.log.keep_attempts,
                            })
                            .await;
                        if fate.is_some_and(|f| f.gone()) {
                            self.row_gone(id, "its wait for metadata");
                        }
                        Verdict::Done
                    }
                    _ => Verdict::Done,
                }
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "reading the metadata cache failed; retrying the row");
                self.release_row(id).await;
                Verdict::Done
            }
        }
    }

    /// The guard's verdict on metadata at hand: send the row, or fail it spending nothing.
    async fn judge(&mut self, row: &Claimed, g: &Guard, cached: &CachedMetadata) -> Verdict {
        let formats = serde_json::from_str(&cached.formats).unwrap_or_default();
        match guard::check(g, &formats) {
            Ok(cost) => {
                tracing::debug!(id = row.id, ?cost, "credit guard passed");
                Verdict::Submit
            }
            Err(reason) => self.fail_guarded(row, reason).await,
        }
    }

    /// Fails a row before anything was sent for it.
    async fn fail_guarded(&mut self, row: &Claimed, reason: String) -> Verdict {
        let id = row.id;
        tracing::warn!(id, url = %log_field(&row.url), reason = %log_field(&reason), "failed by the credit guard");
        let written = self
            .persist(Write::FailGuarded {
                id,
                reason,
                keep: self.cfg.log.keep_attempts,
            })
            .await;
        if written.is_some_and(|w| w.gone()) {
            self.row_gone(id, "its failure");
        }
        Verdict::Done
    }

    /// Whether a metadata call for `row`'s URL is already under way (a submit of ours in
    /// flight, or a job running): two rows for one URL claimed together make one call.
    pub(super) async fn metadata_in_flight(&self, row: &Claimed) -> bool {
        let submitting = self.held_by.values().any(|h| {
            matches!(h, super::Held::Submit { row: r, .. }
                if r.id != row.id && r.kind == row.kind && r.url == row.url)
        });
        submitting || self.store.metadata_running(&row.url).await.unwrap_or(false)
    }

    /// Snoozes a metadata row until the call under way for its URL ends: its end wakes the
    /// row (store::WAKE_WAITERS matches the waiting text), which then completes from the
    /// cache, or calls on its own if that call failed (failures are not cached).
    pub(super) async fn wait_for_metadata(&mut self, row: &Claimed) {
        let id = row.id;
        tracing::info!(id, url = %log_field(&row.url), "metadata for this URL is already being fetched; waiting for it");
        let wait = self.cfg.poll.status_interval * WAITING_FALLBACK_POLLS;
        let fate = self
            .persist(Write::WaitForMetadata {
                id,
                wait,
                max_attempts: self.cfg.retry.max_attempts,
                keep: self.cfg.log.keep_attempts,
            })
            .await;
        if fate.is_some_and(|f| f.gone()) {
            self.row_gone(id, "its wait for metadata");
        }
    }

    async fn release_row(&mut self, id: i64) {
        self.persist(Write::Release { id }).await;
    }
}
