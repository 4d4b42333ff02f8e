//! The scheduler's persisted writes as values: each [`Write`] names one thing the scheduler
//! records, holds what it needs (owned), and knows its log text and the store verb that
//! does it. `Scheduler::persist` runs any of them with the same retries, health marks and
//! log lines, so a call site says what it writes and nothing about how.
//!
//! Why one enum with an enum output ([`Applied`]) rather than a trait with a typed output per
//! write: the writes stay plain values (built, compared in tests, retried by one loop)
//! with no boilerplate type per write, and each variant's output is fixed (documented
//! below; `tests::every_write_has_its_output` applies every variant and checks it), so a
//! caller matches the one shape its write gives.
//!
//! Due times travel as waits ([`Duration`]): the store counts them from its own clock (the
//! database's `now()` on PostgreSQL), so a retry's delay holds whatever the hosts' clocks
//! say. A write `persist` repeats after an error counts its wait again from that try.

use std::time::Duration;

use crate::limits::Scope;
use crate::store::{
    AttemptRecord, CachedMetadata, Fate, MetadataRow, Progress, Store, StoredPause, Written,
};

/// The `last_error` of a row whose submit task died without an answer.
const DEAD_SUBMIT: &str = "the submit task ended without an answer";

/// One write the scheduler persists. The comment on each variant names its output.
#[derive(Debug)]
pub(super) enum Write {
    // Rows back to `pending` untouched (`Applied::Done`).
    /// A claimed row whose request never left (the lease might have lapsed first).
    GiveBackUnsent {
        id: i64,
    },
    /// A claimed row whose preflight could not read the metadata cache: retried later.
    Release {
        id: i64,
    },

    // Rows back to `pending` with an attempt record (`Applied::Row`).
    /// A `submitting` row whose HTTP task died: its POST may have reached Importly, so it
    /// gets an ambiguous-submit record, as start-up recovery would give it.
    ReleaseDeadSubmit {
        id: i64,
        endpoint: &'static str,
        keep: u32,
    },

    // Reschedules (`Applied::Fate`).
    /// A transient failure: counted, so it may fail the row (`max_attempts`).
    Retry {
        id: i64,
        wait: Duration,
        max_attempts: u32,
        why: String,
        record: AttemptRecord,
        keep: u32,
    },
    /// Back to pending without counting an attempt (429, 401, 402); `wait` `None` keeps the
    /// row's place in the queue.
    Snooze {
        id: i64,
        wait: Option<Duration>,
        max_attempts: u32,
        why: String,
        record: AttemptRecord,
        keep: u32,
    },
    /// An import the credit guard holds until its URL's preflight metadata row ends.
    WaitForPreflight {
        id: i64,
        wait: Duration,
        max_attempts: u32,
        keep: u32,
    },
    /// A metadata row whose URL's call is already under way (ours, or another row's job).
    WaitForMetadata {
        id: i64,
        wait: Duration,
        max_attempts: u32,
        keep: u32,
    },

    // Failures (`Applied::Row`).
    /// A row failed by an answer (or its job's end), with its record and the job's data.
    Fail {
        id: i64,
        reason: String,
        result: Option<String>,
        record: AttemptRecord,
        keep: u32,
    },
    /// A row whose options cannot make a request body; nothing was sent.
    FailBadOptions {
        id: i64,
        reason: String,
        keep: u32,
    },
    /// A row the credit guard refused; nothing was sent.
    FailGuarded {
        id: i64,
        reason: String,
        keep: u32,
    },
    /// A failed status poll, in the row's attempt log; the row is unchanged.
    LogFailedPoll {
        id: i64,
        record: AttemptRecord,
        keep: u32,
    },

    /// The group commit (`Applied::Started`: the rows really started).
    RecordProgress(Progress),

    // Pauses (`Applied::Done`).
    SetPause(StoredPause),
    ClearPause(Scope),

    // Metadata.
    /// A completed metadata job: the row and the cache together (`Applied::Row`).
    CompleteMetadata {
        id: i64,
        job_id: String,
        title: Option<String>,
        duration: Option<f64>,
        formats: String,
        result: String,
    },
    /// A metadata row answered from the cache (`Applied::Done`).
    CompleteFromCache {
        id: i64,
        cached: CachedMetadata,
    },
    /// The metadata row an import's credit guard needs, unless one exists
    /// (`Applied::Metadata`).
    QueuePreflight {
        id: i64,
        url: String,
    },
}

/// What a [`Write`] gave back: the output of its store verb.
#[derive(Debug)]
pub(super) enum Applied {
    /// Nothing to tell.
    Done,
    /// Whether the row was still there.
    Row(Written),
    /// What a reschedule did to the row.
    Fate(Fate),
    /// The group's accepted rows that were started.
    Started(Vec<i64>),
    /// Where the URL's preflight metadata stands.
    Metadata(MetadataRow),
}

