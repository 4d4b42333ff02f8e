//! Conformance: queue. The row lifecycle as the scheduler drives it (claim, reschedule,
//! fail, recovery, release), its group commit (`record_progress`) and the failure log
//! (`record_attempt`, `attempts`), the same on both backends. The `pg_` tests at the end
//! check what several daemons on one PostgreSQL add: a daemon writes only the rows it
//! claimed (fencing), and a row leaving `submitting`/`running` has no owner.
//!
//! Rows are inserted and read with plain SQL (as any client would), so these tests need no
//! other part of the store than the verbs under test.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use importlyd::clock;
use importlyd::importly::JobKind;
use importlyd::store::{
    AttemptRecord, DaemonInfo, Fate, Finished, Progress, Started, Store, StoredAttempt, Written,
};

use crate::{Backend, LEASE};

crate::conformance!(
    claims_oldest_due_first_and_never_twice,
    a_row_not_yet_due_is_not_claimed,
    offset_times_are_the_instants_they_name,
    concurrent_claims_get_disjoint_rows,
    a_snooze_keeps_attempts_and_a_counted_failure_fails_at_max,
    a_snooze_without_a_due_time_keeps_the_rows_place,
    fail_keeps_the_reason_and_the_result,
    a_failed_metadata_row_wakes_the_imports_waiting_on_it,
    writes_to_a_deleted_row_report_it_gone,
    record_attempt_trims_the_log_to_keep,
    recover_submitting_returns_rows_to_pending_as_ambiguous,
    a_lost_submit_goes_back_to_pending_as_ambiguous,
    release_gives_back_unsubmitted_rows,
    a_group_starts_and_finishes_rows_in_one_go_and_skips_deleted_ones,
    only_rows_still_submitting_are_started_and_returned,
    a_completed_row_forgets_its_earlier_error,
    running_lists_the_started_rows,
    a_big_group_is_one_commit,
    nul_characters_from_a_server_are_stored_not_refused,
);

crate::conformance_pg!(
    pg_claims_carry_the_owner_and_leaving_clears_it,
    pg_another_daemon_cannot_write_my_rows,
    pg_a_row_handed_to_another_daemon_is_gone_for_me,
    pg_claims_keep_the_accounts_slots_across_daemons,
);

const PAST: &str = "2020-01-01T00:00:00.000Z";
const FUTURE: &str = "2999-01-01T00:00:00.000Z";
const KEEP: u32 = 50;

/// A due time in the past, the `i`-th second of 2020: rows due in a known order.
fn due(i: u32) -> String {
    format!(
        "2020-01-01T{:02}:{:02}:{:02}.000Z",
        i / 3600,
        i / 60 % 60,
        i % 60
    )
}

/// Inserts a row as any client would and returns its id.
async fn insert(b: &Backend, kind: &str, url: &str, due: &str) -> i64 {
    b.exec(&format!(
        "INSERT INTO imports (url, kind, next_attempt_at) VALUES ('{url}', '{kind}', '{due}')"
    ))
    .await;
    b.scalar("SELECT CAST(max(id) AS BIGINT) FROM imports")
        .await
}

async fn import(b: &Backend, url: &str, due: &str) -> i64 {
    insert(b, "import", url, due).await
}

async fn state(b: &Backend, id: i64) -> String {
    b.text(&format!("SELECT state FROM imports WHERE id = {id}"))
        .await
        .unwrap_or_else(|| panic!("row {id} is gone"))
}

/// One text column of a row (`None` for NULL).
async fn column(b: &Backend, col: &str, id: i64) -> Option<String> {
    b.text(&format!(
        "SELECT CAST({col} AS TEXT) FROM imports WHERE id = {id}"
    ))
    .await
}

async fn attempts_of(b: &Backend, id: i64) -> i64 {
    b.scalar(&format!(
        "SELECT CAST(attempts AS BIGINT) FROM imports WHERE id = {id}"
    ))
    .await
}

/// How many rows match `cond`.
async fn count(b: &Backend, cond: &str) -> i64 {
    b.scalar(&format!("SELECT count(*) FROM imports WHERE {cond}"))
        .await
}

