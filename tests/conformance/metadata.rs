//! Conformance: metadata rows, the metadata cache and the credit guard's preflight row.
//!
//! The store-level behaviour of `tests/metadata.rs` (which proves it end to end against the
//! simulator on SQLite): a cache hit within the TTL, completion filling the cache and waking
//! the imports that wait on the URL, completion from the cache, and every verdict of
//! `ensure_metadata_row`. Rows are put into `submitting`/`running` with plain SQL (on
//! PostgreSQL with the owner a claim would write), so these tests need no queue verbs.

use std::time::{Duration, Instant, SystemTime};

use importlyd::clock;
use importlyd::store::{DaemonInfo, MetadataRow, Store, Written};
use serde_json::{Value, json};

use crate::{Backend, LEASE, conformance, conformance_pg};

conformance!(
    the_cache_answers_only_while_fresh,
    metadata_running_sees_only_running_metadata_rows,
    complete_metadata_fills_the_cache_and_wakes_the_waiters,
    complete_metadata_of_a_deleted_row_is_gone,
    complete_from_cache_completes_a_submitting_row,
    ensure_metadata_row_queues_one_fetch_and_then_waits_on_it,
    a_waiting_import_gets_the_outcome_of_its_metadata_row,
    a_new_look_fetches_again_whatever_the_last_outcome,
);

conformance_pg!(
    complete_metadata_writes_only_a_running_row_of_mine,
    complete_from_cache_writes_only_a_submitting_row_of_mine,
    two_daemons_guarding_one_url_at_once_queue_one_metadata_row,
);

const URL: &str = "https://media.example.com/conformance/meta.mp4";
/// A due time far ahead: a waiter still there was not woken.
const FAR: &str = "2099-01-01T00:00:00.000Z";

/// Registers `store` as a daemon; its id in `daemons` on PostgreSQL (the owner its claims
/// carry), 0 on SQLite (no owners there).
pub async fn register(b: &Backend, store: &Store) -> i64 {
    store
        .register_daemon(DaemonInfo::this_process(), LEASE)
        .await
        .expect("register");
    if b.is_postgres() {
        b.scalar("SELECT CAST(max(id) AS BIGINT) FROM daemons")
            .await
    } else {
        0
    }
}

/// Inserts a pending row of `kind` for `url`; its id.
pub async fn insert(b: &Backend, url: &str, kind: &str) -> i64 {
    b.scalar(&format!(
        "INSERT INTO imports (url, kind) VALUES ('{url}', '{kind}') RETURNING id"
    ))
    .await
}

/// Puts row `id` in `state` (`submitting` or `running`) as daemon `owner`'s claim would.
pub async fn hold(b: &Backend, id: i64, state: &str, owner: i64) {
    let owned = if b.is_postgres() {
        format!(", owner = {owner}, claimed_at = now()")
    } else {
        String::new()
    };
    b.exec(&format!(
        "UPDATE imports SET state = '{state}', importly_job_id = 'job-{id}'{owned} WHERE id = {id}"
    ))
    .await;
}

/// An import row waiting (as the guard's snooze leaves it) on `url`'s metadata.
async fn waiter(b: &Backend, url: &str) -> i64 {
    let id = insert(b, url, "import").await;
    b.exec(&format!(
        "UPDATE imports SET last_error = '{}', next_attempt_at = '{FAR}' WHERE id = {id}",
        MetadataRow::WAITING
    ))
    .await;
    id
}

/// Whether row `id` was made due again (its `next_attempt_at` is no longer [`FAR`]).
async fn woken(b: &Backend, id: i64) -> bool {
    b.scalar(&format!(
        "SELECT count(*) FROM imports WHERE id = {id} AND next_attempt_at < '2098-01-01T00:00:00.000Z'"
    ))
    .await
        == 1
}