impl Write {
    /// What is being written, for the log and `/healthz` while it fails.
    pub(super) fn what(&self) -> &'static str {
        match self {
            Write::GiveBackUnsent { .. } => "give back a row never sent",
            Write::Release { .. } => "release row",
            Write::ReleaseDeadSubmit { .. } => "release a row whose submit died",
            Write::Retry { .. } => "reschedule row",
            Write::Snooze { .. } => "snooze row",
            Write::WaitForPreflight { .. } => "wait for preflight metadata",
            Write::WaitForMetadata { .. } => "wait for metadata in flight",
            Write::Fail { .. } => "fail row",
            Write::FailBadOptions { .. } => "fail a row with bad options",
            Write::FailGuarded { .. } => "fail row (credit guard)",
            Write::LogFailedPoll { .. } => "log a failed poll",
            Write::RecordProgress(_) => "record progress",
            Write::SetPause(_) => "store pause",
            Write::ClearPause(_) => "lift pause",
            Write::CompleteMetadata { .. } => "record metadata",
            Write::CompleteFromCache { .. } => "complete from metadata cache",
            Write::QueuePreflight { .. } => "queue preflight metadata",
        }
    }

    /// Makes the write once; `Scheduler::persist` calls it again after an error, with the
    /// same data each time.
    pub(super) async fn apply(&self, store: &Store) -> crate::store::Result<Applied> {
        Ok(match self {
            Write::GiveBackUnsent { id } | Write::Release { id } => {
                store.release(&[*id]).await?;
                Applied::Done
            }
            Write::ReleaseDeadSubmit { id, endpoint, keep } => Applied::Row(
                store
                    .release_ambiguous(*id, endpoint, DEAD_SUBMIT, *keep)
                    .await?,
            ),
            Write::Retry {
                id,
                wait,
                max_attempts,
                why,
                record,
                keep,
            } => Applied::Fate(
                store
                    .reschedule(
                        *id,
                        Some(*wait),
                        true,
                        *max_attempts,
                        why,
                        Some(record),
                        *keep,
                    )
                    .await?,
            ),
            Write::Snooze {
                id,
                wait,
                max_attempts,
                why,
                record,
                keep,
            } => Applied::Fate(
                store
                    .reschedule(*id, *wait, false, *max_attempts, why, Some(record), *keep)
                    .await?,
            ),
            Write::WaitForPreflight {
                id,
                wait,
                max_attempts,
                keep,
            }
            | Write::WaitForMetadata {
                id,
                wait,
                max_attempts,
                keep,
            } => {
                // The text marks the row as waiting (see `MetadataRow::WAITING`): the end
                // of the metadata row wakes it (store::WAKE_WAITERS).
                Applied::Fate(
                    store
                        .reschedule(
                            *id,
                            Some(*wait),
                            false,
                            *max_attempts,
                            MetadataRow::WAITING,
                            None,
                            *keep,
                        )
                        .await?,
                )
            }
            Write::Fail {
                id,
                reason,
                result,
                record,
                keep,
            } => Applied::Row(
                store
                    .fail(*id, reason, result.as_deref(), Some(record), *keep)
                    .await?,
            ),
            Write::FailBadOptions { id, reason, keep }
            | Write::FailGuarded { id, reason, keep } => {
                Applied::Row(store.fail(*id, reason, None, None, *keep).await?)
            }
            Write::LogFailedPoll { id, record, keep } => {
                Applied::Row(store.record_attempt(*id, record, *keep).await?)
            }
            Write::RecordProgress(progress) => {
                Applied::Started(store.record_progress(progress).await?)
            }
            Write::SetPause(p) => {
                store.set_pause(p).await?;
                Applied::Done
            }
            Write::ClearPause(scope) => {
                store.clear_pause(*scope).await?;
                Applied::Done
            }
            Write::CompleteMetadata {
                id,
                job_id,
                title,
                duration,
                formats,
                result,
            } => Applied::Row(
                store
                    .complete_metadata(*id, job_id, title.as_deref(), *duration, formats, result)
                    .await?,
            ),
            Write::CompleteFromCache { id, cached } => {
                Applied::Row(store.complete_from_cache(*id, cached).await?)
            }
            Write::QueuePreflight { id, url } => {
                Applied::Metadata(store.ensure_metadata_row(*id, url).await?)
            }
        })
    }
}