async fn claim(s: &Store, kind: JobKind, n: u32) -> Vec<i64> {
    s.claim_due(kind, n, SystemTime::now(), u32::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

fn record(attempt: i64, outcome: &str) -> AttemptRecord {
    AttemptRecord {
        attempt,
        method: "POST".into(),
        endpoint: "/import".into(),
        started_at: SystemTime::now(),
        finished_at: SystemTime::now(),
        http_status: Some(500),
        outcome: outcome.into(),
        ..AttemptRecord::default()
    }
}

fn accepted(id: i64, job: &str) -> Started {
    Started::new(
        id,
        job,
        AttemptRecord {
            attempt: 1,
            method: "POST".into(),
            endpoint: "/import".into(),
            request_body: Some(r#"{"url":"x"}"#.into()),
            started_at: instant("2026-11-25T10:00:00.000Z"),
            finished_at: instant("2026-11-25T10:00:00.100Z"),
            http_status: Some(202),
            outcome: "accepted".into(),
            response_body: Some(r#"{"jobId":"j"}"#.into()),
            body_truncated: true,
            ..AttemptRecord::default()
        },
    )
}

fn started(rows: Vec<Started>) -> Progress {
    Progress {
        started: rows,
        finished: vec![],
    }
}

fn finished(ids: &[i64]) -> Progress {
    Progress {
        started: vec![],
        finished: ids
            .iter()
            .map(|&id| Finished {
                id,
                media_url: None,
                credits_used: None,
                result: "{}".into(),
            })
            .collect(),
    }
}

fn endpoint(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Metadata => "/metadata",
        JobKind::Import => "/import",
    }
}

/// The instant canonical text `t` names.
fn instant(t: &str) -> SystemTime {
    clock::parse_iso(t).unwrap_or_else(|| panic!("not a time: {t}"))
}

fn outcomes(log: &[StoredAttempt]) -> Vec<&str> {
    log.iter().map(|a| a.outcome.as_str()).collect()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON: {s}: {e}"))
}

/// A second daemon on the same database, registered with an id of its own.
async fn another_daemon(b: &Backend) -> Store {
    let s = b.open_again().await;
    s.register_daemon(DaemonInfo::this_process(), LEASE)
        .await
        .unwrap();
    s
}

/// The id the newest registered daemon got (PostgreSQL).
async fn newest_daemon(b: &Backend) -> i64 {
    b.scalar("SELECT CAST(max(id) AS BIGINT) FROM daemons")
        .await
}

async fn claims_oldest_due_first_and_never_twice(b: Backend) {
    let s = b.as_daemon().await;
    let c = import(&b, "https://e.com/c", &due(3)).await;
    let a = import(&b, "https://e.com/a", &due(1)).await;
    let bb = import(&b, "https://e.com/b", &due(2)).await;
    let m = insert(&b, "metadata", "https://e.com/m", &due(0)).await;

    assert!(claim(s, JobKind::Import, 0).await.is_empty());
    let first = s
        .claim_due(JobKind::Import, 2, SystemTime::now(), u32::MAX)
        .await
        .unwrap();
    // The two due first, handed over in id order.
    assert_eq!(first.iter().map(|c| c.id).collect::<Vec<_>>(), vec![a, bb]);
    assert_eq!(first[0].url, "https://e.com/a");
    assert_eq!(first[0].kind, "import");
    assert_eq!(json(&first[0].options), json("{}"));
    assert_eq!(first[0].attempts, 0);
    assert_eq!(state(&b, a).await, "submitting");
    assert_eq!(state(&b, c).await, "pending");

    assert_eq!(claim(s, JobKind::Import, 2).await, vec![c]);
    assert!(claim(s, JobKind::Import, 2).await.is_empty());
    for id in [a, bb, c] {
        assert_eq!(state(&b, id).await, "submitting");
    }
    // Kinds are claimed apart.
    assert_eq!(state(&b, m).await, "pending");
    assert_eq!(claim(s, JobKind::Metadata, 5).await, vec![m]);
    assert!(claim(s, JobKind::Metadata, 5).await.is_empty());

    // A kind the schema does not know cannot be named: refused where text becomes a kind.
    assert!("video".parse::<JobKind>().is_err());
}

async fn a_row_not_yet_due_is_not_claimed(b: Backend) {
    let s = b.as_daemon().await;
    let later = import(&b, "https://e.com/later", FUTURE).await;
    assert!(claim(s, JobKind::Import, 10).await.is_empty());
    assert_eq!(state(&b, later).await, "pending");
    assert_eq!(
        s.next_due(JobKind::Import).await.unwrap(),
        Some(instant(FUTURE))
    );
    assert_eq!(s.next_due(JobKind::Metadata).await.unwrap(), None);

    // A plain INSERT is due at once, and next_due says so in the canonical form.
    b.exec("INSERT INTO imports (url) VALUES ('https://e.com/now')")
        .await;
    let now_row = b
        .scalar("SELECT CAST(max(id) AS BIGINT) FROM imports")
        .await;
    let at = s.next_due(JobKind::Import).await.unwrap().unwrap();
    let next = clock::iso(at);
    assert!(at <= SystemTime::now() + Duration::from_secs(5), "{next}");
    assert_eq!(claim(s, JobKind::Import, 10).await, vec![now_row]);

    // Made due, it is claimed.
    b.exec(&format!(
        "UPDATE imports SET next_attempt_at = '{PAST}' WHERE id = {later}"
    ))
    .await;
    assert_eq!(
        s.next_due(JobKind::Import).await.unwrap(),
        Some(instant(PAST))
    );
    assert_eq!(claim(s, JobKind::Import, 10).await, vec![later]);
    assert_eq!(s.next_due(JobKind::Import).await.unwrap(), None);
}

/// `t` written as local time at UTC`offset` hours (e.g. `+14:00`), as a user's client might.
fn with_offset(t: SystemTime, offset: i64) -> String {
    let shift = Duration::from_secs(offset.unsigned_abs() * 3600);
    let local = if offset >= 0 { t + shift } else { t - shift };
    let utc = humantime::format_rfc3339_seconds(local).to_string();
    format!("{}{offset:+03}:00", utc.trim_end_matches('Z'))
}

/// A row due an hour ago written with a +14:00 offset is claimed, one due in an hour
/// written with -12:00 is not; next_due names the latter in canonical UTC.
async fn offset_times_are_the_instants_they_name(b: Backend) {
    let s = b.as_daemon().await;
    let now = SystemTime::now();
    let past = with_offset(now - Duration::from_secs(3600), 14);
    let future = with_offset(now + Duration::from_secs(3600), -12);
    let due = import(&b, "https://e.com/due", &past).await;
    let later = import(&b, "https://e.com/later", &future).await;
    assert_eq!(
        claim(s, JobKind::Import, 10).await,
        vec![due],
        "due {past}, later {future} (row {later})"
    );
    let at = s.next_due(JobKind::Import).await.unwrap().unwrap();
    let next = clock::iso(at);
    let off = at.duration_since(now).unwrap_or_default();
    assert!(
        off > Duration::from_secs(3590) && off < Duration::from_secs(3610),
        "{future} read as {next}"
    );
}

/// Stores claiming at the same time (PostgreSQL: three daemons) never get the same row,
/// and together get them all.
async fn concurrent_claims_get_disjoint_rows(b: Backend) {
    const ROWS: u32 = 300;
    let values: Vec<String> = (0..ROWS)
        .map(|i| format!("('https://e.com/{i}', '{}')", due(i % 100)))
        .collect();
    b.exec(&format!(
        "INSERT INTO imports (url, next_attempt_at) VALUES {}",
        values.join(", ")
    ))
    .await;
    let mut stores = vec![b.as_daemon().await.clone()];
    for _ in 0..2 {
        stores.push(another_daemon(&b).await);
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(stores.len()));
    let tasks: Vec<_> = stores
        .into_iter()
        .map(|s| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let mut got = Vec::new();
                loop {
                    let ids = claim(&s, JobKind::Import, 4).await;
                    if ids.is_empty() {
                        return got;
                    }
                    got.extend(ids);
                }
            })
        })
        .collect();
    let mut all = HashSet::new();
    let mut per_store = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        for &id in &got {
            assert!(all.insert(id), "row {id} claimed twice");
        }
        per_store.push(got);
    }
    eprintln!(
        "{}: claims per store {:?}",
        b.name,
        per_store.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(all.len(), ROWS as usize);
    assert_eq!(count(&b, "state = 'submitting'").await, i64::from(ROWS));
    if b.is_postgres() {
        // Each row carries the daemon that claimed it (registered in order).
        let first = b
            .scalar("SELECT CAST(min(id) AS BIGINT) FROM daemons")
            .await;
        for (i, got) in per_store.iter().enumerate() {
            let owner = first + i as i64;
            let mine = count(&b, &format!("owner = {owner}")).await;
            assert_eq!(mine, got.len() as i64, "daemon {owner}");
        }
    }
}

