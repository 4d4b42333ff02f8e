//! Issue 11, the scheduler's part: nothing a user, an operator or the server does to a row
//! in flight may wedge the daemon or leave a row wrong; restarts and SIGHUP do what they say.

mod common;

use common::*;
use importlyd::scheduler::Control;
use importlyd::sim::{BucketConfig, FaultMix, SimConfig};
use tokio::sync::oneshot;

const URL: &str = "https://media.example.com";

async fn delete_row(db: &Db, id: i64) {
    sqlx::query("DELETE FROM imports WHERE id = ?")
        .bind(id)
        .execute(&db.pool)
        .await
        .expect("delete the row");
}

async fn store_pause(db: &Db, scope: &str, status: i64, next_probe_in_s: i64) {
    sqlx::query(
        "INSERT INTO pauses (scope, reason, http_status, since, next_probe) VALUES \
         (?1, 'paused by an earlier run', ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour'), \
          strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3 || ' seconds'))",
    )
    .bind(scope)
    .bind(status)
    .bind(next_probe_in_s)
    .execute(&db.pool)
    .await
    .expect("store a pause");
}

/// The attempt-log id of a row's accepted submit: the order in which rows were started.
async fn accepted_at(db: &Db, id: i64) -> i64 {
    db.attempts(id)
        .await
        .iter()
        .find(|a| a.outcome == "accepted")
        .map(|a| a.id)
        .unwrap_or_else(|| panic!("row {id} has no accepted submit"))
}

/// A row deleted while its submit is in flight: its failed answer cannot be logged (the
/// attempt log's foreign key). The daemon takes that as done, instead of retrying the write
/// forever with every other row waiting behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_deleted_while_its_submit_is_in_flight_does_not_stall_the_daemon() {
    let sim = start_sim(sim_config()).await;
    sim.set_faults(FaultMix {
        ptimeout: 1.0,
        timeout_delay: secs(3),
        ..FaultMix::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.api.request_timeout = ms(700);
    // One slot: the later row can only go once the deleted row's answer is dealt with.
    cfg.limits.import.concurrent = 1;
    let db = Db::create(&cfg.database.path).await;
    let gone = db.insert(&format!("{URL}/deleted.mp4")).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    let s = &sim;
    wait_until("the submit in flight", secs(10), || async move {
        s.stats().import_posts >= 1
    })
    .await;
    // Inserted before the delete, so that SQLite does not give the deleted row's id again.
    let next = db.insert(&format!("{URL}/next.mp4")).await;
    // Its owner deletes the row; the submit then times out (a failure to log).
    delete_row(&db, gone).await;
    sim.set_faults(FaultMix::default());
    let d = &db;
    wait_until("a later row completed", secs(15), || async move {
        d.row(next).await.state == "completed"
    })
    .await;

    daemon.stop().await;
    sim.shutdown().await;
}

/// A running row deleted while its job is polled: a failed poll cannot be logged. The job
/// ends for us; the daemon goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_row_deleted_while_polled_ends_its_job() {
    let sim = start_sim(SimConfig {
        job_duration: secs(30),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    // One slot: the later row can only go once the deleted row's job has ended for us.
    cfg.limits.import.concurrent = 1;
    let db = Db::create(&cfg.database.path).await;
    let gone = db.insert(&format!("{URL}/deleted-running.mp4")).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    let d = &db;
    wait_until("the row running", secs(10), || async move {
        d.row(gone).await.state == "running"
    })
    .await;
    // Inserted before the delete, so that SQLite does not give the deleted row's id again.
    let next = db.insert(&format!("{URL}/next-fast.mp4")).await;
    delete_row(&db, gone).await;
    // Its next polls fail (a failure to log for a row that is gone).
    sim.set_faults(FaultMix {
        p500: 1.0,
        ..FaultMix::default()
    });
    let s = &sim;
    wait_until("a poll failed after the delete", secs(10), || async move {
        s.stats().server_errors >= 1
    })
    .await;
    sim.set_faults(FaultMix::default());
    // Jobs last 30 s here: a running state is enough to show the daemon is not wedged in a
    // write and the deleted row's slot is free.
    wait_until("a later row submitted", secs(15), || async move {
        d.row(next).await.state == "running"
    })
    .await;
    // The deleted row's job is no longer polled.
    let polls = sim.stats().status_requests;
    let p = polls;
    hold_for(
        "no polls of the deleted row's job",
        ms(600),
        || async move {
            // At most the later row's polls (every 100 ms: 7 in the period); two jobs would
            // make about 13.
            s.stats().status_requests <= p + 9
        },
    )
    .await;
    daemon.stop().await;
    sim.shutdown().await;
}

/// A row cancelled while its submit is in flight stays cancelled: the accepted job is not
/// written over it and never polled; the ticket still names the orphaned job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_cancelled_while_its_submit_is_in_flight_is_not_started() {
    let sim = start_sim(sim_config()).await;
    // The answer comes late but within the request timeout: an accepted submit.
    sim.set_faults(FaultMix {
        ptimeout: 1.0,
        timeout_delay: ms(800),
        ..FaultMix::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let db = Db::create(&cfg.database.path).await;
    let id = db.insert(&format!("{URL}/cancelled-in-flight.mp4")).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    let s = &sim;
    wait_until("the submit in flight", secs(10), || async move {
        s.stats().import_posts >= 1
    })
    .await;
    sqlx::query("UPDATE imports SET state = 'cancelled' WHERE id = ?")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let d = &db;
    wait_until("the accepted submit logged", secs(10), || async move {
        d.attempts(id).await.iter().any(|a| a.outcome == "accepted")
    })
    .await;
    let r = db.row(id).await;
    assert_eq!(r.state, "cancelled", "{r:?}");
    assert_eq!(r.importly_job_id, None, "{r:?}");
    hold_for("the orphaned job never polled", ms(600), || async move {
        s.stats().status_requests == 0
    })
    .await;
    daemon.stop().await;
    sim.shutdown().await;
}

/// Rows A, B, C inserted in that order; A meets a concurrency 429 (another client holds
/// the account's slot). A keeps its place: once the slot is free it is started first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_snoozed_by_a_429_keeps_its_place_in_the_queue() {
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(10_000, secs(60), 1),
        job_duration: ms(200),
        ..sim_config()
    })
    .await;
    sim.hold_slots(1);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.limits.import.concurrent = 1;
    let db = Db::create(&cfg.database.path).await;
    let a = db.insert(&format!("{URL}/a.mp4")).await;
    let b = db.insert(&format!("{URL}/b.mp4")).await;
    let c = db.insert(&format!("{URL}/c.mp4")).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    let s = &sim;
    wait_until("A refused for want of a slot", secs(10), || async move {
        s.stats().concurrency_limited >= 1
    })
    .await;
    sim.release_slots();
    let d = &db;
    wait_until("all three completed", secs(20), || async move {
        d.count("completed").await == 3
    })
    .await;
    daemon.stop().await;
    let order = [
        accepted_at(&db, a).await,
        accepted_at(&db, b).await,
        accepted_at(&db, c).await,
    ];
    assert!(
        order[0] < order[1] && order[1] < order[2],
        "started out of order (A, B, C attempt ids {order:?}):\n{}",
        db.dump().await
    );
    sim.shutdown().await;
}

