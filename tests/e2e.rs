//! Issue 2, end to end: rows inserted into the queue table are imported through the simulator
//! within the concurrency limit, the schema refuses bad rows, SIGTERM and restart lose
//! nothing, and the operator commands and `demo` work as the interface says.

mod common;

use std::collections::BTreeSet;

use common::*;
use importlyd::sim::SimConfig;
use serde_json::Value;

const URL: &str = "https://media.example.com/clips";

fn urls(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{URL}/{prefix}-{i}.mp4")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_rows_drain_within_the_concurrency_limit() {
    let sim = start_sim(SimConfig {
        job_duration: ms(200),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.poll.status_interval = ms(50);
    let db = Db::create(&cfg.database.path).await;
    let urls = urls("thirty", 30);
    db.insert_many(&urls).await;

    let daemon = Daemon::start(&cfg, KEY).await;
    let d = &db;
    wait_until("30 rows completed", secs(30), || async move {
        d.count("completed").await == 30
    })
    .await;
    daemon.stop().await;

    for r in db.rows().await {
        assert_eq!(r.state, "completed", "{r:?}");
        let job = r.importly_job_id.as_deref().expect("job id");
        assert!(job.starts_with("imp_"), "{r:?}");
        let media = r.media_url.as_deref().expect("media url");
        assert!(media.contains(job), "{r:?}");
        assert_eq!(r.credits_used, Some(1), "{r:?}");
        assert_eq!(r.attempts, 0, "{r:?}");
        assert!(r.completed_at.is_some(), "{r:?}");
        let result: Value = serde_json::from_str(r.result.as_deref().expect("result")).unwrap();
        assert_eq!(result["status"], "completed");
        assert_eq!(result["jobId"], job);
    }
    let stats = sim.stats();
    assert!(
        stats.max_concurrent_imports <= 2,
        "the simulator saw {} jobs at once",
        stats.max_concurrent_imports
    );
    assert_eq!(
        stats.max_concurrent_imports, 2,
        "the limit is used, not undershot"
    );
    assert_eq!(stats.concurrency_limited, 0, "no concurrency 429 needed");
    assert_eq!(stats.import_posts, 30);
    assert_eq!(stats.import_posts_by_url.len(), 30);
    for (url, n) in &stats.import_posts_by_url {
        assert_eq!(*n, 1, "{url} was POSTed {n} times");
    }
    let posted: BTreeSet<&String> = stats.import_posts_by_url.keys().collect();
    assert_eq!(posted, urls.iter().collect());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_inserted_while_the_daemon_runs_are_processed() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    // The daemon creates the schema itself; the user's program connects afterwards.
    let daemon = Daemon::start(&cfg, KEY).await;
    let db = Db::connect(&cfg.database.path).await;
    let d = &db;

    let first = db.insert_many(&urls("live-a", 3)).await;
    wait_until("a first row completed", secs(10), || async move {
        d.count("completed").await >= 1
    })
    .await;
    // More rows while jobs are in flight, from a second, independent connection.
    let other = Db::connect(&cfg.database.path).await;
    let second = other.insert_many(&urls("live-b", 3)).await;
    other.close().await;
    let third = db
        .insert_with_options(&format!("{URL}/live-c.mp4"), r#"{"videoQuality":"720p"}"#)
        .await;

    wait_until("all 7 rows completed", secs(15), || async move {
        d.count("completed").await == 7
    })
    .await;
    daemon.stop().await;
    assert_eq!(first.len() + second.len() + 1, 7);
    assert!(db.row(third).await.importly_job_id.is_some());
    let stats = sim.stats();
    assert!(stats.import_posts_by_url.values().all(|n| *n == 1));
    let body = &stats.last_import_body_by_url[&format!("{URL}/live-c.mp4")];
    assert_eq!(
        body["videoQuality"], "720p",
        "options are merged into the body"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_rows_are_rejected_at_insert_by_a_named_constraint() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(&dir.path().join("q.db")).await;
    let cases: &[(&str, &str, &str, &str)] = &[
        // (url, kind, options, constraint)
        ("ftp://x", "import", "{}", "url_must_be_http_or_https"),
        ("not a url", "import", "{}", "url_must_be_http_or_https"),
        ("http://", "import", "{}", "url_must_be_http_or_https"),
        ("", "import", "{}", "url_must_be_http_or_https"),
        (
            "https://e.com/a b.mp4",
            "import",
            "{}",
            "url_must_be_http_or_https",
        ),
        (
            "https://e.com/a.mp4",
            "import",
            "[1]",
            "options_must_be_json_object",
        ),
        (
            "https://e.com/a.mp4",
            "import",
            "not json",
            "options_must_be_json_object",
        ),
        (
            "https://e.com/a.mp4",
            "import",
            "\"str\"",
            "options_must_be_json_object",
        ),
        (
            "https://e.com/a.mp4",
            "import",
            "{\"a\":",
            "options_must_be_json_object",
        ),
        (
            "https://e.com/a.mp4",
            "import",
            "",
            "options_must_be_json_object",
        ),
        (
            "https://e.com/a.mp4",
            "import",
            "42",
            "options_must_be_json_object",
        ),
        (
            "https://e.com/a.mp4",
            "video",
            "{}",
            "kind_must_be_import_or_metadata",
        ),
        (
            "https://e.com/a.mp4",
            "",
            "{}",
            "kind_must_be_import_or_metadata",
        ),
    ];
    for (url, kind, options, constraint) in cases {
        let err = sqlx::query("INSERT INTO imports (url, kind, options) VALUES (?, ?, ?)")
            .bind(url)
            .bind(kind)
            .bind(options)
            .execute(&db.pool)
            .await
            .expect_err(&format!("{url:?} {kind:?} {options:?} must be rejected"));
        let sqlx::Error::Database(e) = &err else {
            panic!("{url:?} {options:?}: not a database error: {err}");
        };
        assert_eq!(
            e.kind(),
            sqlx::error::ErrorKind::CheckViolation,
            "{url:?} {kind:?} {options:?}: {} (code {:?})",
            e.message(),
            e.code()
        );
        // SQLITE_CONSTRAINT_CHECK, never a "malformed JSON" SQLITE_ERROR.
        assert_eq!(e.code().as_deref(), Some("275"), "{}", e.message());
        assert!(
            e.message().contains(constraint),
            "{url:?} {options:?}: `{}` does not name {constraint}",
            e.message()
        );
        assert!(
            !e.message().to_lowercase().contains("malformed"),
            "{}",
            e.message()
        );
    }
    assert_eq!(db.counts().await.len(), 0, "nothing was inserted");

    // What the contract allows goes in, with the documented defaults.
    let ok = [
        ("https://e.com/a.mp4", "{}"),
        (
            "HTTP://E.COM/b.mp4",
            r#"{"videoQuality":"720p","custom":{"x":[1]}}"#,
        ),
        ("http://e.com/c.mp4?x=1", " { } "),
    ];
    for (url, options) in ok {
        db.insert_with_options(url, options).await;
    }
    let id = db.insert("https://e.com/d.mp4").await;
    let r = db.row(id).await;
    assert_eq!(
        (r.state.as_str(), r.kind.as_str(), r.options.as_str()),
        ("pending", "import", "{}")
    );
    assert_eq!(r.attempts, 0);
    assert!(r.next_attempt_at <= std::time::SystemTime::now());

    // external_id is unique: INSERT OR IGNORE makes re-ingestion idempotent.
    for _ in 0..2 {
        sqlx::query("INSERT OR IGNORE INTO imports (url, external_id) VALUES (?, 'asset-1')")
            .bind("https://e.com/e.mp4")
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM imports WHERE external_id = 'asset-1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    // The same with an upsert clause, which (unlike OR IGNORE, which SQLite also applies to
    // CHECK failures) still refuses a bad row.
    let upsert = "INSERT INTO imports (url, external_id) VALUES (?, ?) \
                  ON CONFLICT (external_id) DO NOTHING";
    for _ in 0..2 {
        sqlx::query(upsert)
            .bind("https://e.com/g.mp4")
            .bind("asset-2")
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let err = sqlx::query(upsert)
        .bind("ftp://e.com/g.mp4")
        .bind("asset-3")
        .execute(&db.pool)
        .await
        .expect_err("a bad url is refused by the upsert form");
    assert!(
        err.to_string().contains("url_must_be_http_or_https"),
        "{err}"
    );
    let dup =
        sqlx::query("INSERT INTO imports (url, external_id) VALUES ('https://e.com/f', 'asset-1')")
            .execute(&db.pool)
            .await
            .expect_err("a duplicate external_id is refused");
    assert!(
        matches!(&dup, sqlx::Error::Database(e) if e.kind() == sqlx::error::ErrorKind::UniqueViolation),
        "{dup}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_running_jobs_and_a_restart_finishes_them_without_resubmitting() {
    let sim = start_sim(SimConfig {
        job_duration: secs(3),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.poll.status_interval = ms(200);
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    let d = &db;
    let urls = urls("term", 4);
    db.insert_many(&urls).await;

    let mut daemon = Proc::start(&config, Some(KEY), "first");
    wait_until("two rows running", secs(10), || async move {
        d.count("running").await == 2
    })
    .await;
    let stopped_at = std::time::Instant::now();
    let status = daemon.terminate(secs(8)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
    assert!(
        stopped_at.elapsed() < secs(6),
        "took {:?} to stop",
        stopped_at.elapsed()
    );

    let counts = db.counts().await;
    assert_eq!(counts.get("running"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("pending"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("submitting"), None, "{counts:?}");
    let running: Vec<_> = db
        .rows()
        .await
        .into_iter()
        .filter(|r| r.state == "running")
        .collect();
    let job_ids: Vec<String> = running
        .iter()
        .map(|r| {
            r.importly_job_id
                .clone()
                .expect("running row keeps its job id")
        })
        .collect();
    assert_eq!(sim.stats().import_posts, 2);

    let mut again = Proc::start(&config, Some(KEY), "second");
    wait_until(
        "all 4 rows completed after the restart",
        secs(20),
        || async move { d.count("completed").await == 4 },
    )
    .await;
    assert_eq!(again.terminate(secs(8)).await.code(), Some(0));

    for r in &running {
        let now = db.row(r.id).await;
        assert!(
            job_ids.contains(now.importly_job_id.as_ref().unwrap()),
            "job id changed: {now:?}"
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.import_posts, 4, "{:?}", stats.import_posts_by_url);
    for (url, n) in &stats.import_posts_by_url {
        assert_eq!(*n, 1, "{url} POSTed {n} times");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(None);
    c.current_dir(dir.path()).args(["demo", "--rows", "12"]);
    let out = run_to_end(c).await;
    assert_eq!(
        out.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("completed"), "{}", out.stdout);
    let summary = out
        .stdout
        .lines()
        .find(|l| l.contains("POST /import"))
        .unwrap_or_else(|| panic!("no summary line in:\n{}", out.stdout));
    // "N completed, M failed in ...": every row reached a terminal state.
    let mut words = summary.split_whitespace();
    let completed: u32 = words.next().and_then(|w| w.parse().ok()).expect(summary);
    let failed: u32 = words.nth(1).and_then(|w| w.parse().ok()).expect(summary);
    assert_eq!(completed + failed, 12, "{summary}");
    assert!(completed >= 10, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("cli.db");
    let mut cfg = importlyd::config::Config::default();
    cfg.database.path = db_path.clone();
    let config = write_config(dir.path(), &cfg);

    // URLs with options: the database is created on first use.
    let out = cli(
        &config,
        &[
            "enqueue",
            "https://e.com/1.mp4",
            "https://e.com/2.mp4",
            "--options",
            r#"{"videoQuality":"720p"}"#,
        ],
    )
    .await
    .ok();
    assert!(out.stdout.contains("queued 2 rows"), "{}", out.stdout);

    // A plain file: one URL a line, comments and blank lines skipped.
    let plain = dir.path().join("urls.txt");
    std::fs::write(
        &plain,
        "# batch\nhttps://e.com/3.mp4\n\nhttps://e.com/4.mp4\n",
    )
    .unwrap();
    let out = cli(&config, &["enqueue", "--file", plain.to_str().unwrap()])
        .await
        .ok();
    assert!(out.stdout.contains("queued 2 rows"), "{}", out.stdout);

    // CSV with options and external ids; feeding it twice adds nothing.
    let csv = dir.path().join("rows.csv");
    std::fs::write(
        &csv,
        "url,options,external_id\n\
         https://e.com/5.mp4,\"{\"\"videoQuality\"\":\"\"1080p\"\"}\",asset-5\n\
         https://e.com/6.mp4,,asset-6\n",
    )
    .unwrap();
    let out = cli(&config, &["enqueue", "--file", csv.to_str().unwrap()])
        .await
        .ok();
    assert!(out.stdout.contains("queued 2 rows"), "{}", out.stdout);
    let out = cli(&config, &["enqueue", "--file", csv.to_str().unwrap()])
        .await
        .ok();
    assert!(out.stdout.contains("queued 0 rows"), "{}", out.stdout);

    // A bad row names itself, exits 2 and inserts nothing of its batch.
    let out = cli(&config, &["enqueue", "https://e.com/7.mp4", "ftp://nope"]).await;
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("url_must_be_http_or_https"),
        "{}",
        out.stderr
    );

    let db = Db::connect(&db_path).await;
    let rows = db.rows().await;
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert_eq!(rows[0].options, r#"{"videoQuality":"720p"}"#);
    assert_eq!(rows[2].options, "{}");
    let five = rows
        .iter()
        .find(|r| r.url == "https://e.com/5.mp4")
        .unwrap();
    assert_eq!(five.external_id.as_deref(), Some("asset-5"));
    let opts: Value = serde_json::from_str(&five.options).unwrap();
    assert_eq!(opts["videoQuality"], "1080p");
    let six = rows
        .iter()
        .find(|r| r.url == "https://e.com/6.mp4")
        .unwrap();
    assert_eq!(
        (six.external_id.as_deref(), six.options.as_str()),
        (Some("asset-6"), "{}")
    );
    db.close().await;

    // status --json: counts, paused, buckets.
    let st = cli(&config, &["status", "--json"]).await.ok().json();
    assert_eq!(st["counts"]["pending"], 6, "{st}");
    assert_eq!(st["counts"]["completed"], 0, "{st}");
    assert!(st["paused"].is_null(), "{st}");
    for b in ["import", "status"] {
        let bucket = &st["buckets"][b];
        for k in ["limit", "remaining", "reset"] {
            assert!(bucket[k].is_u64(), "buckets.{b}.{k} in {st}");
        }
    }
    assert_eq!(st["buckets"]["import"]["limit"], 240);

    // list --json, filtered by state.
    let list = cli(&config, &["list", "--json"]).await.ok().json();
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 6);
    assert_eq!(list[0]["url"], "https://e.com/1.mp4");
    assert_eq!(list[0]["options"]["videoQuality"], "720p");
    assert_eq!(list[0]["state"], "pending");
    let none = cli(&config, &["list", "--state", "completed", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(none.as_array().map(Vec::len), Some(0));

    // A bad config key: exit 2 and the key named.
    for (toml, key) in [
        ("[retry]\nmax_attempts = \"x\"\n", "max_attempts"),
        (
            "[limits.import]\nconcurrent = 0\n",
            "limits.import.concurrent",
        ),
        ("[poll]\nqueue_interval = \"soon\"\n", "queue_interval"),
        ("[api]\nbase_url = \"ftp://x\"\n", "api.base_url"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            format!("[database]\npath = {:?}\n{toml}", db_path.to_str().unwrap()),
        )
        .unwrap();
        let out = cli(&bad, &["status"]).await;
        assert_eq!(out.code(), Some(2), "{toml}: {out:?}");
        assert!(
            out.stderr.contains(key),
            "{toml}: stderr does not name {key}: {}",
            out.stderr
        );
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "one line: {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_abandons_a_hanging_submit_and_gives_the_row_back() {
    let sim = start_sim(sim_config()).await;
    sim.set_faults(importlyd::sim::FaultMix {
        ptimeout: 1.0,
        timeout_delay: secs(30),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.api.request_timeout = secs(30);
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    let d = &db;
    let id = db.insert(&format!("{URL}/hangs.mp4")).await;
    let s = &sim;

    let mut daemon = Proc::start(&config, Some(KEY), "hanging");
    wait_until("the submit in flight", secs(10), || async move {
        d.row(id).await.state == "submitting" && s.stats().import_posts == 1
    })
    .await;
    let stopped_at = std::time::Instant::now();
    let status = daemon.terminate(secs(10)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
    assert!(
        stopped_at.elapsed() < secs(8),
        "took {:?}",
        stopped_at.elapsed()
    );
    let r = db.row(id).await;
    assert_eq!(r.state, "pending", "{r:?}");
    assert_eq!(r.attempts, 0);
    let log = db.attempts(id).await;
    assert_eq!(outcomes_of(&log), ["ambiguous_submit"], "{log:?}");

    // Nothing is lost: the next run submits it again.
    sim.set_faults(importlyd::sim::FaultMix::default());
    let mut again = Proc::start(&config, Some(KEY), "again");
    wait_until("the row completed", secs(10), || async move {
        d.row(id).await.state == "completed"
    })
    .await;
    assert_eq!(again.terminate(secs(8)).await.code(), Some(0));
    sim.shutdown().await;
}

fn outcomes_of(log: &[importlyd::store::StoredAttempt]) -> Vec<&str> {
    log.iter().map(|a| a.outcome.as_str()).collect()
}