async fn a_snooze_keeps_attempts_and_a_counted_failure_fails_at_max(b: Backend) {
    let s = b.as_daemon().await;
    let id = import(&b, "https://e.com/a", PAST).await;
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![id]);

    // A snooze (429, 401, 402): attempts stay, the row keeps its due time.
    let fate = s
        .reschedule(
            id,
            None,
            false,
            2,
            "rate limited",
            Some(&record(1, "rate_limited")),
            KEEP,
        )
        .await
        .unwrap();
    assert_eq!(fate, Fate::Pending);
    assert_eq!(state(&b, id).await, "pending");
    assert_eq!(attempts_of(&b, id).await, 0);
    let kept = format!("id = {id} AND next_attempt_at = '{PAST}'");
    assert_eq!(count(&b, &kept).await, 1);
    assert_eq!(
        column(&b, "last_error", id).await.as_deref(),
        Some("rate limited")
    );
    assert_eq!(column(&b, "completed_at", id).await, None);

    // A counted failure: one attempt more, due when asked (an hour from now, by the
    // database's clock), not before.
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![id]);
    let hour = Duration::from_secs(3600);
    let before = clock::iso(SystemTime::now() + hour);
    let fate = s
        .reschedule(
            id,
            Some(hour),
            true,
            2,
            "HTTP 500",
            Some(&record(1, "transient")),
            KEEP,
        )
        .await
        .unwrap();
    assert_eq!(fate, Fate::Pending);
    assert_eq!(attempts_of(&b, id).await, 1);
    let after = clock::iso(SystemTime::now() + hour);
    let moved =
        format!("id = {id} AND next_attempt_at >= '{before}' AND next_attempt_at <= '{after}'");
    assert_eq!(count(&b, &moved).await, 1, "due in an hour");
    assert!(claim(s, JobKind::Import, 1).await.is_empty());
    let next = s.next_due(JobKind::Import).await.unwrap().map(clock::iso);
    assert!(
        next.as_deref()
            .is_some_and(|n| n >= before.as_str() && n <= after.as_str()),
        "{next:?} between {before} and {after}"
    );

    // The last allowed attempt fails the row.
    b.exec(&format!(
        "UPDATE imports SET next_attempt_at = '{PAST}' WHERE id = {id}"
    ))
    .await;
    let again = s
        .claim_due(JobKind::Import, 1, SystemTime::now(), u32::MAX)
        .await
        .unwrap();
    assert_eq!(again[0].attempts, 1);
    let fate = s
        .reschedule(
            id,
            Some(hour),
            true,
            2,
            "HTTP 502",
            Some(&record(2, "transient")),
            KEEP,
        )
        .await
        .unwrap();
    assert_eq!(fate, Fate::Failed);
    assert_eq!(state(&b, id).await, "failed");
    assert_eq!(attempts_of(&b, id).await, 2);
    assert_eq!(
        column(&b, "last_error", id).await.as_deref(),
        Some("HTTP 502")
    );
    assert!(column(&b, "completed_at", id).await.is_some());
    let log = s.attempts(id).await.unwrap();
    assert_eq!(outcomes(&log), ["rate_limited", "transient", "transient"]);
    assert_eq!(log[2].attempt, 2);

    // Without a record, only the row changes.
    let other = import(&b, "https://e.com/b", PAST).await;
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![other]);
    let fate = s
        .reschedule(other, None, false, 2, "paused", None, KEEP)
        .await
        .unwrap();
    assert_eq!(fate, Fate::Pending);
    assert!(s.attempts(other).await.unwrap().is_empty());
}

/// Issue 11: a row snoozed for an account-wide reason (429, 401, 402) keeps its place:
/// rows A, B, C due in order, A snoozed, A is still claimed first.
async fn a_snooze_without_a_due_time_keeps_the_rows_place(b: Backend) {
    let s = b.as_daemon().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(import(&b, &format!("https://e.com/{i}"), &due(i + 1)).await);
    }
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![ids[0]]);
    let fate = s
        .reschedule(
            ids[0],
            None,
            false,
            8,
            "rate limited",
            Some(&record(1, "rate_limited")),
            KEEP,
        )
        .await
        .unwrap();
    assert_eq!(fate, Fate::Pending);
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![ids[0]]);
}

async fn fail_keeps_the_reason_and_the_result(b: Backend) {
    let s = b.as_daemon().await;
    let a = import(&b, "https://e.com/a", &due(1)).await;
    let r = import(&b, "https://e.com/r", &due(2)).await;
    assert_eq!(claim(s, JobKind::Import, 2).await, vec![a, r]);

    // A submitting row (400 on submit).
    let written = s
        .fail(
            a,
            "bad request (HTTP 400)",
            None,
            Some(&record(1, "rejected")),
            KEEP,
        )
        .await
        .unwrap();
    assert_eq!(written, Written::Row);
    assert_eq!(state(&b, a).await, "failed");
    assert_eq!(
        column(&b, "last_error", a).await.as_deref(),
        Some("bad request (HTTP 400)")
    );
    assert!(column(&b, "completed_at", a).await.is_some());
    assert_eq!(column(&b, "result", a).await, None);
    assert_eq!(outcomes(&s.attempts(a).await.unwrap()), ["rejected"]);

    // A running row whose job failed at Importly keeps the job's data.
    assert_eq!(
        s.record_progress(&started(vec![accepted(r, "job-r")]))
            .await
            .unwrap(),
        vec![r]
    );
    let data = r#"{"status":"failed","error":"boom"}"#;
    let written = s
        .fail(
            r,
            "import job failed at Importly: boom",
            Some(data),
            Some(&record(1, "job_failed")),
            KEEP,
        )
        .await
        .unwrap();
    assert_eq!(written, Written::Row);
    assert_eq!(state(&b, r).await, "failed");
    assert_eq!(json(&column(&b, "result", r).await.unwrap()), json(data));
    assert_eq!(
        outcomes(&s.attempts(r).await.unwrap()),
        ["accepted", "job_failed"]
    );
    // The job id stays, for the ticket.
    assert_eq!(
        column(&b, "importly_job_id", r).await.as_deref(),
        Some("job-r")
    );
}

/// A metadata row that fails decides the preflight of the imports waiting on its URL: they
/// are due at once, in the same transaction.
async fn a_failed_metadata_row_wakes_the_imports_waiting_on_it(b: Backend) {
    let s = b.as_daemon().await;
    let m = insert(&b, "metadata", "https://e.com/v", PAST).await;
    for url in ["https://e.com/v", "https://e.com/other"] {
        b.exec(&format!(
            "INSERT INTO imports (url, next_attempt_at, last_error) \
             VALUES ('{url}', '{FUTURE}', 'waiting for preflight metadata')"
        ))
        .await;
    }
    let waiting = b
        .scalar("SELECT CAST(min(id) AS BIGINT) FROM imports WHERE kind = 'import'")
        .await;
    assert!(claim(s, JobKind::Import, 10).await.is_empty());
    assert_eq!(claim(s, JobKind::Metadata, 1).await, vec![m]);
    let written = s
        .fail(m, "metadata job failed", None, None, KEEP)
        .await
        .unwrap();
    assert_eq!(written, Written::Row);
    assert_eq!(claim(s, JobKind::Import, 10).await, vec![waiting]);
}

/// Issue 11: its owner deletes a row while its request is in flight. Every single-row
/// write then reports the row gone; none fails on the attempt log's foreign key (which
/// the scheduler would retry forever).
async fn writes_to_a_deleted_row_report_it_gone(b: Backend) {
    let s = b.as_daemon().await;
    let id = import(&b, "https://e.com/a", PAST).await;
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![id]);
    b.exec(&format!("DELETE FROM imports WHERE id = {id}"))
        .await;
    let r = record(1, "transient");
    for count in [true, false] {
        let fate = s
            .reschedule(id, Some(Duration::ZERO), count, 8, "x", Some(&r), KEEP)
            .await
            .unwrap();
        assert_eq!(fate, Fate::Gone);
    }
    let fate = s.reschedule(id, None, false, 8, "x", None, KEEP).await;
    assert_eq!(fate.unwrap(), Fate::Gone);
    assert_eq!(
        s.fail(id, "x", None, Some(&r), KEEP).await.unwrap(),
        Written::Gone
    );
    assert_eq!(
        s.fail(id, "x", None, None, KEEP).await.unwrap(),
        Written::Gone
    );
    assert_eq!(s.record_attempt(id, &r, KEEP).await.unwrap(), Written::Gone);
    assert_eq!(
        s.complete_metadata(id, "job", None, None, "[]", "{}")
            .await
            .unwrap(),
        Written::Gone
    );
    let released = s.release_ambiguous(id, "/import", "x", KEEP).await;
    assert_eq!(released.unwrap(), Written::Gone);
    s.release(&[id]).await.unwrap();
    assert!(
        s.record_progress(&started(vec![accepted(id, "job")]))
            .await
            .unwrap()
            .is_empty()
    );
    s.record_progress(&finished(&[id])).await.unwrap();
    assert!(s.attempts(id).await.unwrap().is_empty());
    assert_eq!(count(&b, "1 = 1").await, 0);
}

