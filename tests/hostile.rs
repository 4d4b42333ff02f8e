//! Issue 11, the server side: a server (or a proxy in front of it) that answers with absurd
//! wait hints, huge bodies, huge job ids, garbage or a body that trickles must not crash,
//! wedge or bloat the daemon. The real `importlyd run` binary against the in-process
//! simulator's hostile modes (`HostileMix`) and a real SQLite file.
//!
//! | test | what it shows |
//! |---|---|
//! | `a_huge_retry_after_...` | a 500 with `Retry-After: u64::MAX` is a retry within `retry.max_delay`, not a panic |
//! | `an_oversized_answer_...` | a 2xx submit of 64 MiB is read no further than the cap, stored cut, retried as an ambiguous submit |
//! | `a_job_id_that_is_too_long_...` | an invalid job id is never accepted; the submit is ambiguous and retried |
//! | `a_body_that_trickles_...` | a body slower than `api.request_timeout` ends as a timeout |
//! | `a_garbled_2xx_to_a_submit_...` | a non-JSON 2xx to a submit is an ambiguous submit in the ticket |
//! | `a_long_random_mix_...` | the acceptance run: a seeded mix of all of these over many rows |
//!
//! The mix is seeded (`IMPORTLYD_HOSTILE_SEED=N` replays it; the seed is printed); the
//! interleaving with real time is not reproducible, the choices are.

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use importlyd::config::{BucketLimit, Config};
use importlyd::importly::MAX_BODY;
use importlyd::sim::{BucketConfig, FaultMix, HostileMix, SimConfig};
use importlyd::store::StoredAttempt;

const URL: &str = "https://media.example.com/hostile";

/// Every log line the daemon writes stays under this.
const MAX_LOG_LINE: usize = 16 * 1024;
/// The daemon's peak resident memory stays under this.
const MAX_PEAK_RSS_KIB: u64 = 100 * 1024;

/// A record for a failure message, each field cut short (an unfixed daemon stores megabytes).
fn short(a: &StoredAttempt) -> String {
    let cut = |s: Option<&str>| s.map(|s| s.chars().take(200).collect::<String>());
    format!(
        "attempt {} {} {} http {:?} outcome {} error {:?} job {:?} body {:?} (truncated {})",
        a.attempt,
        a.method,
        a.endpoint.chars().take(200).collect::<String>(),
        a.http_status,
        a.outcome,
        cut(a.error.as_deref()),
        cut(a.job_id.as_deref()),
        cut(a.response_body.as_deref()),
        a.body_truncated
    )
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "completed" | "failed" | "cancelled")
}

/// A `/proc/PID/status` field in KiB (`VmHWM`: the peak resident set).
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The process is there and not a zombie: it has not exited since it started.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// The daemon started once and is still the same process.
fn assert_one_life(daemon: &Proc) {
    assert!(
        alive(daemon.pid),
        "the daemon {} exited; log:\n{}",
        daemon.pid,
        daemon.log_text()
    );
    assert_eq!(
        daemon.log_text().matches("importlyd started").count(),
        1,
        "the daemon started more than once"
    );
}

/// The longest value (in bytes) of every column of `imports` and `import_attempts`, as
/// `(table.column, bytes)`, longest first.
async fn stored_field_lengths(db: &Db) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for table in ["imports", "import_attempts"] {
        let cols: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT name FROM pragma_table_info('{table}')"
        )))
        .fetch_all(&db.pool)
        .await
        .expect("columns");
        for col in cols {
            let len: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT max(length(CAST(\"{col}\" AS BLOB))) FROM {table}"
            )))
            .fetch_one(&db.pool)
            .await
            .expect("column length");
            out.push((format!("{table}.{col}"), len.unwrap_or(0)));
        }
    }
    out.sort_by_key(|(_, n)| -n);
    out
}

