//! Conformance: the cluster verbs. SQLite grants everything (one daemon per file);
//! PostgreSQL decides from the shared tables on its own clock.

use std::time::{Duration, SystemTime};

use importlyd::importly::JobKind;
use importlyd::store::{BudgetGuess, BudgetSeen, DaemonInfo, Lease, Store};

use crate::{Backend, LEASE};

crate::conformance!(
    a_registered_daemon_holds_its_lease,
    the_shared_budget_never_grants_more_than_the_window_holds,
    headers_correct_the_shared_budget_and_a_429_blocks_it,
    a_budgeted_claim_claims_only_what_the_budget_grants,
);

crate::conformance_pg!(
    pg_a_lapsed_lease_is_lost_and_its_rows_adopted,
    pg_a_budgeted_claim_into_full_slots_takes_no_budget_and_says_full,
    pg_attach_job_takes_only_a_row_still_waiting_for_a_job,
);

fn endpoint(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Metadata => "/metadata",
        JobKind::Import => "/import",
    }
}

fn guess(limit: u32, window: Duration) -> BudgetGuess {
    BudgetGuess {
        limit,
        reserve: 0,
        window,
    }
}

async fn a_registered_daemon_holds_its_lease(b: Backend) {
    let s = b.as_daemon().await;
    match s.heartbeat(3).await.unwrap() {
        Lease::Held { valid_for } => {
            if b.is_postgres() {
                assert_eq!(valid_for, Some(LEASE));
            } else {
                assert_eq!(valid_for, None, "SQLite's lease is the file lock");
            }
        }
        Lease::Lost => panic!("a fresh lease is held"),
    }
    let adopted = s.adopt(50, endpoint).await.unwrap();
    assert!(adopted.running.is_empty() && adopted.released.is_empty());
    if b.is_postgres() {
        let d = s.daemons().await.unwrap();
        assert_eq!(d[0].in_flight, Some(0), "nothing claimed yet: {d:?}");
    } else {
        // One daemon per file never loses a row, so it never attaches a job to one
        // (PostgreSQL's cases: `pg_attach_job_takes_only_a_row_still_waiting_for_a_job`).
        let id = b
            .scalar("INSERT INTO imports (url) VALUES ('https://e.com/attach') RETURNING id")
            .await;
        assert!(!s.attach_job(id, "job-late").await.unwrap());
        let r = s.row(id).await.unwrap().unwrap();
        assert_eq!((r.state.as_str(), r.importly_job_id), ("pending", None));
    }
}

async fn the_shared_budget_never_grants_more_than_the_window_holds(b: Backend) {
    let s = b.as_daemon().await;
    let other = b.open_again().await;
    let g = guess(10, Duration::from_secs(3600));
    let first = s.take_budget("import", 6, &g).await.unwrap();
    assert_eq!(first.granted, 6);
    let second = other.take_budget("import", 6, &g).await.unwrap();
    if b.is_postgres() {
        assert_eq!(second.granted, 4, "10 per window between both daemons");
        let until = second.until.expect("when more may go");
        assert!(
            until > SystemTime::now() + Duration::from_secs(3000),
            "{until:?}"
        );
        assert_eq!(other.take_budget("import", 1, &g).await.unwrap().granted, 0);
        // Each scope is its own budget.
        assert_eq!(s.take_budget("status", 5, &g).await.unwrap().granted, 5);
        // Concurrent takes never oversell.
        let g2 = guess(7, Duration::from_secs(3600));
        let (x, y) = tokio::join!(
            s.take_budget("metadata", 5, &g2),
            other.take_budget("metadata", 5, &g2)
        );
        assert_eq!(x.unwrap().granted + y.unwrap().granted, 7);
    } else {
        assert_eq!(
            second.granted, 6,
            "SQLite: the daemon's own budget is the truth"
        );
    }
}

