//! Conformance: pauses, budgets, and the heartbeat that rides on saving them.
//!
//! Pauses behave alike. Budgets do not, by design: SQLite stores each daemon's snapshot
//! (`<scope>.local` for the config window, `<scope>` for the server's) as it is, while
//! PostgreSQL keeps one shared `budgets` row per scope that a snapshot only seeds (a row
//! that exists is the shared-budget code's). What both must give back is what
//! `Budget::restore` (the daemon at start, `status`) reads correctly.

use std::time::{Duration, SystemTime};

use importlyd::clock;
use importlyd::config::BucketLimit;
use importlyd::limits::{Budget, Scope};
use importlyd::store::{StoredBucket, StoredPause};

use crate::metadata::register;
use crate::{Backend, conformance, conformance_pg};

conformance!(
    pauses_are_set_refreshed_and_cleared,
    a_budget_snapshot_round_trips,
    saving_budgets_renews_a_live_daemons_heartbeat,
    a_time_no_canonical_text_shows_is_a_store_error,
);

conformance_pg!(
    a_lapsed_or_stopped_lease_is_not_renewed,
    the_shared_budget_row_reads_back_by_its_source,
);

fn pause(scope: &str, reason: &str, status: Option<i64>, since: &str) -> StoredPause {
    StoredPause {
        scope: scope.parse().expect("a scope"),
        reason: reason.into(),
        http_status: status,
        since: instant(since),
        next_probe: instant("2026-01-01T10:05:00.250Z"),
    }
}

/// The instant canonical text `t` names.
fn instant(t: &str) -> SystemTime {
    clock::parse_iso(t).unwrap_or_else(|| panic!("not a time: {t}"))
}

async fn pauses_are_set_refreshed_and_cleared(b: Backend) {
    let s = &b.store;
    assert_eq!(s.pauses().await.expect("read"), vec![]);
    let import = pause(
        "import",
        "HTTP 402: out of credits",
        Some(402),
        "2026-01-01T10:00:00.123Z",
    );
    let all = pause(
        "all",
        "HTTP 401: bad key",
        Some(401),
        "2026-01-01T09:00:00.000Z",
    );
    s.set_pause(&import).await.expect("set");
    s.set_pause(&all).await.expect("set");
    assert_eq!(
        s.pauses().await.expect("read"),
        vec![all.clone(), import.clone()],
        "every field back, ordered by scope"
    );

    // A refresh keeps when the pause began and takes the rest.
    let mut again = pause(
        "import",
        "HTTP 402: still out of credits",
        None,
        "2026-01-01T11:00:00.000Z",
    );
    again.next_probe = instant("2026-01-01T11:30:00.000Z");
    s.set_pause(&again).await.expect("refresh");
    let got = s.pauses().await.expect("read");
    assert_eq!(
        got[1],
        StoredPause {
            since: import.since,
            ..again.clone()
        }
    );
    // Seen through another handle (another daemon, `importlyd status`).
    assert_eq!(b.open_again().await.pauses().await.expect("read"), got);

    s.clear_pause(Scope::Import).await.expect("clear");
    assert_eq!(s.pauses().await.expect("read"), vec![all.clone()]);
    s.clear_pause(Scope::Import)
        .await
        .expect("clearing nothing is fine");

    s.set_pause(&pause(
        "metadata",
        "HTTP 402",
        Some(402),
        &clock::iso(import.since),
    ))
    .await
    .expect("set");
    assert_eq!(s.clear_pauses().await.expect("resume"), 2);
    assert_eq!(s.pauses().await.expect("read"), vec![]);
    assert_eq!(s.clear_pauses().await.expect("resume"), 0);
}

fn bucket(
    name: &str,
    lim: i64,
    remaining: i64,
    reset_at: i64,
    blocked: Option<i64>,
) -> StoredBucket {
    StoredBucket {
        name: name.into(),
        lim,
        remaining,
        reset_at,
        window_ms: HOUR_MS,
        blocked_until: blocked,
        updated_at: SystemTime::UNIX_EPOCH,
    }
}

const HOUR_MS: i64 = 3_600_000;

fn limit(requests: u64) -> BucketLimit {
    BucketLimit {
        requests,
        window: Duration::from_secs(3600),
        concurrent: 2,
        reserve: 0,
    }
}