/// The log keeps the newest `keep` failure records of a row; accepted submits are kept
/// whatever the count. A record reads back as written.
async fn record_attempt_trims_the_log_to_keep(b: Backend) {
    let s = b.as_daemon().await;
    let id = import(&b, "https://e.com/a", PAST).await;
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![id]);
    assert_eq!(
        s.record_progress(&started(vec![accepted(id, "job-1")]))
            .await
            .unwrap(),
        vec![id]
    );
    let full = AttemptRecord {
        attempt: 0,
        method: "GET".into(),
        endpoint: "/import/job-1".into(),
        request_body: None,
        started_at: instant("2026-11-25T10:00:01.250Z"),
        finished_at: instant("2026-11-25T10:00:02.500Z"),
        http_status: Some(503),
        error: Some("upstream unavailable".into()),
        outcome: "transient".into(),
        rate_limit: Some(r#"{"X-RateLimit-Limit":"3600","Retry-After":"5"}"#.into()),
        response_body: Some("<html>busy</html>".into()),
        body_truncated: true,
        job_id: Some("job-1".into()),
    };
    for attempt in 1..=5 {
        let r = AttemptRecord {
            attempt,
            ..full.clone()
        };
        assert_eq!(s.record_attempt(id, &r, 3).await.unwrap(), Written::Row);
    }
    let log = s.attempts(id).await.unwrap();
    assert_eq!(
        outcomes(&log),
        ["accepted", "transient", "transient", "transient"]
    );
    let kept: Vec<i64> = log[1..].iter().map(|a| a.attempt).collect();
    assert_eq!(kept, [3, 4, 5]);
    assert!(log.windows(2).all(|w| w[0].id < w[1].id), "oldest first");

    let last = &log[3];
    assert_eq!(last.import_id, id);
    assert_eq!(last.method, "GET");
    assert_eq!(last.endpoint, "/import/job-1");
    assert_eq!(last.request_body, None);
    assert_eq!(clock::iso(last.started_at), "2026-11-25T10:00:01.250Z");
    assert_eq!(clock::iso(last.finished_at), "2026-11-25T10:00:02.500Z");
    assert_eq!(last.http_status, Some(503));
    assert_eq!(last.error.as_deref(), Some("upstream unavailable"));
    assert_eq!(
        json(last.rate_limit.as_deref().unwrap()),
        json(full.rate_limit.as_deref().unwrap())
    );
    assert_eq!(last.response_body.as_deref(), Some("<html>busy</html>"));
    assert!(last.body_truncated);
    assert_eq!(last.job_id.as_deref(), Some("job-1"));
    assert_eq!(last.daemon_version, env!("CARGO_PKG_VERSION"));
    // The accepted record is the submit's exchange, as the group commit wrote it.
    let first = &log[0];
    assert_eq!(first.http_status, Some(202));
    assert_eq!(first.request_body.as_deref(), Some(r#"{"url":"x"}"#));
    assert_eq!(clock::iso(first.started_at), "2026-11-25T10:00:00.000Z");
    assert_eq!(clock::iso(first.finished_at), "2026-11-25T10:00:00.100Z");
    assert_eq!(first.rate_limit, None);
    assert_eq!(first.error, None);

    // A record changes nothing about the row.
    assert_eq!(state(&b, id).await, "running");
    assert_eq!(attempts_of(&b, id).await, 0);
}

async fn recover_submitting_returns_rows_to_pending_as_ambiguous(b: Backend) {
    let s = b.as_daemon().await;
    let a = import(&b, "https://e.com/a", &due(1)).await;
    let r = import(&b, "https://e.com/r", &due(2)).await;
    let m = insert(&b, "metadata", "https://e.com/m", &due(3)).await;
    assert_eq!(claim(s, JobKind::Import, 2).await, vec![a, r]);
    assert_eq!(claim(s, JobKind::Metadata, 1).await, vec![m]);
    assert_eq!(
        s.record_progress(&started(vec![accepted(r, "job-r")]))
            .await
            .unwrap(),
        vec![r]
    );
    b.exec(&format!("UPDATE imports SET attempts = 2 WHERE id = {a}"))
        .await;

    let mut recovered = s.recover_submitting(KEEP, endpoint).await.unwrap();
    recovered.sort_unstable();
    assert_eq!(recovered, vec![a, m]);
    for id in [a, m] {
        assert_eq!(state(&b, id).await, "pending");
        assert_eq!(
            column(&b, "last_error", id).await.as_deref(),
            Some("daemon stopped during submit; the POST may have reached Importly")
        );
    }
    // The running row is left to be polled.
    assert_eq!(state(&b, r).await, "running");
    assert_eq!(column(&b, "last_error", r).await, None);

    let log = s.attempts(a).await.unwrap();
    assert_eq!(outcomes(&log), ["ambiguous_submit"]);
    assert_eq!(log[0].attempt, 3);
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].endpoint, "/import");
    assert!(log[0].error.as_deref().unwrap().contains("daemon stopped"));
    // Stored as the canonical text: whole milliseconds.
    let at = log[0].started_at;
    assert_eq!(clock::parse_iso(&clock::iso(at)), Some(at));
    let log = s.attempts(m).await.unwrap();
    assert_eq!(outcomes(&log), ["ambiguous_submit"]);
    assert_eq!(log[0].endpoint, "/metadata");
    assert_eq!(log[0].attempt, 1);

    // Nothing left to recover; the rows are due at once.
    assert!(
        s.recover_submitting(KEEP, endpoint)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(claim(s, JobKind::Import, 5).await, vec![a]);
    assert_eq!(claim(s, JobKind::Metadata, 5).await, vec![m]);
    assert_eq!(
        attempts_of(&b, a).await,
        2,
        "an ambiguous submit does not count"
    );
}

/// Issue 11: a submit whose task died goes back to pending with an ambiguous-submit
/// record, like start-up recovery does for every such row.
async fn a_lost_submit_goes_back_to_pending_as_ambiguous(b: Backend) {
    let s = b.as_daemon().await;
    let id = import(&b, "https://e.com/a", PAST).await;
    let other = import(&b, "https://e.com/b", &due(1)).await;
    assert_eq!(claim(s, JobKind::Import, 2).await, vec![id, other]);
    let released = s
        .release_ambiguous(id, "/import", "the submit task panicked", KEEP)
        .await
        .unwrap();
    assert_eq!(released, Written::Row);
    assert_eq!(state(&b, id).await, "pending");
    assert_eq!(
        column(&b, "last_error", id).await.as_deref(),
        Some("the submit task panicked; the POST may have reached Importly")
    );
    let log = s.attempts(id).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].outcome, "ambiguous_submit");
    assert_eq!(log[0].attempt, 1);
    assert_eq!(log[0].error.as_deref(), Some("the submit task panicked"));
    // Only that row; it is due again at once.
    assert_eq!(state(&b, other).await, "submitting");
    assert_eq!(claim(s, JobKind::Import, 5).await, vec![id]);
}