async fn headers_correct_the_shared_budget_and_a_429_blocks_it(b: Backend) {
    let s = b.as_daemon().await;
    let g = guess(100, Duration::from_secs(3600));
    assert_eq!(s.take_budget("import", 1, &g).await.unwrap().granted, 1);
    // The server says: 20 per minute, 3 left.
    let reset = SystemTime::now() + Duration::from_secs(40);
    let seen = BudgetSeen {
        limit: Some(20),
        remaining: Some(3),
        reset: Some(reset),
        window: Some(Duration::from_secs(60)),
        blocked_until: None,
    };
    s.observe_budget("import", &seen).await.unwrap();
    let got = s.take_budget("import", 10, &g).await.unwrap();
    if b.is_postgres() {
        assert_eq!(
            got.granted, 3,
            "the server's remaining rules, not the config's 100"
        );
        let until = got.until.expect("until the server's reset");
        let off = until.duration_since(reset).unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(2), "{until:?} vs {reset:?}");
        // A 429 blocks every daemon until it says.
        let block = SystemTime::now() + Duration::from_secs(30);
        let blocked = BudgetSeen {
            limit: None,
            remaining: None,
            reset: None,
            window: None,
            blocked_until: Some(block),
        };
        s.take_budget("status", 1, &g).await.unwrap();
        s.observe_budget("status", &blocked).await.unwrap();
        let other = b.open_again().await;
        let none = other.take_budget("status", 1, &g).await.unwrap();
        assert_eq!(none.granted, 0, "blocked by another daemon's 429");
        assert!(none.until.expect("until") >= block - Duration::from_millis(5));
    } else {
        assert_eq!(got.granted, 10);
    }
}

async fn pg_a_lapsed_lease_is_lost_and_its_rows_adopted(b: Backend) {
    let dead = b.open_again().await;
    dead.register_daemon(DaemonInfo::this_process(), Duration::from_secs(30))
        .await
        .unwrap();
    for i in 0..3 {
        b.exec(&format!(
            "INSERT INTO imports (url) VALUES ('https://e.com/adopt{i}')"
        ))
        .await;
    }
    let claimed = dead
        .claim_due(JobKind::Import, 3, SystemTime::now(), u32::MAX)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    // Two were accepted (running), one is still being submitted when it dies.
    b.exec(&format!(
        "UPDATE imports SET state = 'running', importly_job_id = 'job-' || id \
         WHERE id IN ({}, {})",
        claimed[0].id, claimed[1].id
    ))
    .await;
    let live: &Store = b.as_daemon().await;
    let nothing = live.adopt(50, endpoint).await.unwrap();
    assert!(
        nothing.running.is_empty(),
        "a live lease's rows stay its own"
    );
    // Its lease lapses (as if it froze for longer than it).
    b.exec("UPDATE daemons SET heartbeat_at = now() - interval '1 hour' WHERE id = (SELECT min(id) FROM daemons)")
        .await;
    assert_eq!(
        dead.heartbeat(3).await.unwrap(),
        Lease::Lost,
        "a lapsed lease stays lost"
    );
    let adopted = live.adopt(50, endpoint).await.unwrap();
    let mut ids: Vec<i64> = adopted.running.iter().map(|r| r.id).collect();
    ids.sort();
    assert_eq!(ids, vec![claimed[0].id, claimed[1].id]);
    assert_eq!(
        adopted.running[0].importly_job_id,
        format!("job-{}", adopted.running[0].id)
    );
    assert_eq!(adopted.released, vec![claimed[2].id]);
    assert_eq!(
        b.text(&format!(
            "SELECT state FROM imports WHERE id = {}",
            claimed[2].id
        ))
        .await
        .as_deref(),
        Some("pending")
    );
    let log = live.attempts(claimed[2].id).await.unwrap();
    assert_eq!(
        log.last().map(|a| a.outcome.as_str()),
        Some("ambiguous_submit")
    );
    // The dead daemon's writes are fenced off; the adopter's go through.
    let fate = dead
        .fail(claimed[0].id, "late", None, None, 50)
        .await
        .unwrap();
    assert_eq!(fate, importlyd::store::Written::Gone);
    assert_eq!(live.running().await.unwrap().len(), 2);
    // Nothing left to adopt a second time.
    let again = live.adopt(50, endpoint).await.unwrap();
    assert!(again.running.is_empty() && again.released.is_empty());
}

/// Due import rows `0..n`, oldest first.
async fn due_imports(b: &Backend, n: u32) {
    for i in 0..n {
        b.exec(&format!(
            "INSERT INTO imports (url, next_attempt_at) \
             VALUES ('https://e.com/budgeted{i}', '2020-01-01T00:00:{i:02}.000Z')"
        ))
        .await;
    }
}