/// `rows` without their `updated_at` (checked apart), by name.
fn by_name(rows: &[StoredBucket]) -> Vec<StoredBucket> {
    let mut out: Vec<StoredBucket> = rows
        .iter()
        .map(|r| StoredBucket {
            updated_at: SystemTime::UNIX_EPOCH,
            ..r.clone()
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

async fn a_budget_snapshot_round_trips(b: Backend) {
    let s = &b.store;
    assert_eq!(s.buckets().await.expect("read"), vec![]);
    let now = SystemTime::now();
    // The config window's end, as `Window::fresh` would have it, so `restore` takes it.
    let reset = clock::unix_ms(importlyd::limits::aligned_end(
        now,
        Duration::from_secs(3600),
    ));
    let blocked = clock::unix_ms(now + Duration::from_secs(600));
    let first = [
        bucket("import.local", 240, 200, reset, Some(blocked)),
        bucket("import", 600, 550, reset, Some(blocked)),
        bucket("metadata.local", 60, 59, reset, None),
    ];
    let before = now - Duration::from_secs(60);
    s.save_buckets(&first).await.expect("save");
    let got = s.buckets().await.expect("read");
    for r in &got {
        assert!(r.updated_at >= before, "{r:?}");
    }
    let expected = if b.is_postgres() {
        // One row per scope: the server's window where known, else the config's.
        vec![first[1].clone(), first[2].clone()]
    } else {
        by_name(&first)
    };
    assert_eq!(by_name(&got), expected);

    // What the daemon (at its next start) and `status` make of it.
    let mut import = Budget::new("import", &limit(240), now);
    import.restore(&got, now);
    let v = import.view(now);
    assert_eq!(
        (v.source, v.limit, v.remaining),
        ("server", 600, 550),
        "{v:?}"
    );
    assert!(v.blocked_until.is_some(), "the 429's block: {v:?}");
    let mut metadata = Budget::new("metadata", &limit(60), now);
    metadata.restore(&got, now);
    let v = metadata.view(now);
    assert_eq!(
        (v.source, v.limit, v.remaining),
        ("config", 60, 59),
        "{v:?}"
    );

    // The next snapshot: SQLite stores it; PostgreSQL only seeds the new scope, the shared
    // rows being the shared-budget code's from now on.
    let second = [
        bucket("import.local", 240, 100, reset, None),
        bucket("import", 700, 10, reset, None),
        bucket("metadata.local", 60, 1, reset, None),
        bucket("status.local", 3600, 3599, reset, None),
    ];
    s.save_buckets(&second).await.expect("save");
    let got = by_name(&s.buckets().await.expect("read"));
    let expected = if b.is_postgres() {
        vec![first[1].clone(), first[2].clone(), second[3].clone()]
    } else {
        by_name(&second)
    };
    assert_eq!(got, expected);
}

/// A daemon's row, as `daemons()` lists it (the only one in these tests).
async fn heartbeat(b: &Backend) -> String {
    let all = b.store.daemons().await.expect("daemons");
    assert_eq!(all.len(), 1, "{all:?}");
    clock::iso(all[0].heartbeat_at)
}

async fn saving_budgets_renews_a_live_daemons_heartbeat(b: Backend) {
    let s = &b.store;
    let id = register(&b, s).await;
    let earlier = clock::iso(SystemTime::now() - Duration::from_secs(5));
    let set = b
        .exec(&format!("UPDATE daemons SET heartbeat_at = '{earlier}'"))
        .await;
    assert_eq!(set, 1, "daemon {id}");
    assert_eq!(heartbeat(&b).await, earlier);
    // The scheduler's idle write probe saves even with nothing to save.
    s.save_buckets(&[]).await.expect("save");
    let beat = heartbeat(&b).await;
    let at = clock::parse_iso(&beat).expect("an ISO time");
    let was = clock::parse_iso(&earlier).expect("an ISO time");
    assert!(at >= was + Duration::from_secs(4), "{earlier} -> {beat}");
    assert!(b.store.daemons().await.expect("daemons")[0].is_live(SystemTime::now()));
}

/// PostgreSQL: a daemon whose lease lapsed may already have lost its claims to another;
/// its next save must not make it look alive again (nor may a stopped one's).
async fn a_lapsed_or_stopped_lease_is_not_renewed(b: Backend) {
    let s = &b.store;
    register(&b, s).await;
    let lapsed = clock::iso(SystemTime::now() - Duration::from_secs(3600));
    b.exec(&format!("UPDATE daemons SET heartbeat_at = '{lapsed}'"))
        .await;
    s.save_buckets(&[bucket("import.local", 240, 240, 0, None)])
        .await
        .expect("save");
    assert_eq!(heartbeat(&b).await, lapsed, "not revived");
    assert_eq!(
        b.scalar("SELECT count(*) FROM budgets").await,
        1,
        "the budgets are saved all the same"
    );

    // A live one is renewed (so the check above can tell the two apart).
    let recent = clock::iso(SystemTime::now() - Duration::from_secs(5));
    b.exec(&format!("UPDATE daemons SET heartbeat_at = '{recent}'"))
        .await;
    s.save_buckets(&[]).await.expect("save");
    assert_ne!(heartbeat(&b).await, recent, "renewed");

    s.daemon_stopped().await.expect("stopped");
    b.exec(&format!("UPDATE daemons SET heartbeat_at = '{recent}'"))
        .await;
    s.save_buckets(&[]).await.expect("save");
    assert_eq!(
        heartbeat(&b).await,
        recent,
        "a stopped daemon stays stopped"
    );

    // An operator's store (not a daemon) touches no daemon row.
    let operator = b.open_again().await;
    operator
        .save_buckets(&[bucket("status.local", 1, 1, 0, None)])
        .await
        .expect("save");
    assert_eq!(heartbeat(&b).await, recent);
}

/// PostgreSQL: a row the shared-budget code wrote reads back under the name its source
/// gives it, with its window converted, and no snapshot overwrites it.
async fn the_shared_budget_row_reads_back_by_its_source(b: Backend) {
    b.exec(
        "INSERT INTO budgets (scope, lim, used, window_ms, window_end, blocked_until, source) \
         VALUES ('import', 600, 650, 3600000, '2026-12-07T10:00:00.123Z', \
                 '2026-12-07T09:30:00.456Z', 'server'), \
                ('metadata', 60, 20, 3600000, '2026-12-07T10:00:00.000Z', NULL, 'config')",
    )
    .await;
    let ms = |iso: &str| clock::unix_ms(clock::parse_iso(iso).expect("an ISO time"));
    let got = by_name(&b.store.buckets().await.expect("read"));
    assert_eq!(
        got,
        vec![
            StoredBucket {
                name: "import".into(),
                lim: 600,
                remaining: 0,
                reset_at: ms("2026-12-07T10:00:00.123Z"),
                window_ms: HOUR_MS,
                blocked_until: Some(ms("2026-12-07T09:30:00.456Z")),
                updated_at: SystemTime::UNIX_EPOCH,
            },
            StoredBucket {
                name: "metadata.local".into(),
                lim: 60,
                remaining: 40,
                reset_at: ms("2026-12-07T10:00:00.000Z"),
                window_ms: HOUR_MS,
                blocked_until: None,
                updated_at: SystemTime::UNIX_EPOCH,
            },
        ]
    );
    let s = &b.store;
    register(&b, s).await;
    s.save_buckets(&[
        bucket("import", 1, 1, 0, None),
        bucket("metadata.local", 1, 1, 0, None),
    ])
    .await
    .expect("save");
    assert_eq!(by_name(&s.buckets().await.expect("read")), got);
}

/// A time an outside writer put in a daemon's own table that the canonical text cannot
/// show (before 1970: both databases store it) comes back as an error naming the column and
/// the text, never as a panic or a silently dropped pause. SQLite also keeps text that is no
/// time at all, with the same error.
async fn a_time_no_canonical_text_shows_is_a_store_error(b: Backend) {
    let mut odd = vec!["1960-01-01T00:00:00.000Z"];
    if !b.is_postgres() {
        odd.push("yesterday");
    }
    for since in odd {
        b.exec("DELETE FROM pauses").await;
        b.exec(&format!(
            "INSERT INTO pauses (scope, reason, http_status, since, next_probe) \
             VALUES ('all', 'x', 401, '{since}', '2026-01-01T00:00:00.000Z')"
        ))
        .await;
        let e = b.store.pauses().await.unwrap_err().to_string();
        assert!(
            e.contains("since") && e.contains(&format!("not a time: \"{since}\"")),
            "{since}: {e}"
        );
    }
}