async fn state_of(b: &Backend, id: i64) -> String {
    b.text(&format!("SELECT state FROM imports WHERE id = {id}"))
        .await
        .expect("the row")
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A cache entry for `url`, fetched at `at`.
async fn cache(b: &Backend, url: &str, at: &str) {
    b.exec(&format!(
        "INSERT INTO metadata_cache (url, title, duration, formats, data, job_id, fetched_at) \
         VALUES ('{url}', 'Cached title', 12.5, '[{{\"quality\":\"720p\",\"costInCredits\":2}}]', \
         '{{\"title\":\"Cached title\",\"duration\":12.5}}', 'meta-job-1', '{at}')"
    ))
    .await;
}

async fn the_cache_answers_only_while_fresh(b: Backend) {
    let s = &b.store;
    cache(&b, URL, "2026-01-01T10:00:00.000Z").await;
    let hit = s
        .cached_metadata(URL, instant("2026-01-01T09:00:00.000Z"))
        .await
        .expect("read")
        .expect("fresh since an hour before it was fetched");
    assert_eq!(hit.url, URL);
    assert_eq!(hit.title.as_deref(), Some("Cached title"));
    assert_eq!(hit.duration, Some(12.5));
    assert_eq!(hit.job_id.as_deref(), Some("meta-job-1"));
    assert_eq!(clock::iso(hit.fetched_at), "2026-01-01T10:00:00.000Z");
    assert_eq!(
        json_of(&hit.formats),
        json!([{"quality": "720p", "costInCredits": 2}])
    );
    assert_eq!(
        json_of(&hit.data),
        json!({"title": "Cached title", "duration": 12.5})
    );
    // Fetched exactly at the limit is still fresh.
    assert!(
        s.cached_metadata(URL, instant("2026-01-01T10:00:00.000Z"))
            .await
            .expect("read")
            .is_some()
    );
    assert!(
        s.cached_metadata(URL, instant("2026-01-01T10:00:00.001Z"))
            .await
            .expect("read")
            .is_none(),
        "stale"
    );
    assert!(
        s.cached_metadata(&format!("{URL}?other"), instant("2000-01-01T00:00:00.000Z"))
            .await
            .expect("read")
            .is_none(),
        "another URL"
    );
}

async fn metadata_running_sees_only_running_metadata_rows(b: Backend) {
    let s = &b.store;
    let me = register(&b, s).await;
    let m = insert(&b, URL, "metadata").await;
    assert!(!s.metadata_running(URL).await.expect("read"), "pending");
    hold(&b, m, "submitting", me).await;
    assert!(!s.metadata_running(URL).await.expect("read"), "submitting");
    hold(&b, m, "running", me).await;
    assert!(s.metadata_running(URL).await.expect("read"), "running");
    assert!(
        !s.metadata_running(&format!("{URL}?other"))
            .await
            .expect("read"),
        "another URL"
    );
    // An import job running for the URL is not a metadata call.
    let other = "https://media.example.com/conformance/import-running.mp4";
    let i = insert(&b, other, "import").await;
    hold(&b, i, "running", me).await;
    assert!(!s.metadata_running(other).await.expect("read"), "an import");
    // Another handle sees it too (on PostgreSQL: whichever daemon polls the job).
    let again = b.open_again().await;
    assert!(again.metadata_running(URL).await.expect("read"));
}

async fn complete_metadata_fills_the_cache_and_wakes_the_waiters(b: Backend) {
    let s = &b.store;
    let me = register(&b, s).await;
    let m = insert(&b, URL, "metadata").await;
    hold(&b, m, "running", me).await;
    // An earlier failure's reason goes with the completion.
    b.exec(&format!(
        "UPDATE imports SET last_error = 'HTTP 401' WHERE id = {m}"
    ))
    .await;
    let waiting = waiter(&b, URL).await;
    let elsewhere = waiter(&b, "https://media.example.com/conformance/other.mp4").await;
    // Same URL, but snoozed for another reason: not a waiter.
    let snoozed = insert(&b, URL, "import").await;
    b.exec(&format!(
        "UPDATE imports SET last_error = 'HTTP 503', next_attempt_at = '{FAR}' WHERE id = {snoozed}"
    ))
    .await;

    let before = SystemTime::now() - Duration::from_secs(60);
    let data = r#"{"title":"Fresh","duration":61.5,"availableFormats":[]}"#;
    let formats = r#"[{"quality":"1080p","costInCredits":8}]"#;
    let written = s
        .complete_metadata(m, "meta-job-9", Some("Fresh"), Some(61.5), formats, data)
        .await
        .expect("complete");
    assert_eq!(written, Written::Row);

    assert_eq!(state_of(&b, m).await, "completed");
    let result = b
        .text(&format!(
            "SELECT CAST(result AS TEXT) FROM imports WHERE id = {m}"
        ))
        .await
        .expect("a result");
    assert_eq!(json_of(&result), json_of(data));
    assert_eq!(
        b.scalar(&format!(
            "SELECT count(*) FROM imports WHERE id = {m} AND last_error IS NULL \
             AND completed_at IS NOT NULL"
        ))
        .await,
        1
    );
    if b.is_postgres() {
        assert_eq!(
            b.scalar(&format!(
                "SELECT count(*) FROM imports WHERE id = {m} AND owner IS NULL"
            ))
            .await,
            1,
            "a finished row has no owner"
        );
    }

    let hit = s
        .cached_metadata(URL, before)
        .await
        .expect("read")
        .expect("cached just now");
    assert_eq!(hit.title.as_deref(), Some("Fresh"));
    assert_eq!(hit.duration, Some(61.5));
    assert_eq!(hit.job_id.as_deref(), Some("meta-job-9"));
    assert_eq!(json_of(&hit.formats), json_of(formats));
    assert_eq!(json_of(&hit.data), json_of(data));
    let fetched = hit.fetched_at;
    assert!(fetched >= before && fetched <= SystemTime::now() + Duration::from_secs(60));

    assert!(woken(&b, waiting).await, "the waiting import is due now");
    assert!(
        !woken(&b, elsewhere).await,
        "a waiter on another URL sleeps on"
    );
    assert!(
        !woken(&b, snoozed).await,
        "a row snoozed for another reason sleeps on"
    );

    // A second completion for the URL replaces the entry.
    let m2 = insert(&b, URL, "metadata").await;
    hold(&b, m2, "running", me).await;
    let w = s
        .complete_metadata(m2, "meta-job-10", None, None, "[]", r#"{"title":null}"#)
        .await
        .expect("complete");
    assert_eq!(w, Written::Row);
    let hit = s
        .cached_metadata(URL, before)
        .await
        .expect("read")
        .expect("cached");
    assert_eq!(hit.job_id.as_deref(), Some("meta-job-10"));
    assert_eq!(hit.title, None);
    assert_eq!(
        b.scalar(&format!(
            "SELECT count(*) FROM metadata_cache WHERE url = '{URL}'"
        ))
        .await,
        1
    );
}

async fn complete_metadata_of_a_deleted_row_is_gone(b: Backend) {
    let s = &b.store;
    let me = register(&b, s).await;
    let m = insert(&b, URL, "metadata").await;
    hold(&b, m, "running", me).await;
    b.exec(&format!("DELETE FROM imports WHERE id = {m}")).await;
    let w = s
        .complete_metadata(m, "meta-job", None, None, "[]", "{}")
        .await
        .expect("no error for a row deleted meanwhile");
    assert_eq!(w, Written::Gone);
    assert_eq!(b.scalar("SELECT count(*) FROM imports").await, 0);
}

async fn complete_from_cache_completes_a_submitting_row(b: Backend) {
    let s = &b.store;
    let me = register(&b, s).await;
    cache(&b, URL, "2026-01-01T10:00:00.000Z").await;
    let cached = s
        .cached_metadata(URL, instant("2026-01-01T00:00:00.000Z"))
        .await
        .expect("read")
        .expect("cached");
    let m = insert(&b, URL, "metadata").await;
    hold(&b, m, "submitting", me).await;
    b.exec(&format!(
        "UPDATE imports SET importly_job_id = NULL, last_error = 'HTTP 503' WHERE id = {m}"
    ))
    .await;
    let waiting = waiter(&b, URL).await;

    assert_eq!(
        s.complete_from_cache(m, &cached).await.expect("complete"),
        Written::Row
    );

    assert_eq!(state_of(&b, m).await, "completed");
    let result = b
        .text(&format!(
            "SELECT CAST(result AS TEXT) FROM imports WHERE id = {m}"
        ))
        .await
        .expect("a result");
    assert_eq!(
        json_of(&result),
        json!({"title": "Cached title", "duration": 12.5, "fromCache": true,
               "cachedAt": "2026-01-01T10:00:00.000Z"})
    );
    assert_eq!(
        b.text(&format!(
            "SELECT importly_job_id FROM imports WHERE id = {m}"
        ))
        .await
        .as_deref(),
        Some("meta-job-1"),
        "the job that fetched it"
    );
    assert_eq!(
        b.scalar(&format!(
            "SELECT count(*) FROM imports WHERE id = {m} AND last_error IS NULL \
             AND completed_at IS NOT NULL"
        ))
        .await,
        1
    );
    assert!(woken(&b, waiting).await, "the waiting import is due now");

    // A row that is not submitting (here: pending) is not completed, and says so.
    let p = insert(&b, URL, "metadata").await;
    let again = waiter(&b, URL).await;
    assert_eq!(
        s.complete_from_cache(p, &cached).await.expect("no error"),
        Written::Gone
    );
    assert_eq!(state_of(&b, p).await, "pending");
    assert!(!woken(&b, again).await, "nothing completed, nobody woken");
}

/// The guard's first look queues one metadata row; later looks wait on it while it is
/// queued or in flight.
async fn ensure_metadata_row_queues_one_fetch_and_then_waits_on_it(b: Backend) {
    let s = &b.store;
    let me = register(&b, s).await;
    let import = insert(&b, URL, "import").await;
    let m = match s.ensure_metadata_row(import, URL).await.expect("ensure") {
        MetadataRow::Queued(m) => m,
        other => panic!("expected a queued row, got {other:?}"),
    };
    assert_eq!(
        b.scalar(&format!(
            "SELECT count(*) FROM imports WHERE id = {m} AND kind = 'metadata' \
             AND state = 'pending' AND url = '{URL}'"
        ))
        .await,
        1,
        "a pending metadata row for the URL"
    );
    // A second import of the URL (and a repeat of the first) waits on that row.
    let second = insert(&b, URL, "import").await;
    for state in ["pending", "submitting", "running"] {
        if state != "pending" {
            hold(&b, m, state, me).await;
        }
        for id in [import, second] {
            let v = s.ensure_metadata_row(id, URL).await.expect("ensure");
            assert!(
                matches!(v, MetadataRow::InProgress),
                "{state}: expected in progress, got {v:?}"
            );
        }
    }
    assert_eq!(
        b.scalar("SELECT count(*) FROM imports WHERE kind = 'metadata'")
            .await,
        1,
        "one fetch for the URL"
    );
}

/// Ends metadata row `m` in `state` with `last_error`.
async fn end(b: &Backend, m: i64, state: &str, last_error: Option<&str>) {
    let err = last_error.map_or("NULL".to_owned(), |e| format!("'{e}'"));
    b.exec(&format!(
        "UPDATE imports SET state = '{state}', last_error = {err}, importly_job_id = 'job-{m}' \
         WHERE id = {m}"
    ))
    .await;
    if b.is_postgres() {
        b.exec(&format!("UPDATE imports SET owner = NULL WHERE id = {m}"))
            .await;
    }
}

/// An import that was waiting learns how the newest metadata row of its URL ended: its
/// failure, or the cache entry whatever its age (`cache_ttl = 0s` must still let the guard
/// decide).
async fn a_waiting_import_gets_the_outcome_of_its_metadata_row(b: Backend) {
    let s = &b.store;

    let failed = "https://media.example.com/conformance/failed.mp4";
    let m = insert(&b, failed, "metadata").await;
    end(&b, m, "failed", Some("HTTP 404: not publicly accessible")).await;
    let w = waiter(&b, failed).await;
    match s.ensure_metadata_row(w, failed).await.expect("ensure") {
        MetadataRow::Failed(reason) => assert_eq!(reason, "HTTP 404: not publicly accessible"),
        other => panic!("expected the failure, got {other:?}"),
    }

    let silent = "https://media.example.com/conformance/silent.mp4";
    let m = insert(&b, silent, "metadata").await;
    end(&b, m, "failed", None).await;
    let w = waiter(&b, silent).await;
    match s.ensure_metadata_row(w, silent).await.expect("ensure") {
        MetadataRow::Failed(reason) => assert_eq!(reason, "metadata job failed"),
        other => panic!("expected the failure, got {other:?}"),
    }

    let done = "https://media.example.com/conformance/done.mp4";
    let m = insert(&b, done, "metadata").await;
    end(&b, m, "completed", None).await;
    // Long stale: the wait outlasted the TTL, and fetching again would only wait again.
    cache(&b, done, "2020-01-01T00:00:00.000Z").await;
    let w = waiter(&b, done).await;
    match s.ensure_metadata_row(w, done).await.expect("ensure") {
        MetadataRow::Ready(c) => {
            assert_eq!(c.url, done);
            assert_eq!(c.title.as_deref(), Some("Cached title"));
            assert_eq!(clock::iso(c.fetched_at), "2020-01-01T00:00:00.000Z");
        }
        other => panic!("expected the cache entry, got {other:?}"),
    }

    // Nothing to show for the wait (the entry was purged, the row cancelled): fetch again.
    let purged = "https://media.example.com/conformance/purged.mp4";
    let m = insert(&b, purged, "metadata").await;
    end(&b, m, "completed", None).await;
    let cancelled = "https://media.example.com/conformance/cancelled.mp4";
    let c = insert(&b, cancelled, "metadata").await;
    end(&b, c, "cancelled", None).await;
    for url in [purged, cancelled] {
        let w = waiter(&b, url).await;
        match s.ensure_metadata_row(w, url).await.expect("ensure") {
            MetadataRow::Queued(id) => assert!(id > m && id > c, "a new row"),
            other => panic!("{url}: expected a new fetch, got {other:?}"),
        }
    }
    assert_eq!(
        b.scalar("SELECT count(*) FROM imports WHERE kind = 'metadata'")
            .await,
        7
    );
}

/// An import that was not waiting (new, retried, or its daemon restarted) never takes an old
/// outcome: failures are not cached, and a completed row's entry was already judged stale by
/// the caller, so it queues a fresh fetch (`importlyd retry` after a failed preflight).
async fn a_new_look_fetches_again_whatever_the_last_outcome(b: Backend) {
    let s = &b.store;
    for (n, state) in ["failed", "completed", "cancelled"].into_iter().enumerate() {
        let url = format!("https://media.example.com/conformance/again-{n}.mp4");
        let m = insert(&b, &url, "metadata").await;
        end(&b, m, state, Some("HTTP 500")).await;
        cache(&b, &url, "2020-01-01T00:00:00.000Z").await;
        let import = insert(&b, &url, "import").await;
        // A retried import: its last_error is some other text, or none.
        b.exec(&format!(
            "UPDATE imports SET last_error = 'preflight metadata failed: HTTP 500' WHERE id = {import}"
        ))
        .await;
        match s.ensure_metadata_row(import, &url).await.expect("ensure") {
            MetadataRow::Queued(id) => assert!(id > m, "{state}: a new row"),
            other => panic!("{state}: expected a new fetch, got {other:?}"),
        }
        assert_eq!(
            b.scalar(&format!(
                "SELECT count(*) FROM imports WHERE kind = 'metadata' AND url = '{url}' \
                 AND state = 'pending'"
            ))
            .await,
            1,
            "{state}"
        );
    }
}

// ---- PostgreSQL: several daemons ----

/// A daemon whose running metadata row was adopted by another (its lease lapsed) must not
/// complete it, fill the cache or wake anything: the adopter records the job itself.
async fn complete_metadata_writes_only_a_running_row_of_mine(b: Backend) {
    let (one, two) = (b.open_again().await, b.open_again().await);
    let _first = register(&b, &one).await;
    let second = register(&b, &two).await;
    let m = insert(&b, URL, "metadata").await;
    hold(&b, m, "running", second).await;
    let waiting = waiter(&b, URL).await;

    let w = one
        .complete_metadata(m, "meta-job", Some("T"), None, "[]", "{}")
        .await
        .expect("no error");
    assert_eq!(w, Written::Gone, "not mine");
    assert_eq!(state_of(&b, m).await, "running");
    assert_eq!(
        b.scalar(&format!(
            "SELECT count(*) FROM imports WHERE id = {m} AND owner = {second}"
        ))
        .await,
        1
    );
    assert_eq!(b.scalar("SELECT count(*) FROM metadata_cache").await, 0);
    assert!(!woken(&b, waiting).await);

    // Not running any more (its owner released it): not completed either.
    b.exec(&format!(
        "UPDATE imports SET state = 'pending', owner = NULL WHERE id = {m}"
    ))
    .await;
    let w = two
        .complete_metadata(m, "meta-job", Some("T"), None, "[]", "{}")
        .await
        .expect("no error");
    assert_eq!(w, Written::Gone);
    assert_eq!(state_of(&b, m).await, "pending");

    // Its owner completes it.
    hold(&b, m, "running", second).await;
    let w = two
        .complete_metadata(m, "meta-job", Some("T"), None, "[]", "{}")
        .await
        .expect("complete");
    assert_eq!(w, Written::Row);
    assert_eq!(state_of(&b, m).await, "completed");
    assert_eq!(b.scalar("SELECT count(*) FROM metadata_cache").await, 1);
    assert!(woken(&b, waiting).await);
}

async fn complete_from_cache_writes_only_a_submitting_row_of_mine(b: Backend) {
    let (one, two) = (b.open_again().await, b.open_again().await);
    let first = register(&b, &one).await;
    let second = register(&b, &two).await;
    cache(&b, URL, "2026-01-01T10:00:00.000Z").await;
    let cached = one
        .cached_metadata(URL, instant("2026-01-01T00:00:00.000Z"))
        .await
        .expect("read")
        .expect("cached");
    let m = insert(&b, URL, "metadata").await;
    hold(&b, m, "submitting", second).await;
    let waiting = waiter(&b, URL).await;

    assert_eq!(
        one.complete_from_cache(m, &cached).await.expect("no error"),
        Written::Gone,
        "not mine"
    );
    assert_eq!(state_of(&b, m).await, "submitting", "not mine");
    assert!(!woken(&b, waiting).await);

    hold(&b, m, "submitting", first).await;
    assert_eq!(
        one.complete_from_cache(m, &cached).await.expect("complete"),
        Written::Row
    );
    assert_eq!(state_of(&b, m).await, "completed");
    assert_eq!(
        b.scalar(&format!(
            "SELECT count(*) FROM imports WHERE id = {m} AND owner IS NULL"
        ))
        .await,
        1
    );
    assert!(woken(&b, waiting).await);
}

/// Two daemons guard imports of one URL at the same moment: one metadata row, not two.
///
/// Made deterministic: another session holds the `imports` table in EXCLUSIVE mode (reads
/// go on, inserts wait), and is let go only once both calls are waiting for a lock. Without
/// the store's per-URL serialization both would have looked, found nothing and be waiting
/// to insert; with it, the second waits before it looks and then finds the first's row.
async fn two_daemons_guarding_one_url_at_once_queue_one_metadata_row(b: Backend) {
    use sqlx::{Connection, Executor};
    let (one, two) = (b.open_again().await, b.open_again().await);
    register(&b, &one).await;
    register(&b, &two).await;
    let (i1, i2) = (
        insert(&b, URL, "import").await,
        insert(&b, URL, "import").await,
    );
    let url = b.db.url().expect("a PostgreSQL URL").to_owned();
    let mut blocker = sqlx::PgConnection::connect(&url).await.expect("connect");
    blocker.execute("BEGIN").await.expect("begin");
    blocker
        .execute("LOCK TABLE imports IN EXCLUSIVE MODE")
        .await
        .expect("lock");

    let a = tokio::spawn(async move { one.ensure_metadata_row(i1, URL).await });
    let c = tokio::spawn(async move { two.ensure_metadata_row(i2, URL).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting = b
            .scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await;
        if waiting == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both calls waiting for a lock ({waiting} are)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    blocker.execute("COMMIT").await.expect("commit");

    let mut verdicts = vec![
        a.await.expect("task").expect("ensure"),
        c.await.expect("task").expect("ensure"),
    ];
    verdicts.sort_by_key(|v| matches!(v, MetadataRow::InProgress));
    assert!(
        matches!(
            verdicts.as_slice(),
            [MetadataRow::Queued(_), MetadataRow::InProgress]
        ),
        "one queues, the other waits on it: {verdicts:?}"
    );
    assert_eq!(
        b.scalar(&format!(
            "SELECT count(*) FROM imports WHERE kind = 'metadata' AND url = '{URL}'"
        ))
        .await,
        1,
        "one metadata row for the URL"
    );
    blocker.close().await.expect("close");
}

/// The instant canonical text `t` names.
fn instant(t: &str) -> SystemTime {
    clock::parse_iso(t).unwrap_or_else(|| panic!("not a time: {t}"))
}