async fn a_budgeted_claim_claims_only_what_the_budget_grants(b: Backend) {
    let s = b.as_daemon().await;
    due_imports(&b, 6).await;
    let g = guess(4, Duration::from_secs(3600));
    let now = SystemTime::now();
    let claim = s
        .claim_budgeted(JobKind::Import, 5, now, u32::MAX, &g)
        .await
        .unwrap();
    assert!(!claim.full, "no slots given, none full");
    let submitting = b
        .scalar("SELECT count(*) FROM imports WHERE state = 'submitting'")
        .await;
    if b.is_postgres() {
        assert_eq!(claim.rows.len(), 4, "4 requests in the window: {claim:?}");
        assert_eq!(claim.grant.granted, 4);
        let until = claim.grant.until.expect("when the budget has more");
        assert!(
            until > SystemTime::now() + Duration::from_secs(3000),
            "{until:?}"
        );
        assert_eq!(
            submitting, 4,
            "the rows not granted stay pending, untouched"
        );
        assert_eq!(
            b.scalar("SELECT count(*) FROM imports WHERE state = 'pending' AND owner IS NULL")
                .await,
            2
        );
        // The budget is spent for every daemon.
        let other = b.open_again().await;
        assert_eq!(other.take_budget("import", 1, &g).await.unwrap().granted, 0);
        let none = s
            .claim_budgeted(JobKind::Import, 5, now, u32::MAX, &g)
            .await
            .unwrap();
        assert!(
            none.rows.is_empty() && none.grant.until.is_some(),
            "{none:?}"
        );
    } else {
        assert_eq!(
            claim.rows.len(),
            5,
            "SQLite: the daemon's own budget decides"
        );
        assert_eq!(claim.grant.granted, 5);
        assert_eq!(claim.grant.until, None);
        assert_eq!(submitting, 5);
    }
    // Oldest due first, as `claim_due`.
    let urls: Vec<&str> = claim.rows.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(urls[0], "https://e.com/budgeted0");
    assert!(claim.rows.iter().all(|r| r.kind == JobKind::Import));
}

async fn pg_a_budgeted_claim_into_full_slots_takes_no_budget_and_says_full(b: Backend) {
    let s = b.as_daemon().await;
    let other = b.open_again().await;
    other
        .register_daemon(DaemonInfo::this_process(), LEASE)
        .await
        .unwrap();
    due_imports(&b, 5).await;
    let g = guess(100, Duration::from_secs(3600));
    let now = SystemTime::now();
    // 3 slots: the claim that takes the last one says so.
    let first = s
        .claim_budgeted(JobKind::Import, 3, now, 3, &g)
        .await
        .unwrap();
    assert_eq!(first.rows.len(), 3);
    assert!(first.full, "every slot taken now");
    let partial = other
        .claim_budgeted(JobKind::Import, 1, now, 5, &g)
        .await
        .unwrap();
    assert_eq!(partial.rows.len(), 1);
    assert!(!partial.full, "4 of 5 slots taken");
    // Full: nothing claimed, nothing taken from the budget, the rows stay pending.
    let used_before = b
        .scalar("SELECT used::bigint FROM budgets WHERE scope = 'import'")
        .await;
    let none = other
        .claim_budgeted(JobKind::Import, 5, now, 4, &g)
        .await
        .unwrap();
    assert!(none.rows.is_empty() && none.full, "{none:?}");
    assert_eq!(none.grant.until, None, "not the budget's doing");
    assert_eq!(
        b.scalar("SELECT used::bigint FROM budgets WHERE scope = 'import'")
            .await,
        used_before
    );
    assert_eq!(
        b.scalar("SELECT count(*) FROM imports WHERE state = 'pending'")
            .await,
        1
    );
    // Racing claims for the last slot: one row between them.
    let (x, y) = tokio::join!(
        s.claim_budgeted(JobKind::Import, 5, now, 5, &g),
        other.claim_budgeted(JobKind::Import, 5, now, 5, &g)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.rows.len() + y.rows.len(), 1, "{x:?} {y:?}");
    assert!(x.full && y.full);
}