/// Every stored field stays within the attempt log's cap, but a finished job's whole `data`
/// (`imports.result`, and a metadata job's in the cache), which is read up to the answer cap.
async fn assert_no_field_over_the_cap(db: &Db) {
    let whole_data = [
        "imports.result",
        "metadata_cache.data",
        "metadata_cache.formats",
    ];
    let lengths = stored_field_lengths(db).await;
    let over: Vec<_> = lengths
        .iter()
        .filter(|(name, n)| {
            let cap = if whole_data.contains(&name.as_str()) {
                importlyd::importly::MAX_ANSWER
            } else {
                MAX_BODY
            };
            *n > cap as i64
        })
        .collect();
    assert!(over.is_empty(), "stored fields over their cap: {over:?}");
}

fn assert_log_lines_bounded(daemon: &Proc) {
    let log = daemon.log_text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < MAX_LOG_LINE,
        "a log line of {longest} bytes (limit {MAX_LOG_LINE}); it starts: {}",
        log.lines()
            .find(|l| l.len() == longest)
            .map(|l| l.chars().take(300).collect::<String>())
            .unwrap_or_default()
    );
}

/// A simulator for one row at a time: room for a few jobs, short jobs.
fn sim_cfg() -> SimConfig {
    SimConfig {
        import: BucketConfig::new(10_000, secs(60), 8),
        ..sim_config()
    }
}

/// Starts `importlyd run` on a fresh database in `dir` with `cfg`.
async fn start_daemon(dir: &Path, cfg: &Config, name: &str) -> (Db, Proc) {
    let config = write_config(dir, cfg);
    let db = Db::create(&cfg.database.path).await;
    let daemon = Proc::start(&config, Some(KEY), name);
    daemon.wait_log("importlyd started", secs(20)).await;
    (db, daemon)
}

/// Waits until the row's log holds at least one record, then returns the first.
async fn first_record(db: &Db, daemon: &Proc, id: i64) -> StoredAttempt {
    let what = format!("a logged exchange of row {id}");
    wait_for(&what, secs(20), || async move {
        assert!(
            alive(daemon.pid),
            "the daemon died; log:\n{}",
            daemon.log_text()
        );
        db.attempts(id).await.into_iter().next()
    })
    .await
}

async fn wait_state(db: &Db, daemon: &Proc, id: i64, state: &str) {
    let what = format!("row {id} {state}");
    wait_until(&what, secs(30), || async move {
        assert!(
            alive(daemon.pid),
            "the daemon died; log:\n{}",
            daemon.log_text()
        );
        db.row(id).await.state == state
    })
    .await;
}

