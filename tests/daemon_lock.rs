//! Issue 11: one daemon per SQLite file, and `status` says whether it runs. Real processes:
//! the `importlyd` binary against the in-process simulator, kill -9 included.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// `status --json`'s live daemons.
async fn live(config: &Path) -> Vec<Value> {
    let out = cli(config, &["status", "--json"]).await.ok();
    out.json()["daemons"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn status_text(config: &Path) -> String {
    cli(config, &["status"]).await.ok().stdout
}

/// Waits until `status --json` lists exactly the daemon with `pid`.
async fn wait_live(config: &Path, pid: u32) {
    let what = format!("status to list daemon pid {pid}");
    wait_until(&what, secs(20), || async move {
        let l = live(config).await;
        l.len() == 1 && l[0]["pid"].as_u64() == Some(u64::from(pid))
    })
    .await;
}

/// What a second daemon could have disturbed: every column of every row, and the log.
async fn snapshot(db: &Db) -> (String, usize) {
    (
        format!("{:?}", db.rows().await),
        db.all_attempts().await.len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_is_refused_and_the_first_keeps_its_rows() {
    let mut sim_cfg = sim_config();
    sim_cfg.job_duration = secs(120);
    let sim = start_sim(sim_cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    db.insert_many(
        &(1..=3)
            .map(|i| format!("https://media.example.com/{i}.mp4"))
            .collect::<Vec<_>>(),
    )
    .await;

    let mut first = Proc::start(&config, Some(KEY), "first");
    // Two jobs running (the concurrency), one row waiting for a slot.
    wait_until("two rows running", secs(20), || async {
        db.count("running").await == 2
    })
    .await;
    wait_live(&config, first.pid).await;
    let before = snapshot(&db).await;

    let mut second = Proc::start(&config, Some(KEY), "second");
    let status = second.wait_exit(secs(20)).await;
    assert_eq!(status.code(), Some(1), "log:\n{}", second.log_text());
    let log = second.log_text();
    assert!(
        log.contains("another importlyd daemon is running on this database")
            && log.contains(&format!("pid {} on ", first.pid)),
        "the refusal names the first daemon: {log}"
    );
    assert_eq!(
        snapshot(&db).await,
        before,
        "the second daemon touched the rows"
    );
    wait_live(&config, first.pid).await;

    // kill -9 drops the lock with the process: a new daemon starts and takes over.
    first.signal("KILL");
    first.wait_exit(secs(10)).await;
    let mut third = Proc::start(&config, Some(KEY), "third");
    wait_live(&config, third.pid).await;
    // Up, signal handlers installed (start-up recovery ran), before the SIGTERM below.
    third
        .wait_log("resuming polls of running jobs", secs(20))
        .await;
    assert_eq!(db.count("running").await, 2, "{}", db.dump().await);
    let status = third.terminate(secs(15)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", third.log_text());
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_whether_a_daemon_runs() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;

    let text = status_text(&config).await;
    assert!(
        text.contains("daemon:    no daemon has run against this database"),
        "{text}"
    );
    assert!(live(&config).await.is_empty());

    let mut daemon = Proc::start(&config, Some(KEY), "first");
    wait_live(&config, daemon.pid).await;
    let d = live(&config).await.remove(0);
    for k in [
        "id",
        "host",
        "pid",
        "version",
        "started_at",
        "heartbeat_at",
        "in_flight",
    ] {
        assert!(!d[k].is_null(), "daemons[0].{k} missing: {d}");
    }
    let text = status_text(&config).await;
    assert!(
        text.contains("daemon:    running since")
            && text.contains(&format!("(pid {} on ", daemon.pid)),
        "{text}"
    );

    // The heartbeat is refreshed while it runs: set it back, and it comes back fresh.
    let set_back =
        "UPDATE daemons SET heartbeat_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3 minutes')";
    sqlx::query(set_back).execute(&db.pool).await.unwrap();
    assert!(
        live(&config).await.is_empty(),
        "a 3-minute-old heartbeat counts as live"
    );
    wait_live(&config, daemon.pid).await;

    // kill -9: the row stays, and once its heartbeat is old, status says so.
    daemon.signal("KILL");
    daemon.wait_exit(secs(10)).await;
    sqlx::query(set_back).execute(&db.pool).await.unwrap();
    let text = status_text(&config).await;
    assert!(text.contains("daemon:    no daemon seen for 3m"), "{text}");
    assert!(text.contains(&format!("pid {} on ", daemon.pid)), "{text}");
    assert!(live(&config).await.is_empty());

    // A clean stop says so at once.
    let mut next = Proc::start(&config, Some(KEY), "next");
    wait_live(&config, next.pid).await;
    // Up and working (so its signal handlers are in place) before the SIGTERM below.
    let id = db.insert("https://media.example.com/after.mp4").await;
    wait_until("the new row completed", secs(20), || async {
        db.row(id).await.state == "completed"
    })
    .await;
    assert_eq!(next.terminate(secs(15)).await.code(), Some(0));
    let text = status_text(&config).await;
    assert!(
        text.contains(&format!(
            "daemon:    not running; the last one (pid {} on ",
            next.pid
        )),
        "{text}"
    );
    assert!(live(&config).await.is_empty());
    db.close().await;
}