/// A daemon whose lease lapsed while its submit was in flight reads the accepted job late
/// and hands it over (`attach_job`): the row takes it only while it still waits for a job
/// (back in `pending` unowned, or `submitting` under a dead daemon), never from a live
/// daemon, never a second job.
async fn pg_attach_job_takes_only_a_row_still_waiting_for_a_job(b: Backend) {
    use crate::metadata::register;
    let dead_store = b.open_again().await;
    let dead = register(&b, &dead_store).await;
    let live_store = b.open_again().await;
    let live = register(&b, &live_store).await;
    let me_store = b.open_again().await;
    let me = register(&b, &me_store).await;
    let s = &me_store;
    let row = |u: &str| {
        format!(
            "INSERT INTO imports (url, last_error) VALUES ('https://e.com/{u}', 'x') RETURNING id"
        )
    };
    let submitting = |id: i64, owner: i64| {
        format!(
            "UPDATE imports SET state = 'submitting', owner = {owner}, claimed_at = now() \
             WHERE id = {id}"
        )
    };
    // state, job, owner, last_error
    let seen = |id: i64| {
        let b = &b;
        async move {
            b.text(&format!(
                "SELECT state || ' ' || coalesce(importly_job_id, '-') || ' ' \
                     || coalesce(CAST(owner AS TEXT), '-') || ' ' || coalesce(last_error, '-') \
                 FROM imports WHERE id = {id}"
            ))
            .await
            .unwrap()
        }
    };

    let pending = b.scalar(&row("pending")).await;
    let held_live = b.scalar(&row("live")).await;
    b.exec(&submitting(held_live, live)).await;
    let held_dead = b.scalar(&row("dead")).await;
    b.exec(&submitting(held_dead, dead)).await;
    let mine = b.scalar(&row("mine")).await;
    b.exec(&submitting(mine, me)).await;
    let running_dead = b.scalar(&row("running")).await;
    crate::metadata::hold(&b, running_dead, "running", dead).await;
    let completed = b.scalar(&row("completed")).await;
    b.exec(&format!(
        "UPDATE imports SET state = 'completed', completed_at = now() WHERE id = {completed}"
    ))
    .await;
    b.exec(&format!(
        "UPDATE daemons SET heartbeat_at = now() - interval '1 hour' WHERE id = {dead}"
    ))
    .await;

    // A store that never registered owns nothing and takes nothing.
    let unregistered = b.open_again().await;
    assert!(!unregistered.attach_job(pending, "job-a").await.unwrap());
    assert_eq!(seen(pending).await, "pending - - x");

    assert!(
        s.attach_job(pending, "job-a").await.unwrap(),
        "pending, unowned"
    );
    assert_eq!(seen(pending).await, format!("running job-a {me} -"));
    assert!(
        !s.attach_job(pending, "job-b").await.unwrap(),
        "it has a job now"
    );
    assert_eq!(seen(pending).await, format!("running job-a {me} -"));

    assert!(
        !s.attach_job(held_live, "job-c").await.unwrap(),
        "a live daemon's row stays its own"
    );
    assert_eq!(seen(held_live).await, format!("submitting - {live} x"));

    assert!(
        s.attach_job(held_dead, "job-d").await.unwrap(),
        "a dead daemon's submitting row"
    );
    assert_eq!(seen(held_dead).await, format!("running job-d {me} -"));

    // A daemon that stopped holds nothing either.
    live_store.daemon_stopped().await.unwrap();
    assert!(s.attach_job(held_live, "job-c").await.unwrap());
    assert_eq!(seen(held_live).await, format!("running job-c {me} -"));

    // My own submit answers through `started`, not here.
    assert!(!s.attach_job(mine, "job-e").await.unwrap(), "my own row");
    assert_eq!(seen(mine).await, format!("submitting - {me} x"));

    assert!(
        !s.attach_job(running_dead, "job-f").await.unwrap(),
        "running another job, even under a dead daemon"
    );
    assert_eq!(
        seen(running_dead).await,
        format!("running job-{running_dead} {dead} x")
    );
    assert!(!s.attach_job(completed, "job-g").await.unwrap(), "finished");
    assert_eq!(seen(completed).await, "completed - - x");
    assert!(!s.attach_job(-1, "job-h").await.unwrap(), "no such row");
    assert_eq!(s.running().await.unwrap().len(), 3);
}