/// Ends the daemon and checks it was one process that stops cleanly.
async fn finish(mut daemon: Proc) {
    assert_one_life(&daemon);
    assert_log_lines_bounded(&daemon);
    let status = daemon.terminate(secs(10)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
}

// ---- one hostile answer at a time ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_after_on_a_500_is_retried_within_max_delay_and_the_daemon_stays_up() {
    let sim = start_sim(sim_cfg()).await;
    sim.set_hostile(HostileMix {
        phuge_retry: 1.0,
        ..HostileMix::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let (db, daemon) = start_daemon(dir.path(), &cfg, "huge-retry").await;
    let id = db.insert(&format!("{URL}/huge-retry.mp4")).await;

    let first = first_record(&db, &daemon, id).await;
    assert_eq!(first.http_status, Some(500), "{}", short(&first));
    let row = db.row(id).await;
    // The attempt and the row are written in one transaction, and the retry is 2 s off:
    // the row read here is the one that write left, not a later claim's.
    assert_eq!(row.state, "pending", "{}", short(&first));
    // Due within retry.max_delay (2 s here), not in 31 days, let alone 584 billion years.
    // The store writes `updated_at` (its clock when it writes) and `next_attempt_at` (the
    // wait on from a second clock read, microseconds later) in one statement, both in whole
    // milliseconds: the wait is their difference, give or take that one millisecond.
    let max_delay = cfg.retry.max_delay.as_millis() as u64;
    let wait = unix_ms(row.next_attempt_at).saturating_sub(unix_ms(row.updated_at));
    assert!(
        wait <= max_delay + 1,
        "due {wait} ms after the row's write (at {}), more than max_delay {max_delay} ms",
        importlyd::clock::iso(row.next_attempt_at)
    );
    // And not days away from the answer however late the write came.
    let due_in = unix_ms(row.next_attempt_at).saturating_sub(unix_ms(first.finished_at));
    assert!(
        due_in < 10_000,
        "due {due_in} ms after the answer (at {})",
        importlyd::clock::iso(row.next_attempt_at)
    );
    sim.set_hostile(HostileMix::default());
    wait_state(&db, &daemon, id, "completed").await;
    assert!(db.row(id).await.attempts >= 1);
    assert!(sim.stats().huge_retries >= 1);
    finish(daemon).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_is_read_no_further_than_the_cap_and_is_an_ambiguous_submit() {
    let sim = start_sim(sim_cfg()).await;
    sim.set_hostile(HostileMix {
        poversized: 1.0,
        oversized_bytes: 64 * 1024 * 1024,
        ..HostileMix::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.api.request_timeout = secs(20);
    let (db, daemon) = start_daemon(dir.path(), &cfg, "oversized").await;
    let id = db.insert(&format!("{URL}/oversized.mp4")).await;

    let first = first_record(&db, &daemon, id).await;
    sim.set_hostile(HostileMix::default());
    assert_eq!(first.http_status, Some(200), "{}", short(&first));
    assert_eq!(first.outcome, "ambiguous_submit", "{}", short(&first));
    assert!(first.body_truncated);
    let body = first.response_body.as_deref().unwrap_or("");
    assert!(body.len() <= MAX_BODY && body.starts_with(r#"{"data":{"jobId":"xxx"#));
    assert_eq!(first.job_id, None);
    wait_state(&db, &daemon, id, "completed").await;
    let row = db.row(id).await;
    assert!(
        row.importly_job_id.as_ref().is_some_and(|j| j.len() < 100),
        "job id of {} bytes",
        row.importly_job_id.as_ref().map_or(0, String::len)
    );
    let peak = proc_kib(daemon.pid, "VmHWM").expect("VmHWM");
    assert!(peak < MAX_PEAK_RSS_KIB, "peak RSS {peak} KiB");
    assert_no_field_over_the_cap(&db).await;
    finish(daemon).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_id_that_is_too_long_is_never_accepted_and_the_submit_is_ambiguous() {
    let sim = start_sim(sim_cfg()).await;
    sim.set_hostile(HostileMix {
        plong_id: 1.0,
        long_id_len: 4096,
        ..HostileMix::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let (db, daemon) = start_daemon(dir.path(), &cfg, "long-id").await;
    let id = db.insert(&format!("{URL}/long-id.mp4")).await;

    let first = first_record(&db, &daemon, id).await;
    sim.set_hostile(HostileMix::default());
    assert_eq!(first.http_status, Some(200), "{}", short(&first));
    assert_eq!(first.outcome, "ambiguous_submit", "{}", short(&first));
    assert_eq!(first.job_id, None);
    assert!(
        first.error.as_deref().unwrap_or("").len() < 2048,
        "{}",
        short(&first)
    );
    wait_state(&db, &daemon, id, "completed").await;
    let row = db.row(id).await;
    assert!(
        row.importly_job_id.as_ref().is_some_and(|j| j.len() < 100),
        "job id of {} bytes",
        row.importly_job_id.as_ref().map_or(0, String::len)
    );
    assert!(!daemon.log_text().contains(&"i".repeat(200)));
    finish(daemon).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_past_the_timeout_ends_as_a_timeout() {
    let sim = start_sim(sim_cfg()).await;
    sim.set_hostile(HostileMix {
        ptrickle: 1.0,
        trickle_duration: secs(120),
        ..HostileMix::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.api.request_timeout = ms(500);
    let (db, daemon) = start_daemon(dir.path(), &cfg, "trickle").await;
    let id = db.insert(&format!("{URL}/trickle.mp4")).await;

    let first = first_record(&db, &daemon, id).await;
    sim.set_hostile(HostileMix::default());
    assert_eq!(first.outcome, "ambiguous_submit", "{}", short(&first));
    assert!(
        first.error.as_deref().unwrap_or("").contains("timeout"),
        "{}",
        short(&first)
    );
    // Ended by the request timeout, far before the trickle would have ended.
    let took = unix_ms(first.finished_at) - unix_ms(first.started_at);
    assert!(took < 10_000, "the exchange took {took} ms");
    wait_state(&db, &daemon, id, "completed").await;
    finish(daemon).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_2xx_to_a_submit_is_an_ambiguous_submit_in_the_ticket() {
    let sim = start_sim(sim_cfg()).await;
    sim.set_faults(FaultMix {
        pgarbage: 1.0,
        ..FaultMix::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let (db, daemon) = start_daemon(dir.path(), &cfg, "garbage").await;
    let id = db.insert(&format!("{URL}/garbage.mp4")).await;

    let first = first_record(&db, &daemon, id).await;
    sim.set_faults(FaultMix::default());
    assert_eq!(first.outcome, "ambiguous_submit", "{}", short(&first));
    assert_eq!(first.http_status, Some(200));
    wait_state(&db, &daemon, id, "completed").await;
    // It counted as an attempt of the row's own, as the contract says.
    assert!(db.row(id).await.attempts >= 1);
    let config = dir.path().join("importlyd.toml");
    let ticket = cli(&config, &["ticket", &id.to_string()]).await.ok().stdout;
    assert!(
        ticket.contains("POST /import  HTTP 200 (ambiguous_submit, try 1)"),
        "{ticket}"
    );
    // The retry said so when it happened (the row's last_error may be cleared once it
    // completes, so the daemon's log is where to look now).
    assert!(
        daemon
            .log_text()
            .contains("(the submit may have reached Importly)"),
        "{}",
        daemon.log_text()
    );
    finish(daemon).await;
    sim.shutdown().await;
}

// ---- the acceptance run ----

/// `IMPORTLYD_HOSTILE_SEED`, or a fixed one; printed either way.
fn seed() -> u64 {
    let seed = std::env::var("IMPORTLYD_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(11);
    println!("hostile mix: seed {seed} (replay with IMPORTLYD_HOSTILE_SEED={seed})");
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_random_mix_of_hostile_answers_leaves_one_small_process_and_every_row_terminal() {
    let started = Instant::now();
    let rows = 200;
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(100_000, secs(60), 6),
        job_duration: ms(100),
        seed: seed(),
        faults: FaultMix {
            p500: 0.03,
            ptimeout: 0.02,
            pgarbage: 0.05,
            timeout_delay: secs(2),
        },
        hostile: HostileMix {
            phuge_retry: 0.05,
            poversized: 0.05,
            plong_id: 0.05,
            ptrickle: 0.03,
            oversized_bytes: 8 * 1024 * 1024,
            long_id_len: 64 * 1024,
            trickle_duration: secs(5),
        },
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.api.request_timeout = ms(500);
    cfg.limits.import = BucketLimit {
        requests: 100_000,
        window: secs(60),
        concurrent: 4,
        reserve: 0,
    };
    cfg.poll.status_interval = ms(50);
    cfg.retry.max_attempts = 30;
    cfg.retry.base_delay = ms(50);
    cfg.retry.max_delay = ms(300);
    cfg.log.keep_attempts = 100_000;
    let (db, daemon) = start_daemon(dir.path(), &cfg, "mix").await;
    let urls: Vec<String> = (0..rows).map(|i| format!("{URL}/mix-{i}.mp4")).collect();
    db.insert_many(&urls).await;

    let d = &db;
    let p = &daemon;
    wait_until("every row terminal", secs(50), || async move {
        assert!(alive(p.pid), "the daemon died; log:\n{}", p.log_text());
        d.counts().await.keys().all(|s| is_terminal(s))
    })
    .await;
    let peak = proc_kib(daemon.pid, "VmHWM").expect("VmHWM");
    let stats = sim.stats();
    let counts = db.counts().await;
    println!(
        "hostile mix: {rows} rows {counts:?} in {:.1} s; daemon peak RSS {peak} KiB; sim sent \
         {} huge Retry-After, {} oversized, {} long ids, {} trickles, {} garbage, {} 500s, {} \
         timeouts over {} POSTs and {} status calls",
        started.elapsed().as_secs_f64(),
        stats.huge_retries,
        stats.oversized,
        stats.long_ids,
        stats.trickles,
        stats.garbage,
        stats.server_errors,
        stats.timeouts,
        stats.import_posts,
        stats.status_requests,
    );
    // The mix really was hostile.
    assert!(
        stats.huge_retries > 0
            && stats.oversized > 0
            && stats.long_ids > 0
            && stats.trickles > 0
            && stats.garbage > 0,
        "not every hostile answer was sent: {} huge Retry-After, {} oversized, {} long ids, \
         {} trickles, {} garbage",
        stats.huge_retries,
        stats.oversized,
        stats.long_ids,
        stats.trickles,
        stats.garbage
    );
    assert!(peak < MAX_PEAK_RSS_KIB, "daemon peak RSS {peak} KiB");
    assert_no_field_over_the_cap(&db).await;
    assert_eq!(counts.values().sum::<i64>(), rows as i64);
    finish(daemon).await;
    sim.shutdown().await;
}

// ---- secrets in the base URL ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_base_urls_password_never_reaches_the_log() {
    let sim = start_sim(sim_cfg()).await;
    let dir = tempfile::tempdir().unwrap();
    let with_userinfo = sim
        .base_url()
        .replacen("http://", "http://ops:pa55word-in-url@", 1);
    let cfg = daemon_config_at(dir.path(), &with_userinfo);
    let (_db, daemon) = start_daemon(dir.path(), &cfg, "userinfo").await;
    let log = daemon.log_text();
    assert!(log.contains("[redacted]@127.0.0.1"), "{log}");
    assert!(!log.contains("pa55word-in-url"), "{log}");
    finish(daemon).await;
    sim.shutdown().await;
}

/// A user's row may carry a URL of any length (the schema checks only its scheme): the
/// daemon's log lines about it stay bounded all the same, and the row still completes.
#[tokio::test]
async fn a_huge_url_in_a_row_makes_no_huge_log_line() {
    let sim = start_sim(sim_cfg()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let (db, daemon) = start_daemon(dir.path(), &cfg, "huge-url").await;
    let url = format!("{URL}/{}.mp4", "a".repeat(256 * 1024));
    let id = db.insert(&url).await;
    wait_state(&db, &daemon, id, "completed").await;
    assert_eq!(db.row(id).await.url, url, "the row keeps its URL whole");
    assert_log_lines_bounded(&daemon);
    finish(daemon).await;
    sim.shutdown().await;
}

/// An answer larger than what the attempt log keeps (16 KiB) but within what is read (1 MiB),
/// as a metadata job with many formats gives, is read whole: the job completes, it does not
/// sit in `running` holding its slot. Only the log's copy is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_answer_over_the_log_cap_completes_the_job() {
    let sim = start_sim(SimConfig {
        job_duration: ms(300),
        ..sim_cfg()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let (db, daemon) = start_daemon(dir.path(), &cfg, "big-status").await;
    let id = db.insert(&format!("{URL}/big-status.mp4")).await;
    wait_state(&db, &daemon, id, "running").await;
    // From now on every answer (the status polls) carries a 40 KiB message.
    sim.set_hostile(HostileMix {
        poversized: 1.0,
        oversized_bytes: 40 * 1024,
        ..HostileMix::default()
    });
    wait_state(&db, &daemon, id, "completed").await;
    sim.set_hostile(HostileMix::default());
    let result = db.row(id).await.result.unwrap_or_default();
    assert!(result.len() > 40 * 1024, "the whole data is the result");
    for a in db.attempts(id).await {
        let len = a.response_body.as_deref().map(str::len).unwrap_or(0);
        assert!(
            len <= importlyd::importly::MAX_BODY,
            "log copy of {len} bytes"
        );
    }
    finish(daemon).await;
    sim.shutdown().await;
}