async fn release_gives_back_unsubmitted_rows(b: Backend) {
    let s = b.as_daemon().await;
    let ids = [
        import(&b, "https://e.com/a", &due(1)).await,
        import(&b, "https://e.com/b", &due(2)).await,
        import(&b, "https://e.com/c", &due(3)).await,
    ];
    assert_eq!(claim(s, JobKind::Import, 3).await, ids.to_vec());
    s.release(&[]).await.unwrap();
    s.release(&ids[..2]).await.unwrap();
    assert_eq!(state(&b, ids[0]).await, "pending");
    assert_eq!(state(&b, ids[1]).await, "pending");
    assert_eq!(state(&b, ids[2]).await, "submitting");
    for id in ids {
        assert!(s.attempts(id).await.unwrap().is_empty());
        assert_eq!(attempts_of(&b, id).await, 0);
    }
    // A row already running is not released.
    assert_eq!(
        s.record_progress(&started(vec![accepted(ids[2], "job-c")]))
            .await
            .unwrap(),
        vec![ids[2]]
    );
    s.release(&[ids[2]]).await.unwrap();
    assert_eq!(state(&b, ids[2]).await, "running");
    assert_eq!(claim(s, JobKind::Import, 5).await, ids[..2].to_vec());
}

async fn a_group_starts_and_finishes_rows_in_one_go_and_skips_deleted_ones(b: Backend) {
    let s = b.as_daemon().await;
    let a = import(&b, "https://e.com/a", &due(1)).await;
    let bb = import(&b, "https://e.com/b", &due(2)).await;
    let gone = import(&b, "https://e.com/gone", &due(3)).await;
    assert_eq!(claim(s, JobKind::Import, 3).await.len(), 3);
    // Its owner deletes a row while its submit is in flight.
    b.exec(&format!("DELETE FROM imports WHERE id = {gone}"))
        .await;

    let first = started(vec![
        accepted(a, "job-a"),
        accepted(bb, "job-b"),
        accepted(gone, "job-x"),
    ]);
    assert_eq!(s.record_progress(&first).await.unwrap(), vec![a, bb]);
    // A retry of the same group (its COMMIT reported failed but reached the log).
    assert_eq!(s.record_progress(&first).await.unwrap(), vec![a, bb]);
    assert_eq!(state(&b, a).await, "running");
    assert_eq!(
        column(&b, "importly_job_id", a).await.as_deref(),
        Some("job-a")
    );
    let log = s.attempts(a).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].http_status, Some(202));
    assert!(log[0].body_truncated);
    assert_eq!(log[0].job_id.as_deref(), Some("job-a"));
    assert_eq!(log[0].request_body.as_deref(), Some(r#"{"url":"x"}"#));
    assert_eq!(log[0].response_body.as_deref(), Some(r#"{"jobId":"j"}"#));
    assert!(s.attempts(gone).await.unwrap().is_empty());

    let second = Progress {
        started: vec![],
        finished: vec![
            Finished {
                id: a,
                media_url: Some("https://cdn/a.mp4".into()),
                credits_used: Some(3),
                result: r#"{"mediaUrl":"https://cdn/a.mp4"}"#.into(),
            },
            Finished {
                id: bb,
                media_url: None,
                credits_used: None,
                result: "{}".into(),
            },
            Finished {
                id: gone,
                media_url: None,
                credits_used: None,
                result: "{}".into(),
            },
        ],
    };
    assert!(s.record_progress(&second).await.unwrap().is_empty());
    assert_eq!(state(&b, a).await, "completed");
    assert_eq!(
        column(&b, "media_url", a).await.as_deref(),
        Some("https://cdn/a.mp4")
    );
    assert_eq!(
        b.scalar(&format!(
            "SELECT CAST(credits_used AS BIGINT) FROM imports WHERE id = {a}"
        ))
        .await,
        3
    );
    assert_eq!(
        json(&column(&b, "result", a).await.unwrap()),
        json(r#"{"mediaUrl":"https://cdn/a.mp4"}"#)
    );
    assert!(column(&b, "completed_at", a).await.is_some());
    assert_eq!(state(&b, bb).await, "completed");
    assert_eq!(column(&b, "media_url", bb).await, None);
    assert_eq!(column(&b, "credits_used", bb).await, None);

    // Both lists in one group: the start and the finish of different rows, at once.
    let c = import(&b, "https://e.com/c", &due(4)).await;
    let d = import(&b, "https://e.com/d", &due(5)).await;
    assert_eq!(claim(s, JobKind::Import, 2).await, vec![c, d]);
    assert_eq!(
        s.record_progress(&started(vec![accepted(c, "job-c")]))
            .await
            .unwrap(),
        vec![c]
    );
    let both = Progress {
        started: vec![accepted(d, "job-d")],
        finished: finished(&[c]).finished,
    };
    assert_eq!(s.record_progress(&both).await.unwrap(), vec![d]);
    assert_eq!(state(&b, c).await, "completed");
    assert_eq!(state(&b, d).await, "running");
    // An empty group changes nothing.
    assert!(
        s.record_progress(&Progress::default())
            .await
            .unwrap()
            .is_empty()
    );
}

/// Issue 11: a row reset or cancelled while its submit was in flight must not become
/// `running` with the stale job, and the scheduler must not poll that job.
async fn only_rows_still_submitting_are_started_and_returned(b: Backend) {
    let s = b.as_daemon().await;
    let a = import(&b, "https://e.com/a", &due(1)).await;
    let reset = import(&b, "https://e.com/reset", &due(2)).await;
    let cancelled = import(&b, "https://e.com/cancelled", &due(3)).await;
    assert_eq!(claim(s, JobKind::Import, 3).await.len(), 3);
    // An operator resets one row and cancels another while their submits are in flight.
    for (id, st) in [(reset, "pending"), (cancelled, "cancelled")] {
        b.exec(&format!(
            "UPDATE imports SET state = '{st}' WHERE id = {id}"
        ))
        .await;
    }
    let group = started(vec![
        accepted(a, "job-a"),
        accepted(reset, "job-r"),
        accepted(cancelled, "job-c"),
    ]);
    assert_eq!(s.record_progress(&group).await.unwrap(), vec![a]);
    // A retry of the same group still reports the row it started.
    assert_eq!(s.record_progress(&group).await.unwrap(), vec![a]);
    for (id, st) in [(reset, "pending"), (cancelled, "cancelled")] {
        assert_eq!(state(&b, id).await, st);
        assert_eq!(column(&b, "importly_job_id", id).await, None);
        // The orphaned job stays named in the row's log, for the ticket.
        let log = s.attempts(id).await.unwrap();
        assert_eq!(outcomes(&log), ["accepted"]);
    }
    // A finish for a row that is not running changes nothing.
    s.record_progress(&finished(&[reset, cancelled]))
        .await
        .unwrap();
    assert_eq!(state(&b, reset).await, "pending");
    assert_eq!(state(&b, cancelled).await, "cancelled");
}

/// Issue 11: a row that completes after an earlier failure (a 401 before the key was
/// fixed) no longer shows that failure as its last error; a row that waited for preflight
/// metadata loses that text as soon as it starts.
async fn a_completed_row_forgets_its_earlier_error(b: Backend) {
    let s = b.as_daemon().await;
    let a = import(&b, "https://e.com/a", &due(1)).await;
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![a]);
    let fate = s
        .reschedule(a, None, false, 8, "API key rejected (HTTP 401)", None, KEEP)
        .await
        .unwrap();
    assert_eq!(fate, Fate::Pending);
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![a]);
    assert_eq!(
        s.record_progress(&started(vec![accepted(a, "job-a")]))
            .await
            .unwrap(),
        vec![a]
    );
    // Running, the earlier failure still shows (the job may yet fail).
    assert_eq!(
        column(&b, "last_error", a).await.as_deref(),
        Some("API key rejected (HTTP 401)")
    );
    s.record_progress(&finished(&[a])).await.unwrap();
    assert_eq!(state(&b, a).await, "completed");
    assert_eq!(column(&b, "last_error", a).await, None);

    let w = import(&b, "https://e.com/w", &due(2)).await;
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![w]);
    let fate = s
        .reschedule(
            w,
            None,
            false,
            8,
            "waiting for preflight metadata",
            None,
            KEEP,
        )
        .await
        .unwrap();
    assert_eq!(fate, Fate::Pending);
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![w]);
    assert_eq!(
        s.record_progress(&started(vec![accepted(w, "job-w")]))
            .await
            .unwrap(),
        vec![w]
    );
    assert_eq!(column(&b, "last_error", w).await, None);

    // The same for a metadata row, completed by its own statement.
    let m = insert(&b, "metadata", "https://e.com/m", &due(3)).await;
    assert_eq!(claim(s, JobKind::Metadata, 1).await, vec![m]);
    let fate = s
        .reschedule(m, None, false, 8, "API key rejected (HTTP 401)", None, KEEP)
        .await
        .unwrap();
    assert_eq!(fate, Fate::Pending);
    assert_eq!(claim(s, JobKind::Metadata, 1).await, vec![m]);
    assert_eq!(
        s.record_progress(&started(vec![accepted(m, "job-m")]))
            .await
            .unwrap(),
        vec![m]
    );
    assert_eq!(
        s.complete_metadata(m, "job-m", None, None, "[]", "{}")
            .await
            .unwrap(),
        Written::Row
    );
    assert_eq!(state(&b, m).await, "completed");
    assert_eq!(column(&b, "last_error", m).await, None);
}

