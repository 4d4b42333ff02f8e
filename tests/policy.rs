//! Issue 3: the error policy table row by row, rate limits, concurrency shared with another
//! client, credits running out, a wrong key fixed through the key file and SIGHUP, retries
//! with growing gaps, and pauses that live in the database.

mod common;

use common::*;
use importlyd::sim::{BucketConfig, FaultMix, Sim, SimConfig};
use importlyd::store::StoredAttempt;
use serde_json::Value;

const URL: &str = "https://media.example.com";

fn outcomes(attempts: &[StoredAttempt]) -> Vec<&str> {
    attempts.iter().map(|a| a.outcome.as_str()).collect()
}

/// Runs one row through an in-process daemon until it is terminal; returns the database
/// (with the temp dir that holds it) and the row id.
async fn run_one(
    sim: &Sim,
    cfg_edit: impl FnOnce(&mut importlyd::config::Config),
    url: &str,
) -> (tempfile::TempDir, Db, i64) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), sim);
    cfg_edit(&mut cfg);
    let db = Db::create(&cfg.database.path).await;
    let id = db.insert(url).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    let d = &db;
    wait_until(&format!("{url} terminal"), secs(15), || async move {
        matches!(d.row(id).await.state.as_str(), "completed" | "failed")
    })
    .await;
    daemon.stop().await;
    (dir, db, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_fails_at_once_with_the_body() {
    let sim = start_sim(sim_config()).await;
    let url = format!("{URL}/bad/a.mp4");
    let (_dir, db, id) = run_one(&sim, |_| {}, &url).await;
    let r = db.row(id).await;
    assert_eq!(r.state, "failed");
    assert_eq!(r.attempts, 0, "a 400 is not retried");
    assert!(r.importly_job_id.is_none());
    let err = r.last_error.unwrap();
    assert!(
        err.contains("400") && err.contains("Invalid media URL"),
        "{err}"
    );
    let log = db.attempts(id).await;
    assert_eq!(outcomes(&log), ["bad_request"]);
    assert_eq!(log[0].http_status, Some(400));
    assert_eq!(log[0].endpoint, "/import");
    assert!(
        log[0]
            .response_body
            .as_deref()
            .unwrap()
            .contains("Invalid media URL")
    );
    assert!(log[0].request_body.as_deref().unwrap().contains(&url));
    assert!(
        log[0].rate_limit.as_deref().unwrap().contains("remaining"),
        "rate-limit headers kept"
    );
    assert_eq!(sim.stats().import_posts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_on_import_fails_at_once() {
    let sim = start_sim(sim_config()).await;
    let (_dir, db, id) = run_one(&sim, |_| {}, &format!("{URL}/notfound/a.mp4")).await;
    let r = db.row(id).await;
    assert_eq!(r.state, "failed");
    assert_eq!(r.attempts, 0);
    let err = r.last_error.unwrap();
    assert!(err.contains("not publicly reachable"), "{err}");
    let log = db.attempts(id).await;
    assert_eq!(outcomes(&log), ["not_found"]);
    assert_eq!(log[0].http_status, Some(404));
    assert_eq!(sim.stats().import_posts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_on_status_fails_the_row_and_keeps_the_job_id() {
    let sim = start_sim(SimConfig {
        job_duration: secs(2),
        job_ttl: ms(200),
        ..sim_config()
    })
    .await;
    let (_dir, db, id) = run_one(&sim, |_| {}, &format!("{URL}/expires.mp4")).await;
    let r = db.row(id).await;
    assert_eq!(r.state, "failed");
    let err = r.last_error.unwrap();
    assert!(err.contains("job not found or expired"), "{err}");
    let job = r.importly_job_id.expect("job id kept");
    let log = db.attempts(id).await;
    assert_eq!(outcomes(&log), ["accepted", "not_found"]);
    assert_eq!(log[1].http_status, Some(404));
    assert!(
        log[1].endpoint.starts_with("/import/status"),
        "{}",
        log[1].endpoint
    );
    assert_eq!(log[1].job_id.as_deref(), Some(job.as_str()));
    assert_eq!(
        sim.stats().import_posts,
        1,
        "an expired job is not re-submitted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_job_fails_the_row_with_importlys_message() {
    let sim = start_sim(sim_config()).await;
    let (_dir, db, id) = run_one(&sim, |_| {}, &format!("{URL}/fail/a.mp4")).await;
    let r = db.row(id).await;
    assert_eq!(r.state, "failed");
    assert_eq!(r.attempts, 0);
    assert!(r.importly_job_id.is_some());
    let err = r.last_error.unwrap();
    assert!(err.contains("Unsupported media"), "{err}");
    let result: Value = serde_json::from_str(&r.result.expect("result kept")).unwrap();
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"], "Unsupported media");
    let log = db.attempts(id).await;
    assert_eq!(outcomes(&log), ["accepted", "job_failed"]);
    assert_eq!(sim.stats().import_posts, 1);
}

/// Two seconds windows, three imports each at the simulator; the daemon's own budget is far
/// looser. Another client has used up the current window before the daemon starts, so its
/// first POST meets a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_429_pauses_the_bucket_until_the_reset() {
    let window = secs(2);
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(3, window, 2),
        job_duration: ms(200),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.limits.import.requests = 100;
    cfg.limits.import.window = window;
    let db = Db::create(&cfg.database.path).await;
    let urls: Vec<String> = (1..=6).map(|i| format!("{URL}/rl-{i}.mp4")).collect();
    db.insert_many(&urls).await;

    ensure_room_in_window(window, ms(1300)).await;
    let http = reqwest::Client::new();
    for i in 0..3 {
        let resp = http
            .post(format!("{}/import", sim.base_url()))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"url": format!("{URL}/bad/other-client-{i}.mp4")}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "the other client's request is counted");
    }
    let daemon = Daemon::start(&cfg, KEY).await;
    let d = &db;
    wait_until("6 rows completed", secs(20), || async move {
        d.count("completed").await == 6
    })
    .await;
    daemon.stop().await;

    let stats = sim.stats();
    assert!(
        stats.rate_limited >= 1,
        "the daemon's first POST met the exhausted window"
    );
    for r in db.rows().await {
        assert_eq!(r.attempts, 0, "429s never count: {r:?}");
    }
    for (url, n) in &stats.accepted_by_url {
        assert_eq!(*n, 1, "{url} accepted {n} times");
    }
    let log = db.all_attempts().await;
    let limited: Vec<&StoredAttempt> = log.iter().filter(|a| a.outcome == "rate_limited").collect();
    assert_eq!(
        limited.len() as u64,
        stats.rate_limited,
        "every 429 is logged"
    );
    let our_posts = log.iter().filter(|a| a.endpoint == "/import").count() as u64;
    assert_eq!(
        our_posts + 3,
        stats.import_posts,
        "every POST is in the log"
    );

    // No POST between a 429 and the later of its retryAfter and reset, except those already
    // in flight when its answer arrived.
    for a in &limited {
        assert_eq!(a.http_status, Some(429));
        let body: Value = serde_json::from_str(a.response_body.as_deref().unwrap()).unwrap();
        let reset_ms = body["reset"].as_u64().expect("reset in ms");
        let retry_after = body["retryAfter"].as_u64().expect("retryAfter in s");
        let (sent, answered) = (unix_ms(a.started_at), unix_ms(a.finished_at));
        let until = reset_ms.max(sent + retry_after * 1000);
        let in_flight = log
            .iter()
            .filter(|b| b.endpoint == "/import" && unix_ms(b.started_at) <= answered)
            .filter(|b| unix_ms(b.finished_at) > answered)
            .count();
        let inside: Vec<u64> = stats
            .post_times
            .iter()
            .map(|(_, t)| unix_ms(*t))
            .filter(|t| *t > answered && *t < until)
            .collect();
        assert!(
            inside.len() <= in_flight,
            "POSTs at {inside:?} between a 429 answered at {answered} and {until}"
        );
    }
    // The daemon adapted to the server's stricter budget: only requests already in flight
    // when the window ran out met a 429.
    assert!(
        stats.rate_limited <= 2,
        "{} rate-limit 429s",
        stats.rate_limited
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_429_with_a_slot_held_by_another_client() {
    let sim = start_sim(SimConfig {
        job_duration: ms(250),
        ..sim_config()
    })
    .await;
    // At first another client holds both slots, then one, then none.
    sim.hold_slots(2);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let db = Db::create(&cfg.database.path).await;
    let urls: Vec<String> = (1..=8).map(|i| format!("{URL}/cc-{i}.mp4")).collect();
    db.insert_many(&urls).await;
    let started = std::time::Instant::now();
    let daemon = Daemon::start(&cfg, KEY).await;
    let (d, s) = (&db, &sim);
    wait_until("the daemon probing for a slot", secs(10), || async move {
        s.stats().concurrency_limited >= 2
    })
    .await;
    assert_eq!(sim.stats().accepted_imports, 0);
    assert!(db.all_in("pending").await, "{}", db.dump().await);
    sim.hold_slots(1);
    wait_until(
        "3 rows completed on the one free slot",
        secs(20),
        || async move { d.count("completed").await >= 3 },
    )
    .await;
    sim.release_slots();
    wait_until("8 rows completed", secs(20), || async move {
        d.count("completed").await == 8
    })
    .await;
    let elapsed = started.elapsed();
    daemon.stop().await;

    let stats = sim.stats();
    assert!(
        stats.max_concurrent_imports <= 2,
        "{}",
        stats.max_concurrent_imports
    );
    assert!(stats.concurrency_limited >= 1, "the held slot was noticed");
    // The daemon keeps to the one free slot and probes for the other now and then (every
    // limits.probe_delay at most), rather than asking again and again.
    let probes = elapsed.as_millis() as u64 / cfg.limits.probe_delay.as_millis() as u64;
    assert!(
        stats.concurrency_limited <= probes + 8,
        "{} concurrency 429s in {elapsed:?}",
        stats.concurrency_limited
    );
    for r in db.rows().await {
        assert_eq!(r.attempts, 0, "concurrency 429s never count: {r:?}");
    }
    for (url, n) in &stats.accepted_by_url {
        assert_eq!(*n, 1, "{url} accepted {n} times");
    }
    let log = db.all_attempts().await;
    let refused = log
        .iter()
        .filter(|a| a.outcome == "concurrency_limited")
        .count() as u64;
    assert_eq!(
        refused, stats.concurrency_limited,
        "every concurrency 429 is logged"
    );
    assert!(
        log.iter()
            .filter(|a| a.outcome == "concurrency_limited")
            .all(|a| a.http_status == Some(429))
    );
    sim.shutdown().await;
}

/// The account allows fewer jobs than the config: the first concurrency 429's
/// `concurrentLimit` becomes a ceiling, so the daemon stops probing for slots that do not
/// exist (each probe would cost a request of the import budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_account_concurrency_limit_is_learned_from_the_429_body() {
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(10_000, secs(60), 1),
        job_duration: ms(300),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.limits.import.concurrent = 3;
    let db = Db::create(&cfg.database.path).await;
    let urls: Vec<String> = (1..=6).map(|i| format!("{URL}/low-cc-{i}.mp4")).collect();
    db.insert_many(&urls).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    let d = &db;
    wait_until("6 rows completed", secs(30), || async move {
        d.count("completed").await == 6
    })
    .await;
    daemon.stop().await;
    let stats = sim.stats();
    assert_eq!(stats.max_concurrent_imports, 1);
    // Only the first burst (3 submits for 1 slot) may be refused: 6 jobs of 300 ms with a
    // 100 ms probe delay would otherwise draw a dozen or more refused probes.
    assert!(
        stats.concurrency_limited <= 2,
        "{} concurrency 429s: the account's limit of 1 was not learned",
        stats.concurrency_limited
    );
    for r in db.rows().await {
        assert_eq!(r.attempts, 0, "{r:?}");
    }
    sim.shutdown().await;
}

/// A wrong key in the key file pauses everything; fixing the file and SIGHUP resumes. A key
/// rotated later pauses again; the pause survives a restart, and `importlyd resume` lifts it
/// through the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_pauses_until_the_key_file_is_fixed_and_sighup() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, "wrong-key\n").unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.api.key_file = key_file.to_str().unwrap().into();
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    let d = &db;
    db.insert_many(
        &(1..=3)
            .map(|i| format!("{URL}/auth-{i}.mp4"))
            .collect::<Vec<_>>(),
    )
    .await;

    let mut daemon = Proc::start(&config, None, "wrong-key");
    let s = &sim;
    wait_until(
        "a 401 pause, rows back to pending, the 401s logged",
        secs(10),
        || async move {
            d.pauses()
                .await
                .iter()
                .any(|p| p.scope == "all" && p.http_status == Some(401))
                && d.all_in("pending").await
                && d.all_attempts().await.len() as u64 == s.stats().unauthorized
        },
    )
    .await;
    let st = cli(&config, &["status", "--json"]).await.ok().json();
    let paused = &st["paused"];
    assert!(
        paused["reason"].as_str().unwrap_or("").contains("401"),
        "{st}"
    );
    assert!(
        paused["since"].is_string() && paused["next_probe"].is_string(),
        "{st}"
    );
    for r in db.rows().await {
        assert_eq!((r.state.as_str(), r.attempts), ("pending", 0), "{r:?}");
    }
    let refused = sim.stats().unauthorized;
    assert!(refused >= 1);
    assert!(
        refused <= 2,
        "at most the requests already in flight meet the 401: {refused}"
    );
    let log = db.all_attempts().await;
    assert!(
        log.iter()
            .all(|a| a.outcome == "unauthorized" && a.http_status == Some(401)),
        "{log:?}"
    );
    assert_eq!(log.len() as u64, refused, "every 401 is logged");
    let text = daemon.log_text();
    assert!(
        text.lines()
            .any(|l| l.contains("ERROR") && l.contains("paused") && l.contains("401")),
        "one ERROR line says why it paused:\n{text}"
    );
    hold_for("no more requests while paused", ms(400), || async {
        sim.stats().unauthorized == refused && sim.stats().import_posts == refused
    })
    .await;

    // Fix the file (surrounding whitespace is trimmed) and reload.
    std::fs::write(&key_file, format!("  {KEY}  \n")).unwrap();
    daemon.signal("HUP");
    wait_until("3 rows completed after SIGHUP", secs(10), || async move {
        d.count("completed").await == 3
    })
    .await;
    assert!(db.pauses().await.is_empty(), "the pause was lifted");

    // The account's key is rotated: the next row meets a 401 and everything pauses again.
    sim.set_api_key("rotated-key");
    db.insert(&format!("{URL}/auth-4.mp4")).await;
    wait_until("a second 401 pause", secs(10), || async move {
        !d.pauses().await.is_empty()
    })
    .await;
    assert_eq!(daemon.terminate(secs(8)).await.code(), Some(0));
    let stored = db.pauses().await;
    assert_eq!(stored.len(), 1, "the pause is stored");

    // The operator puts the new key in the file and restarts: the stored pause is probed
    // once at start-up (issue 11), and the probe, finding the key good, lifts it.
    std::fs::write(&key_file, "rotated-key\n").unwrap();
    let mut daemon = Proc::start(&config, None, "restarted");
    daemon
        .wait_log("paused since a previous run; probing once now", secs(10))
        .await;
    wait_until(
        "row 4 completed after the start-up probe",
        secs(10),
        || async move { d.count("completed").await == 4 },
    )
    .await;
    assert!(db.pauses().await.is_empty(), "the probe lifted the pause");
    assert_eq!(daemon.terminate(secs(8)).await.code(), Some(0));
    let row4 = db.row(4).await;
    assert_eq!(row4.attempts, 0, "{row4:?}");
    assert!(
        outcomes(&db.attempts(4).await).contains(&"unauthorized"),
        "the 401 is in the row's log"
    );
    for (url, n) in &sim.stats().accepted_by_url {
        assert_eq!(*n, 1, "{url} accepted {n} times");
    }
    sim.shutdown().await;
}

async fn credits_run_out(resume_by_command: bool) {
    let sim = start_sim(SimConfig {
        credits: 3,
        import_cost: 1,
        job_duration: ms(400),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    if !resume_by_command {
        cfg.pause.probe_interval = ms(500);
    }
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    let d = &db;
    db.insert_many(
        &(1..=8)
            .map(|i| format!("{URL}/credit-{i}.mp4"))
            .collect::<Vec<_>>(),
    )
    .await;
    let daemon = Daemon::start(&cfg, KEY).await;

    wait_until("a 402 pause on imports", secs(10), || async move {
        d.pauses()
            .await
            .iter()
            .any(|p| p.scope == "import" && p.http_status == Some(402))
            && d.count("submitting").await == 0
    })
    .await;
    // Jobs already running are still polled and complete while imports are paused.
    wait_until("the 3 paid jobs completed", secs(10), || async move {
        d.count("completed").await == 3
    })
    .await;
    if resume_by_command {
        assert!(
            !db.pauses().await.is_empty(),
            "still paused: the probe is an hour away"
        );
        // With the probe an hour away, the only 402s are submits already in flight when
        // the first came back (at most the 2 slots): an answer to one of those must not
        // lift the pause and let the next row fail the same way.
        let refused = sim.stats().payment_required;
        assert!((1..=2).contains(&refused), "{refused} 402s while paused");
    }
    let st = cli(&config, &["status", "--json"]).await.ok().json();
    let paused_seen = st["paused"]["reason"].as_str().map(|s| s.contains("402"));
    if resume_by_command {
        assert_eq!(paused_seen, Some(true), "{st}");
    }
    for r in db.rows().await {
        assert_eq!(r.attempts, 0, "{r:?}");
        assert!(matches!(r.state.as_str(), "pending" | "completed"), "{r:?}");
    }
    let log = db.all_attempts().await;
    assert!(outcomes(&log).contains(&"insufficient_credits"));
    assert!(
        log.iter()
            .filter(|a| a.outcome == "insufficient_credits")
            .all(|a| a.http_status == Some(402))
    );

    sim.set_credits(1000);
    if resume_by_command {
        cli(&config, &["resume"]).await.ok();
    }
    wait_until(
        "all 8 rows completed after the top-up",
        secs(15),
        || async move { d.count("completed").await == 8 },
    )
    .await;
    daemon.stop().await;
    assert!(db.pauses().await.is_empty());
    let stats = sim.stats();
    assert_eq!(stats.accepted_imports, 8, "nothing lost, nothing doubled");
    for (url, n) in &stats.accepted_by_url {
        assert_eq!(*n, 1, "{url} accepted {n} times");
    }
    assert_eq!(stats.credits, 995);
    for r in db.rows().await {
        assert_eq!(r.attempts, 0, "402s never count: {r:?}");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_run_out_then_resume_after_top_up() {
    credits_run_out(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_run_out_then_the_probe_finds_the_top_up() {
    credits_run_out(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_with_growing_gaps() {
    let sim = start_sim(sim_config()).await;
    let url = format!("{URL}/flaky500-2/a.mp4");
    let base = ms(200);
    let (_dir, db, id) = run_one(
        &sim,
        |c| {
            c.retry.base_delay = base;
            c.retry.max_delay = secs(5);
        },
        &url,
    )
    .await;
    let r = db.row(id).await;
    assert_eq!(r.state, "completed", "{r:?}");
    assert_eq!(r.attempts, 2);
    let log = db.attempts(id).await;
    assert_eq!(outcomes(&log), ["transient", "transient", "accepted"]);
    assert!(log[..2].iter().all(|a| a.http_status == Some(500)));
    assert_eq!((log[0].attempt, log[1].attempt), (1, 2));

    let stats = sim.stats();
    assert_eq!(stats.import_posts_by_url[&url], 3, "exactly 3 POSTs");
    let times: Vec<u64> = stats.post_times.iter().map(|(_, t)| unix_ms(*t)).collect();
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Equal jitter: the n-th delay is at least half its bound, base * 2^(n-1) / 2.
    let base = base.as_millis() as u64;
    assert!(gaps[0] >= base / 2, "first gap {gaps:?}");
    assert!(gaps[1] >= base, "second gap {gaps:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_fails_once_max_attempts_is_reached() {
    let sim = start_sim(sim_config()).await;
    let url = format!("{URL}/flaky500-99/a.mp4");
    let (_dir, db, id) = run_one(
        &sim,
        |c| {
            c.retry.max_attempts = 3;
            c.retry.base_delay = ms(100);
        },
        &url,
    )
    .await;
    let r = db.row(id).await;
    assert_eq!(r.state, "failed", "{r:?}");
    assert_eq!(r.attempts, 3);
    assert!(r.last_error.unwrap().contains("500"));
    assert_eq!(sim.stats().import_posts_by_url[&url], 3, "exactly 3 POSTs");
    assert_eq!(outcomes(&db.attempts(id).await), ["transient"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_2xx_is_retried_and_logged() {
    let sim = start_sim(sim_config()).await;
    sim.set_faults(FaultMix {
        pgarbage: 1.0,
        ..FaultMix::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let db = Db::create(&cfg.database.path).await;
    let id = db.insert(&format!("{URL}/garbled.mp4")).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    let d = &db;
    wait_until("a counted garbled answer", secs(10), || async move {
        d.row(id).await.attempts >= 1
    })
    .await;
    sim.set_faults(FaultMix::default());
    wait_until("the row completed", secs(10), || async move {
        d.row(id).await.state == "completed"
    })
    .await;
    daemon.stop().await;
    let r = db.row(id).await;
    assert!(r.attempts >= 1 && r.attempts < 8, "{r:?}");
    let log = db.attempts(id).await;
    let garbled = &log[0];
    assert_eq!(
        garbled.outcome, "ambiguous_submit",
        "a 2xx to a submit almost surely created a job"
    );
    assert_eq!(garbled.http_status, Some(200));
    assert!(
        garbled
            .response_body
            .as_deref()
            .unwrap()
            .contains("Bad Gateway"),
        "{garbled:?}"
    );
    assert_eq!(log.last().unwrap().outcome, "accepted");
    assert!(sim.stats().garbage >= 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_an_ambiguous_submit_and_is_retried() {
    let sim = start_sim(sim_config()).await;
    sim.set_faults(FaultMix {
        ptimeout: 1.0,
        timeout_delay: secs(2),
        ..FaultMix::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.api.request_timeout = ms(300);
    cfg.retry.base_delay = ms(100);
    let db = Db::create(&cfg.database.path).await;
    let url = format!("{URL}/stuck.mp4");
    let id = db.insert(&url).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    let d = &db;
    wait_until("a timed-out submit counted", secs(10), || async move {
        d.row(id).await.attempts >= 1
    })
    .await;
    sim.set_faults(FaultMix::default());
    wait_until("the row completed", secs(10), || async move {
        d.row(id).await.state == "completed"
    })
    .await;
    daemon.stop().await;

    let r = db.row(id).await;
    assert!(r.attempts >= 1, "{r:?}");
    let log = db.attempts(id).await;
    let first = &log[0];
    assert_eq!(first.outcome, "ambiguous_submit", "{first:?}");
    assert_eq!(first.http_status, None);
    assert!(
        first.error.as_deref().unwrap().contains("timeout"),
        "{first:?}"
    );
    assert_eq!(log.last().unwrap().outcome, "accepted");
    // The timed-out POST created a job too: that is what makes it ambiguous.
    assert!(sim.stats().accepted_by_url[&url] >= 2);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_count_as_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = daemon_config_at(dir.path(), &format!("http://{dead}"));
    cfg.retry.max_attempts = 2;
    cfg.retry.base_delay = ms(100);
    let db = Db::create(&cfg.database.path).await;
    let id = db.insert(&format!("{URL}/nobody-home.mp4")).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    let d = &db;
    wait_until("the row failed", secs(10), || async move {
        d.row(id).await.state == "failed"
    })
    .await;
    daemon.stop().await;
    let r = db.row(id).await;
    assert_eq!(r.attempts, 2);
    let log = db.attempts(id).await;
    assert_eq!(outcomes(&log), ["transient", "transient"], "{log:?}");
    assert!(log.iter().all(|a| a.http_status.is_none()));
    assert!(
        log[0].error.as_deref().unwrap().contains("connection"),
        "{log:?}"
    );
}

/// The server says the window is spent; a restart within that window must not grant a
/// second burst (budgets are stored in the database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_grant_a_second_burst() {
    let window = secs(3);
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(3, window, 2),
        job_duration: ms(200),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.limits.import.requests = 100;
    cfg.limits.import.window = window;
    let db = Db::create(&cfg.database.path).await;
    let d = &db;
    db.insert(&format!("{URL}/burst-1.mp4")).await;

    ensure_room_in_window(window, ms(2200)).await;
    let window_end = (now_ms() / 3000 + 1) * 3000;
    let http = reqwest::Client::new();
    for i in 0..2 {
        http.post(format!("{}/import", sim.base_url()))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"url": format!("{URL}/bad/other-{i}.mp4")}))
            .send()
            .await
            .unwrap();
    }
    let daemon = Daemon::start(&cfg, KEY).await;
    wait_until("the first row submitted", secs(5), || async move {
        d.row(1).await.importly_job_id.is_some()
    })
    .await;
    daemon.stop().await;
    db.insert(&format!("{URL}/burst-2.mp4")).await;
    db.insert(&format!("{URL}/burst-3.mp4")).await;

    let daemon = Daemon::start(&cfg, KEY).await;
    wait_until("3 rows completed", secs(15), || async move {
        d.count("completed").await == 3
    })
    .await;
    daemon.stop().await;
    let stats = sim.stats();
    assert_eq!(
        stats.rate_limited, 0,
        "the restarted daemon knew the window was spent"
    );
    let late: Vec<u64> = stats
        .post_times
        .iter()
        .filter(|(u, _)| u.contains("burst-2") || u.contains("burst-3"))
        .map(|(_, t)| unix_ms(*t))
        .collect();
    assert_eq!(late.len(), 2);
    assert!(
        late.iter().all(|t| *t >= window_end),
        "{late:?} before {window_end}"
    );
    sim.shutdown().await;
}

/// Status polls share a small server budget the daemon learns from the headers: each job
/// is polled less often, and no status poll meets a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_polls_share_a_small_budget_without_429() {
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(10_000, secs(60), 3),
        status: BucketConfig::new(8, secs(2), 0),
        job_duration: ms(300),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.limits.import.concurrent = 3;
    cfg.limits.status.requests = 1000;
    cfg.limits.status.window = secs(2);
    cfg.poll.status_interval = ms(50);
    let db = Db::create(&cfg.database.path).await;
    let d = &db;
    db.insert_many(
        &(1..=6)
            .map(|i| format!("{URL}/poll-{i}.mp4"))
            .collect::<Vec<_>>(),
    )
    .await;
    let daemon = Daemon::start(&cfg, KEY).await;
    wait_until("6 rows completed", secs(20), || async move {
        d.count("completed").await == 6
    })
    .await;
    daemon.stop().await;
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 0, "no status 429 in normal operation");
    assert!(stats.status_requests >= 6);
    assert!(
        db.all_attempts()
            .await
            .iter()
            .all(|a| a.outcome == "accepted")
    );
    sim.shutdown().await;
}