impl Applied {
    /// Whether a single-row write found its row gone: deleted or reset by its owner, or
    /// taken over by another daemon after this one's lease lapsed.
    pub(super) fn gone(&self) -> bool {
        matches!(
            self,
            Applied::Row(Written::Gone) | Applied::Fate(Fate::Gone)
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::SystemTime;

    use super::*;
    use crate::clock;
    use crate::importly::JobKind;
    use crate::store::EnqueueRow;

    /// Which variant `w` is. Exhaustive: a new variant does not compile until it is added
    /// here, and then `one_of_each` must build it for the tests below to pass.
    fn variant(w: &Write) -> usize {
        match w {
            Write::GiveBackUnsent { .. } => 1,
            Write::Release { .. } => 2,
            Write::ReleaseDeadSubmit { .. } => 3,
            Write::Retry { .. } => 4,
            Write::Snooze { .. } => 5,
            Write::WaitForPreflight { .. } => 6,
            Write::WaitForMetadata { .. } => 7,
            Write::Fail { .. } => 8,
            Write::FailBadOptions { .. } => 9,
            Write::FailGuarded { .. } => 10,
            Write::LogFailedPoll { .. } => 11,
            Write::RecordProgress(_) => 12,
            Write::SetPause(_) => 13,
            Write::ClearPause(_) => 14,
            Write::CompleteMetadata { .. } => 15,
            Write::CompleteFromCache { .. } => 16,
            Write::QueuePreflight { .. } => 17,
        }
    }
    const VARIANTS: usize = 17;

    fn record(attempt: i64, outcome: &str) -> AttemptRecord {
        AttemptRecord {
            attempt,
            method: "POST".into(),
            endpoint: "/import".into(),
            started_at: SystemTime::now(),
            finished_at: SystemTime::now(),
            http_status: Some(503),
            outcome: outcome.into(),
            ..AttemptRecord::default()
        }
    }

    /// Every kind of write, each aimed at row `id`.
    fn one_of_each(id: i64) -> Vec<Write> {
        let soon = Duration::from_secs(60);
        vec![
            Write::GiveBackUnsent { id },
            Write::Release { id },
            Write::ReleaseDeadSubmit {
                id,
                endpoint: "/import",
                keep: 10,
            },
            Write::Retry {
                id,
                wait: soon,
                max_attempts: 5,
                why: "HTTP 503".into(),
                record: record(1, "server_error"),
                keep: 10,
            },
            Write::Snooze {
                id,
                wait: None,
                max_attempts: 5,
                why: "rate limited".into(),
                record: record(1, "rate_limited"),
                keep: 10,
            },
            Write::WaitForPreflight {
                id,
                wait: soon,
                max_attempts: 5,
                keep: 10,
            },
            Write::WaitForMetadata {
                id,
                wait: soon,
                max_attempts: 5,
                keep: 10,
            },
            Write::Fail {
                id,
                reason: "rejected".into(),
                result: None,
                record: record(1, "bad_request"),
                keep: 10,
            },
            Write::FailBadOptions {
                id,
                reason: "bad options".into(),
                keep: 10,
            },
            Write::FailGuarded {
                id,
                reason: "too dear".into(),
                keep: 10,
            },
            Write::LogFailedPoll {
                id,
                record: record(2, "server_error"),
                keep: 10,
            },
            Write::RecordProgress(Progress::default()),
            Write::SetPause(StoredPause {
                scope: Scope::Import,
                reason: "out of credits".into(),
                http_status: Some(402),
                since: SystemTime::now(),
                next_probe: SystemTime::now(),
            }),
            Write::ClearPause(Scope::Import),
            Write::CompleteMetadata {
                id,
                job_id: "job-1".into(),
                title: Some("a title".into()),
                duration: Some(1.5),
                formats: "[]".into(),
                result: "{}".into(),
            },
            Write::CompleteFromCache {
                id,
                cached: CachedMetadata {
                    url: "https://e.example/a".into(),
                    title: None,
                    duration: None,
                    formats: "[]".into(),
                    data: "{}".into(),
                    job_id: None,
                    fetched_at: SystemTime::now(),
                },
            },
            Write::QueuePreflight {
                id,
                url: "https://e.example/a".into(),
            },
        ]
    }

    async fn store_in(dir: &tempfile::TempDir) -> Store {
        Store::open_sqlite(&dir.path().join("q.db")).await.unwrap()
    }

    /// Claims every due row of `kind` (as the scheduler does before it writes about them).
    async fn claim(store: &Store, kind: JobKind) -> Vec<i64> {
        let rows = store
            .claim_due(kind, 64, SystemTime::now(), u32::MAX)
            .await
            .unwrap();
        rows.into_iter().map(|r| r.id).collect()
    }

    #[test]
    fn each_kind_of_write_has_its_own_text() {
        let writes = one_of_each(1);
        let kinds: HashSet<usize> = writes.iter().map(variant).collect();
        assert_eq!(kinds.len(), VARIANTS, "one_of_each builds every variant");
        assert_eq!(writes.len(), VARIANTS, "and each once");
        let texts: HashSet<&str> = writes.iter().map(Write::what).collect();
        assert_eq!(texts.len(), VARIANTS, "{texts:?}");
        assert!(texts.iter().all(|t| !t.is_empty()));
    }

    /// Every variant, applied for a row its owner deleted: each gives its documented output
    /// shape, and the single-row writes say the row is gone instead of failing.
    #[tokio::test]
    async fn every_write_has_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        let missing = 4242;
        for w in one_of_each(missing) {
            let out = w.apply(&store).await.unwrap();
            let shape_ok = match variant(&w) {
                0..=2 | 13 | 14 => matches!(out, Applied::Done),
                3 | 8..=11 | 15 | 16 => matches!(out, Applied::Row(Written::Gone)),
                4..=7 => matches!(out, Applied::Fate(Fate::Gone)),
                12 => matches!(&out, Applied::Started(ids) if ids.is_empty()),
                17 => matches!(out, Applied::Metadata(MetadataRow::Queued(_))),
                _ => false,
            };
            assert!(shape_ok, "{}: {out:?}", w.what());
            assert_eq!(
                out.gone(),
                matches!(variant(&w), 3..=11 | 15 | 16),
                "{}",
                w.what()
            );
        }
        store.close().await;
    }

    /// Writes on real rows, read back: give-backs leave the row untouched, a dead submit
    /// leaves an ambiguous-submit record, a snooze counts no attempt, a retry out of
    /// attempts fails the row, and a pause is stored and lifted.
    #[tokio::test]
    async fn writes_change_the_rows_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        let rows: Vec<EnqueueRow> = ["a", "b", "c"]
            .iter()
            .map(|n| EnqueueRow {
                url: format!("https://e.example/{n}"),
                ..Default::default()
            })
            .collect();
        let ids = store.enqueue(&rows).await.unwrap();
        let (a, b, c) = (ids[0], ids[1], ids[2]);
        assert_eq!(claim(&store, JobKind::Import).await, ids);

        for id in [a, b] {
            let out = Write::GiveBackUnsent { id }.apply(&store).await.unwrap();
            assert!(matches!(out, Applied::Done));
        }
        let dead = Write::ReleaseDeadSubmit {
            id: c,
            endpoint: "/import",
            keep: 10,
        };
        assert!(matches!(
            dead.apply(&store).await.unwrap(),
            Applied::Row(Written::Row)
        ));
        for id in [a, b] {
            let r = store.row(id).await.unwrap().unwrap();
            assert_eq!((r.state.as_str(), r.attempts), ("pending", 0), "{r:?}");
            assert!(store.attempts(id).await.unwrap().is_empty());
        }
        let r = store.row(c).await.unwrap().unwrap();
        assert_eq!(r.state, "pending");
        // (The store adds that the POST may have reached Importly.)
        let why = r.last_error.unwrap_or_default();
        assert!(why.starts_with(DEAD_SUBMIT), "{why}");
        let log = store.attempts(c).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].outcome, "ambiguous_submit");

        // A snooze keeps the attempt count; a counted retry at the last attempt fails.
        assert_eq!(claim(&store, JobKind::Import).await, ids);
        let snooze = Write::Snooze {
            id: a,
            wait: None,
            max_attempts: 1,
            why: "rate limited".into(),
            record: record(1, "rate_limited"),
            keep: 10,
        };
        assert!(matches!(
            snooze.apply(&store).await.unwrap(),
            Applied::Fate(Fate::Pending)
        ));
        let r = store.row(a).await.unwrap().unwrap();
        assert_eq!(r.state, "pending");
        assert_eq!(r.attempts, 0);
        assert_eq!(r.last_error.as_deref(), Some("rate limited"));
        assert_eq!(store.attempts(a).await.unwrap()[0].outcome, "rate_limited");
        let retry = Write::Retry {
            id: b,
            wait: Duration::from_secs(3600),
            max_attempts: 1,
            why: "HTTP 503".into(),
            record: record(1, "server_error"),
            keep: 10,
        };
        assert!(matches!(
            retry.apply(&store).await.unwrap(),
            Applied::Fate(Fate::Failed)
        ));
        let r = store.row(b).await.unwrap().unwrap();
        assert_eq!((r.state.as_str(), r.attempts), ("failed", 1), "{r:?}");

        // A pause, stored and lifted (times are stored to the millisecond).
        let now = clock::from_unix_ms(clock::unix_ms(SystemTime::now()));
        let pause = StoredPause {
            scope: Scope::Import,
            reason: "out of credits".into(),
            http_status: Some(402),
            since: now,
            next_probe: now,
        };
        Write::SetPause(pause.clone()).apply(&store).await.unwrap();
        assert_eq!(store.pauses().await.unwrap(), vec![pause]);
        Write::ClearPause(Scope::Import)
            .apply(&store)
            .await
            .unwrap();
        assert!(store.pauses().await.unwrap().is_empty());
        store.close().await;
    }
}