async fn running_lists_the_started_rows(b: Backend) {
    let s = b.as_daemon().await;
    let a = import(&b, "https://e.com/a", &due(1)).await;
    let c = import(&b, "https://e.com/c", &due(2)).await;
    let sub = import(&b, "https://e.com/s", &due(3)).await;
    let m = insert(&b, "metadata", "https://e.com/m", &due(4)).await;
    assert_eq!(claim(s, JobKind::Import, 3).await, vec![a, c, sub]);
    assert_eq!(claim(s, JobKind::Metadata, 1).await, vec![m]);
    assert!(s.running().await.unwrap().is_empty());
    b.exec(&format!("UPDATE imports SET attempts = 1 WHERE id = {c}"))
        .await;
    let group = started(vec![
        accepted(c, "job-c"),
        accepted(m, "job-m"),
        accepted(a, "job-a"),
    ]);
    assert_eq!(s.record_progress(&group).await.unwrap(), vec![a, c, m]);
    let running = s.running().await.unwrap();
    let seen: Vec<(i64, &str, &str, i64)> = running
        .iter()
        .map(|r| {
            (
                r.id,
                r.kind.as_str(),
                r.importly_job_id.as_str(),
                r.attempts,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (a, "import", "job-a", 0),
            (c, "import", "job-c", 1),
            (m, "metadata", "job-m", 0)
        ]
    );
    s.record_progress(&finished(&[a])).await.unwrap();
    let ids: Vec<i64> = s.running().await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![c, m]);
}

/// The group commit's point: a group of thousands is one commit of a few statements, not a
/// statement per row (PostgreSQL: a busy daemon's main write path, some 2,000 rows/s). The
/// times are printed for the record; the bound only catches a plan gone wild. SQLite gets a
/// smaller group: its `UPDATE ... FROM json_each` visits the group once per `submitting`
/// row, quadratic when thousands are submitting at once (a daemon has a handful).
async fn a_big_group_is_one_commit(b: Backend) {
    let rows: i64 = if b.is_postgres() { 2000 } else { 200 };
    let s = b.as_daemon().await;
    let values: Vec<String> = (0..rows)
        .map(|i| format!("('https://e.com/{i}', '{PAST}')"))
        .collect();
    b.exec(&format!(
        "INSERT INTO imports (url, next_attempt_at) VALUES {}",
        values.join(", ")
    ))
    .await;
    let ids = claim(s, JobKind::Import, rows as u32).await;
    assert_eq!(ids.len() as i64, rows);
    let group = started(
        ids.iter()
            .map(|&id| accepted(id, &format!("job-{id}")))
            .collect(),
    );
    let t = std::time::Instant::now();
    assert_eq!(s.record_progress(&group).await.unwrap(), ids);
    let start = t.elapsed();
    let t = std::time::Instant::now();
    s.record_progress(&finished(&ids)).await.unwrap();
    let finish = t.elapsed();
    eprintln!(
        "{}: {rows} rows started in {start:?}, finished in {finish:?}",
        b.name
    );
    assert_eq!(count(&b, "state = 'completed'").await, rows);
    let logged = b
        .scalar("SELECT count(*) FROM import_attempts WHERE outcome = 'accepted'")
        .await;
    assert_eq!(logged, rows);
    assert!(
        start + finish < Duration::from_secs(10),
        "{start:?} + {finish:?}"
    );
}