/// A pause a previous run stored (a 401, key since fixed) is probed once at start-up, not
/// after a whole `pause.probe_interval`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_pause_is_probed_at_start_up() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let db = Db::create(&cfg.database.path).await;
    store_pause(&db, "all", 401, 3600).await;
    let id = db.insert(&format!("{URL}/after-restart.mp4")).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    let d = &db;
    wait_until("the row completed", secs(10), || async move {
        d.row(id).await.state == "completed"
    })
    .await;
    assert!(db.pauses().await.is_empty(), "{}", db.dump().await);
    daemon.stop().await;
    sim.shutdown().await;
}

/// SIGHUP re-reads `poll.queue_interval`: with an hour at start, a pause lifted by
/// `importlyd resume` (in the database) would go unnoticed for an hour; after a reload to
/// 30 ms it is noticed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_queue_interval() {
    let sim = start_sim(SimConfig {
        api_key: "old-key".into(),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.poll.queue_interval = secs(3600);
    let db = Db::create(&cfg.database.path).await;
    let id = db.insert(&format!("{URL}/queue-interval.mp4")).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    let s = &sim;
    wait_until("paused by a 401", secs(10), || async move {
        s.stats().unauthorized >= 1
    })
    .await;
    let mut fast = cfg.clone();
    fast.poll.queue_interval = ms(30);
    let (applied, in_force) = oneshot::channel();
    daemon
        .control
        .send(Control::Reload {
            config: Box::new(fast),
            key: None,
            applied,
        })
        .await
        .expect("send the reload");
    in_force.await.expect("reload applied");
    // The reload probes at once, still with the wrong key.
    wait_until("the reload's probe refused", secs(10), || async move {
        s.stats().unauthorized >= 2
    })
    .await;
    sim.set_api_key(KEY);
    // `importlyd resume`: the pause goes from the database.
    sqlx::query("DELETE FROM pauses")
        .execute(&db.pool)
        .await
        .unwrap();
    let d = &db;
    wait_until("the row completed", secs(10), || async move {
        d.row(id).await.state == "completed"
    })
    .await;
    daemon.stop().await;
    sim.shutdown().await;
}

/// The binary: the key's source is logged at start, an `api.key_file` the environment
/// overrides is warned about, and each SIGHUP logs exactly one outcome line (a rejected
/// config is not also "reloaded").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_logs_one_outcome_line_and_the_key_source() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, "a-key-nobody-reads\n").unwrap();
    cfg.api.key_file = key_file.display().to_string();
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    let first = db.insert(&format!("{URL}/hup-1.mp4")).await;
    let mut d = Proc::start(&config, Some(KEY), "hup");
    let dd = &db;
    // Completed: the daemon is well past installing its signal handlers.
    wait_until("the first row completed", secs(15), || async move {
        dd.row(first).await.state == "completed"
    })
    .await;
    let log = d.log_text();
    assert!(
        log.contains("API key loaded") && log.contains("environment variable IMPORTLY_API_KEY"),
        "{log}"
    );
    assert!(log.contains("api.key_file is set but ignored"), "{log}");
    assert!(
        !log.contains("a-key-nobody-reads"),
        "the key is never logged"
    );

    std::fs::write(&config, "[poll]\nstatus_interval = \"banana\"\n").unwrap();
    d.signal("HUP");
    d.wait_log("new config rejected", secs(10)).await;
    std::fs::write(&config, config_toml(&cfg)).unwrap();
    d.signal("HUP");
    d.wait_log("reloaded configuration and API key", secs(10))
        .await;
    let log = d.log_text();
    assert_eq!(log.matches("new config rejected").count(), 1, "{log}");
    assert_eq!(log.matches("reloaded configuration").count(), 1, "{log}");
    let second = db.insert(&format!("{URL}/hup-2.mp4")).await;
    wait_until(
        "a row after the reloads completed",
        secs(15),
        || async move { dd.row(second).await.state == "completed" },
    )
    .await;
    assert!(d.terminate(secs(10)).await.success());
    sim.shutdown().await;
}

