//! Conformance: the daemons a store lists for `status`.
//!
//! SQLite keeps one daemon per file and judges liveness by heartbeat age; PostgreSQL keeps
//! one row per registration, says itself whether the lease is live (database clock) and
//! counts the jobs each daemon holds. `StoredDaemon::is_live` is what `status` asks.

use std::time::SystemTime;

use importlyd::store::{DaemonInfo, StoredDaemon};

use crate::metadata::{hold, insert, register};
use crate::{Backend, conformance, conformance_pg};

conformance!(
    a_registered_daemon_is_listed_live,
    a_stopped_daemon_is_not_live,
);

conformance_pg!(each_daemon_counts_only_its_own_jobs);

async fn listed(b: &Backend) -> Vec<StoredDaemon> {
    b.store.daemons().await.expect("daemons")
}

async fn a_registered_daemon_is_listed_live(b: Backend) {
    assert_eq!(listed(&b).await, vec![], "no daemon yet");
    let me = DaemonInfo::this_process();
    let id = register(&b, &b.store).await;
    let all = listed(&b).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let d = &all[0];
    assert_eq!(
        (d.host.as_str(), d.pid),
        (me.host.as_str(), i64::from(me.pid))
    );
    assert_eq!(d.version, me.version);
    assert_eq!(d.stopped_at, None);
    // Times of this test's minute (a garbled one would read as an error, not a time).
    for t in [d.started_at, d.heartbeat_at] {
        let age = SystemTime::now().duration_since(t).unwrap_or_default();
        assert!(age < std::time::Duration::from_secs(60), "{d:?}");
    }
    assert!(d.is_live(SystemTime::now()), "{d:?}");
    if b.is_postgres() {
        assert_eq!(d.id, id.to_string());
        assert_eq!(d.live, Some(true));
        assert_eq!(d.in_flight, Some(0));
        // The jobs it holds, submitting or running; not another's, not a finished one.
        let url = "https://media.example.com/conformance/daemon.mp4";
        let (a, c, done) = (
            insert(&b, url, "import").await,
            insert(&b, url, "import").await,
            insert(&b, url, "import").await,
        );
        hold(&b, a, "submitting", id).await;
        hold(&b, c, "running", id).await;
        hold(&b, done, "running", id).await;
        b.exec(&format!(
            "UPDATE imports SET state = 'completed' WHERE id = {done}"
        ))
        .await;
        assert_eq!(listed(&b).await[0].in_flight, Some(2));
    } else {
        // One daemon per file: every row in flight is its own (status counts them).
        assert_eq!((d.live, d.in_flight), (None, None));
    }
}

async fn a_stopped_daemon_is_not_live(b: Backend) {
    // Not a daemon: nothing to mark.
    b.store.daemon_stopped().await.expect("no-op");
    assert_eq!(listed(&b).await, vec![]);
    register(&b, &b.store).await;
    assert!(listed(&b).await[0].is_live(SystemTime::now()));
    b.store.daemon_stopped().await.expect("stopped");
    let all = listed(&b).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].stopped_at.is_some(), "{all:?}");
    assert!(!all[0].is_live(SystemTime::now()), "{all:?}");
    if b.is_postgres() {
        assert_eq!(all[0].live, Some(false));
    }
}

/// PostgreSQL: two daemons on one database are both listed, each with its own jobs, and
/// one stopping leaves the other live.
async fn each_daemon_counts_only_its_own_jobs(b: Backend) {
    let (one, two) = (b.open_again().await, b.open_again().await);
    let first = register(&b, &one).await;
    let second = register(&b, &two).await;
    assert_ne!(first, second, "a fresh id per registration");
    let url = "https://media.example.com/conformance/two-daemons.mp4";
    for owner in [first, second, second] {
        let id = insert(&b, url, "import").await;
        hold(&b, id, "running", owner).await;
    }
    let of = |all: &[StoredDaemon], id: i64| {
        all.iter()
            .find(|d| d.id == id.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("daemon {id} in {all:?}"))
    };
    let all = listed(&b).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(of(&all, first).in_flight, Some(1));
    assert_eq!(of(&all, second).in_flight, Some(2));
    assert!(all.iter().all(|d| d.is_live(SystemTime::now())));

    one.daemon_stopped().await.expect("stopped");
    let all = listed(&b).await;
    assert!(!of(&all, first).is_live(SystemTime::now()));
    assert!(of(&all, second).is_live(SystemTime::now()));
}