/// A server's text may hold NUL characters (a body is decoded lossily, NULs and all).
/// SQLite stores them; PostgreSQL refuses them in `text` and `\u0000` in `jsonb`, so there
/// they become U+FFFD. Either way the write succeeds: refused, it would be retried forever.
async fn nul_characters_from_a_server_are_stored_not_refused(b: Backend) {
    let s = b.as_daemon().await;
    // What was stored, with PostgreSQL's replacement character read back as the NUL.
    let unnul = |t: &str| t.replace('\u{FFFD}', "\0");
    let nul_json = r#"{"X-Rate\u0000":"1\u0000","n":[1,"\u0000"]}"#;
    let a = import(&b, "https://e.com/a", &due(1)).await;
    let f = import(&b, "https://e.com/f", &due(2)).await;
    assert_eq!(claim(s, JobKind::Import, 2).await, vec![a, f]);

    let r = AttemptRecord {
        error: Some("reset\0by peer".into()),
        response_body: Some("<html>\0\0</html>".into()),
        rate_limit: Some(nul_json.into()),
        request_body: Some("{\"url\":\"x\0\"}".into()),
        ..record(1, "transient")
    };
    let fate = s
        .reschedule(a, None, true, 8, "HTTP 500: a\0b", Some(&r), KEEP)
        .await
        .unwrap();
    assert_eq!(fate, Fate::Pending);
    assert_eq!(
        unnul(&column(&b, "last_error", a).await.unwrap()),
        "HTTP 500: a\0b"
    );
    let log = s.attempts(a).await.unwrap();
    assert_eq!(unnul(log[0].error.as_deref().unwrap()), "reset\0by peer");
    assert_eq!(
        unnul(log[0].response_body.as_deref().unwrap()),
        "<html>\0\0</html>"
    );
    assert_eq!(
        unnul(log[0].request_body.as_deref().unwrap()),
        "{\"url\":\"x\0\"}"
    );
    let rate = json(log[0].rate_limit.as_deref().unwrap());
    assert_eq!(unnul(rate["n"][1].as_str().unwrap()), "\0");

    // The group commit, both lists.
    assert_eq!(claim(s, JobKind::Import, 1).await, vec![a]);
    let start = Started::new(
        a,
        "job-a",
        AttemptRecord {
            response_body: Some("{\"jobId\":\"job-a\"}\0".into()),
            rate_limit: Some(nul_json.into()),
            ..record(1, "accepted")
        },
    );
    assert_eq!(
        s.record_progress(&started(vec![start])).await.unwrap(),
        vec![a]
    );
    let done = Progress {
        started: vec![],
        finished: vec![Finished {
            id: a,
            media_url: Some("https://cdn/\0.mp4".into()),
            credits_used: Some(1),
            result: r#"{"mediaUrl":"https://cdn/\u0000.mp4","k\u0000":null}"#.into(),
        }],
    };
    s.record_progress(&done).await.unwrap();
    assert_eq!(state(&b, a).await, "completed");
    let result = json(&column(&b, "result", a).await.unwrap());
    assert_eq!(
        unnul(result["mediaUrl"].as_str().unwrap()),
        "https://cdn/\0.mp4"
    );
    assert_eq!(
        unnul(&column(&b, "media_url", a).await.unwrap()),
        "https://cdn/\0.mp4"
    );
    let log = s.attempts(a).await.unwrap();
    assert_eq!(
        unnul(log[1].response_body.as_deref().unwrap()),
        "{\"jobId\":\"job-a\"}\0"
    );

    // A failure with Importly's data.
    let written = s
        .fail(
            f,
            "job failed: \0",
            Some(r#"{"error":"\u0000"}"#),
            Some(&r),
            KEEP,
        )
        .await
        .unwrap();
    assert_eq!(written, Written::Row);
    assert_eq!(state(&b, f).await, "failed");
    let result = json(&column(&b, "result", f).await.unwrap());
    assert_eq!(unnul(result["error"].as_str().unwrap()), "\0");
}

/// PostgreSQL: a claim names its daemon and when; every way out of `submitting`/`running`
/// clears the owner.
async fn pg_claims_carry_the_owner_and_leaving_clears_it(b: Backend) {
    let s = b.as_daemon().await;
    let me = newest_daemon(&b).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(import(&b, &format!("https://e.com/{i}"), &due(i + 1)).await);
    }
    assert_eq!(claim(s, JobKind::Import, 8).await, ids);
    let held = format!("owner = {me} AND claimed_at IS NOT NULL AND state = 'submitting'");
    assert_eq!(count(&b, &held).await, 8);

    let unowned = |id: i64| format!("id = {id} AND owner IS NULL");
    let r = record(1, "transient");
    assert_eq!(
        s.reschedule(ids[0], None, false, 8, "429", Some(&r), KEEP)
            .await
            .unwrap(),
        Fate::Pending
    );
    assert_eq!(
        s.reschedule(ids[1], None, true, 1, "500", Some(&r), KEEP)
            .await
            .unwrap(),
        Fate::Failed
    );
    assert_eq!(
        s.fail(ids[2], "400", None, Some(&r), KEEP).await.unwrap(),
        Written::Row
    );
    s.release(&[ids[3]]).await.unwrap();
    assert_eq!(
        s.release_ambiguous(ids[4], "/import", "x", KEEP)
            .await
            .unwrap(),
        Written::Row
    );
    assert_eq!(
        s.recover_submitting(KEEP, endpoint).await.unwrap(),
        ids[5..].to_vec()
    );
    for &id in &ids[..6] {
        assert_eq!(count(&b, &unowned(id)).await, 1, "row {id}");
    }
    for &id in &ids[6..] {
        assert_eq!(state(&b, id).await, "pending");
    }

    // Running, still ours; completed or failed, nobody's.
    let (x, y) = (ids[6], ids[7]);
    b.exec(&format!(
        "UPDATE imports SET state = 'cancelled' WHERE state = 'pending' AND id NOT IN ({x}, {y})"
    ))
    .await;
    assert_eq!(claim(s, JobKind::Import, 5).await, vec![x, y]);
    assert_eq!(
        s.record_progress(&started(vec![accepted(x, "job-x"), accepted(y, "job-y")]))
            .await
            .unwrap(),
        vec![x, y]
    );
    assert_eq!(
        count(&b, &format!("owner = {me} AND state = 'running'")).await,
        2
    );
    s.record_progress(&finished(&[x])).await.unwrap();
    assert_eq!(
        s.fail(y, "job failed", Some("{}"), None, KEEP)
            .await
            .unwrap(),
        Written::Row
    );
    assert_eq!(count(&b, "owner IS NOT NULL").await, 0);
}