/// Issue 12: two metadata rows for one URL make one API call; the second completes from
/// the cache once the first has filled it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_metadata_rows_for_one_url_make_one_call() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let db = Db::create(&cfg.database.path).await;
    let url = format!("{URL}/twice.mp4");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO imports (url, kind) VALUES (?, 'metadata') RETURNING id",
        )
        .bind(&url)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let daemon = Daemon::start(&cfg, KEY).await;
    let d = &db;
    wait_until("both completed", secs(15), || async move {
        d.count("completed").await == 2
    })
    .await;
    daemon.stop().await;
    assert_eq!(sim.stats().metadata_posts, 1, "{}", db.dump().await);
    let second = db.row(ids[1]).await;
    assert!(
        second
            .result
            .as_deref()
            .unwrap_or("")
            .contains("\"fromCache\":true"),
        "{second:?}"
    );
    assert_eq!(second.last_error, None, "{second:?}");
    sim.shutdown().await;
}

/// Whether process `pid` has a handler for signal `sig` (its `SigCgt` mask in /proc).
fn catches(pid: u32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// A SIGTERM in the first moments of `run` is a clean stop (exit 0), not a death by the
/// signal. A signal sent before the process runs any code of ours cannot be caught by any
/// program, so "at once" here is: as soon as the daemon catches a signal of its own
/// (SIGXFSZ, its earliest handler before this fix, set before the key, the lock and the
/// database), and as soon as it has written its first log line. Before the fix the stop
/// handlers were installed only after all of that, in a spawned task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_right_after_start_is_a_clean_exit() {
    let sim = start_sim(sim_config()).await;
    for when in ["first handler", "first log line"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = daemon_config(dir.path(), &sim);
        let config = write_config(dir.path(), &cfg);
        let mut d = Proc::start(&config, Some(KEY), "early-term");
        let deadline = std::time::Instant::now() + secs(10);
        loop {
            let started = match when {
                "first handler" => catches(d.pid, libc::SIGXFSZ),
                _ => std::fs::metadata(&d.log).is_ok_and(|m| m.len() > 0),
            };
            if started {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{when}: never seen");
            // A tight loop: the window before the fix was a few milliseconds.
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        d.signal("TERM");
        let status = d.wait_exit(secs(15)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM at the {when}: {status:?}\n{}",
            d.log_text()
        );
    }
    sim.shutdown().await;
}