/// PostgreSQL: daemon A's claimed rows are A's alone. Another daemon (or an operator
/// command's store) can neither change them nor see them as its own to recover or poll.
async fn pg_another_daemon_cannot_write_my_rows(b: Backend) {
    let a = b.as_daemon().await;
    let a_id = newest_daemon(&b).await;
    let other = another_daemon(&b).await;
    let operator = b.open_again().await;
    let ids = [
        import(&b, "https://e.com/1", &due(1)).await,
        import(&b, "https://e.com/2", &due(2)).await,
        import(&b, "https://e.com/3", &due(3)).await,
    ];
    let [r1, r2, r3] = ids;
    assert_eq!(claim(a, JobKind::Import, 3).await, ids.to_vec());
    assert!(claim(&other, JobKind::Import, 3).await.is_empty());

    let r = record(1, "transient");
    for s in [&other, &operator] {
        assert_eq!(
            s.reschedule(r1, None, false, 8, "x", Some(&r), KEEP)
                .await
                .unwrap(),
            Fate::Gone
        );
        assert_eq!(
            s.reschedule(r1, Some(Duration::ZERO), true, 1, "x", None, KEEP)
                .await
                .unwrap(),
            Fate::Gone
        );
        assert_eq!(
            s.fail(r1, "x", None, Some(&r), KEEP).await.unwrap(),
            Written::Gone
        );
        assert_eq!(
            s.fail(r1, "x", None, None, KEEP).await.unwrap(),
            Written::Gone
        );
        assert_eq!(s.record_attempt(r1, &r, KEEP).await.unwrap(), Written::Gone);
        assert_eq!(
            s.release_ambiguous(r1, "/import", "x", KEEP).await.unwrap(),
            Written::Gone
        );
        s.release(&ids).await.unwrap();
        assert!(
            s.recover_submitting(KEEP, endpoint)
                .await
                .unwrap()
                .is_empty()
        );
    }
    let mine =
        format!("owner = {a_id} AND state = 'submitting' AND attempts = 0 AND last_error IS NULL");
    assert_eq!(count(&b, &mine).await, 3);
    assert!(a.attempts(r1).await.unwrap().is_empty());

    // Another daemon's accepted submit does not start A's row; the job it names is logged
    // all the same (it exists at Importly, the ticket must show it).
    assert!(
        other
            .record_progress(&started(vec![accepted(r1, "job-other")]))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(state(&b, r1).await, "submitting");
    assert_eq!(outcomes(&a.attempts(r1).await.unwrap()), ["accepted"]);

    let group = started(vec![accepted(r1, "job-1"), accepted(r2, "job-2")]);
    assert_eq!(a.record_progress(&group).await.unwrap(), vec![r1, r2]);
    assert_eq!(
        column(&b, "importly_job_id", r1).await.as_deref(),
        Some("job-1")
    );
    assert!(other.running().await.unwrap().is_empty());
    assert!(operator.running().await.unwrap().is_empty());
    let polled: Vec<i64> = a.running().await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(polled, vec![r1, r2]);

    // Running rows: not finished, failed or logged by the other daemon either.
    other.record_progress(&finished(&[r1])).await.unwrap();
    assert_eq!(state(&b, r1).await, "running");
    assert_eq!(
        other.fail(r2, "x", None, Some(&r), KEEP).await.unwrap(),
        Written::Gone
    );
    assert_eq!(
        other.record_attempt(r2, &r, KEEP).await.unwrap(),
        Written::Gone
    );
    assert_eq!(state(&b, r2).await, "running");
    assert_eq!(outcomes(&a.attempts(r2).await.unwrap()), ["accepted"]);

    // A itself can.
    a.record_progress(&finished(&[r1])).await.unwrap();
    assert_eq!(state(&b, r1).await, "completed");
    assert_eq!(
        a.fail(r2, "job failed", None, None, KEEP).await.unwrap(),
        Written::Row
    );
    assert_eq!(state(&b, r2).await, "failed");
    assert_eq!(
        a.recover_submitting(KEEP, endpoint).await.unwrap(),
        vec![r3]
    );
}

/// PostgreSQL: when A's lease lapsed, its `submitting` row went back to `pending` (and was
/// claimed by B) and its `running` row was adopted by B. A, back from a freeze, finds both
/// gone: it writes nothing to them.
async fn pg_a_row_handed_to_another_daemon_is_gone_for_me(b: Backend) {
    let a = b.as_daemon().await;
    let other = another_daemon(&b).await;
    let other_id = newest_daemon(&b).await;
    let sub = import(&b, "https://e.com/sub", &due(1)).await;
    let run = import(&b, "https://e.com/run", &due(2)).await;
    assert_eq!(claim(a, JobKind::Import, 2).await, vec![sub, run]);
    assert_eq!(
        a.record_progress(&started(vec![accepted(run, "job-run")]))
            .await
            .unwrap(),
        vec![run]
    );

    // What lease expiry does, by hand.
    b.exec(&format!(
        "UPDATE imports SET state = 'pending', owner = NULL WHERE id = {sub}"
    ))
    .await;
    b.exec(&format!(
        "UPDATE imports SET owner = {other_id} WHERE id = {run}"
    ))
    .await;
    assert_eq!(claim(&other, JobKind::Import, 5).await, vec![sub]);

    let r = record(1, "transient");
    assert_eq!(
        a.reschedule(sub, None, true, 1, "x", Some(&r), KEEP)
            .await
            .unwrap(),
        Fate::Gone
    );
    assert_eq!(
        a.fail(sub, "x", None, Some(&r), KEEP).await.unwrap(),
        Written::Gone
    );
    assert_eq!(
        a.release_ambiguous(sub, "/import", "x", KEEP)
            .await
            .unwrap(),
        Written::Gone
    );
    a.release(&[sub]).await.unwrap();
    assert!(
        a.recover_submitting(KEEP, endpoint)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        a.record_progress(&started(vec![accepted(sub, "job-late")]))
            .await
            .unwrap()
            .is_empty()
    );
    let held =
        format!("id = {sub} AND state = 'submitting' AND owner = {other_id} AND attempts = 0");
    assert_eq!(count(&b, &held).await, 1);

    assert!(a.running().await.unwrap().is_empty());
    let polled: Vec<i64> = other
        .running()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(polled, vec![run]);
    a.record_progress(&finished(&[run])).await.unwrap();
    assert_eq!(state(&b, run).await, "running");
    assert_eq!(
        a.record_attempt(run, &r, KEEP).await.unwrap(),
        Written::Gone
    );
    assert_eq!(
        a.fail(run, "x", None, None, KEEP).await.unwrap(),
        Written::Gone
    );
    other.record_progress(&finished(&[run])).await.unwrap();
    assert_eq!(state(&b, run).await, "completed");
}

/// Two daemons, 2 slots: whoever claims, the rows submitting or running (anyone's) never
/// exceed the slots, even when both claim at the same moment.
async fn pg_claims_keep_the_accounts_slots_across_daemons(b: Backend) {
    let a = b.as_daemon().await;
    let other = another_daemon(&b).await;
    for i in 0..6 {
        import(&b, &format!("https://e.com/slot{i}"), &due(i)).await;
    }
    let now = SystemTime::now();
    let first = a.claim_due(JobKind::Import, 5, now, 2).await.unwrap();
    assert_eq!(first.len(), 2, "two slots, two claims");
    let second = other.claim_due(JobKind::Import, 5, now, 2).await.unwrap();
    assert!(
        second.is_empty(),
        "no slot left for the other daemon: {second:?}"
    );
    // Metadata has slots of its own.
    insert(&b, "metadata", "https://e.com/meta", PAST).await;
    assert_eq!(
        other
            .claim_due(JobKind::Metadata, 5, now, 1)
            .await
            .unwrap()
            .len(),
        1
    );
    // One job ends: one slot comes back, to whichever daemon claims first.
    b.exec(&format!(
        "UPDATE imports SET state = 'completed', owner = NULL WHERE id = {}",
        first[0].id
    ))
    .await;
    assert_eq!(
        other
            .claim_due(JobKind::Import, 5, now, 2)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        a.claim_due(JobKind::Import, 5, now, 2)
            .await
            .unwrap()
            .is_empty()
    );
    // Claims racing from both daemons at once still stop at the slots.
    b.exec("UPDATE imports SET state = 'completed', owner = NULL WHERE state <> 'pending'")
        .await;
    let (x, y) = tokio::join!(
        a.claim_due(JobKind::Import, 5, now, 2),
        other.claim_due(JobKind::Import, 5, now, 2)
    );
    assert_eq!(
        x.unwrap().len() + y.unwrap().len(),
        2,
        "the race stops at two"
    );
    assert_eq!(
        count(&b, "kind = 'import' AND state = 'submitting'").await,
        2
    );
}
