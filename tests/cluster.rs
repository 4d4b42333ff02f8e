//! Several `importlyd run` processes on one PostgreSQL queue and one simulated account: the
//! account's limits hold for all of them together, no URL is imported twice, a killed
//! daemon's jobs are adopted (polled, never re-POSTed), a frozen one rejoins without
//! overrunning anyone, a row INSERTed from `psql` wakes an idle daemon at once, a paused
//! daemon takes nothing from the shared budget, and operator commands, the admin API and
//! the dashboard answer over PostgreSQL without ever showing the password.
//!
//! Real parts: the binary, the in-process simulator over loopback, a private PostgreSQL
//! cluster (or `IMPORTLYD_TEST_DATABASE_URL`), `psql`. Outside CI a machine without
//! PostgreSQL skips these loudly.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pg::{TestDb, count};
use common::*;
use importlyd::config::{BucketLimit, Config};
use importlyd::sim::{BucketConfig, Sim};
use sqlx::PgPool;

/// A daemon config on `db` with a short lease (1 s request timeout + three 300 ms beats).
fn cluster_config(dir: &Path, sim: &Sim, import: BucketLimit) -> Config {
    let mut cfg = daemon_config(dir, sim);
    cfg.api.request_timeout = secs(1);
    cfg.cluster.lease = secs(3);
    cfg.limits.import = import;
    cfg.poll.status_interval = ms(200);
    cfg
}

async fn insert_urls(pool: &PgPool, urls: &[String]) {
    for u in urls {
        sqlx::query("INSERT INTO imports (url) VALUES ($1)")
            .bind(u)
            .execute(pool)
            .await
            .expect("insert");
    }
}

/// Waits until `n` rows are completed; on a timeout the row states are printed (the
/// daemons' logs come from `Proc`'s drop as the panic unwinds through the test).
async fn wait_all_completed(pool: &PgPool, n: i64, timeout: Duration) {
    struct States(String);
    impl Drop for States {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("row states at the deadline: {}", self.0);
            }
        }
    }
    let last = std::cell::RefCell::new(States(String::new()));
    let what = format!("all {n} rows completed");
    wait_until(&what, timeout, || async {
        let states: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM imports GROUP BY state")
                .fetch_all(pool)
                .await
                .unwrap_or_default();
        let done = states.iter().any(|(s, c)| s == "completed" && *c == n);
        last.borrow_mut().0 = format!("{states:?}");
        done
    })
    .await;
}

/// Migrates the database once (as an operator would) before the daemons start.
async fn migrated(db: &TestDb, dir: &Path, cfg: &Config) -> PathBuf {
    let config = write_config_with_url(dir, "migrate", cfg, &db.url);
    cli(&config, &["migrate"]).await.ok();
    config
}

fn urls(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("https://media.example/{prefix}/{i}.mp4"))
        .collect()
}

/// The simulator's account: `requests` per `window`, `slots` concurrent imports.
fn tight_sim(
    requests: u64,
    window: Duration,
    slots: u32,
    job: Duration,
) -> importlyd::sim::SimConfig {
    let mut s = sim_config();
    s.import = BucketConfig::new(requests, window, slots);
    s.job_duration = job;
    s
}

fn assert_each_url_once(sim: &Sim, urls: &[String]) {
    let stats = sim.stats();
    for u in urls {
        assert_eq!(
            stats.accepted_by_url.get(u).copied().unwrap_or(0),
            1,
            "{u} must be imported exactly once: {:?}",
            stats.import_posts_by_url.get(u)
        );
    }
}

#[tokio::test]
async fn three_daemons_share_a_tight_account_and_import_each_url_once() {
    let Some(db) = common::pg::database("three_daemons").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(tight_sim(20, secs(4), 2, ms(300))).await;
    // The config's guess is looser than the account: the server's headers must rule.
    let cfg = cluster_config(
        dir.path(),
        &sim,
        BucketLimit {
            requests: 40,
            window: secs(4),
            concurrent: 2,
            reserve: 0,
        },
    );
    migrated(&db, dir.path(), &cfg).await;
    let pool = db.pool().await;
    let all = urls("three", 40);
    insert_urls(&pool, &all).await;
    let mut procs = Vec::new();
    for i in 0..3 {
        let config = write_config_with_url(dir.path(), &format!("d{i}"), &cfg, &db.url);
        procs.push(Proc::start(&config, Some(KEY), &format!("d{i}")));
    }
    wait_all_completed(&pool, 40, secs(60)).await;
    assert_each_url_once(&sim, &all);
    let stats = sim.stats();
    assert!(
        stats.max_concurrent_imports <= 2,
        "never more than the account's 2 slots: {}",
        stats.max_concurrent_imports
    );
    assert!(
        stats.rate_limited + stats.concurrency_limited <= 3,
        "at most a couple of 429s in all: {} rate, {} concurrency",
        stats.rate_limited,
        stats.concurrency_limited
    );
    // Every daemon took part (the queue is shared, not won by the first).
    let owners = count(
        &pool,
        "SELECT count(DISTINCT d.id) FROM daemons d WHERE d.stopped_at IS NULL",
    )
    .await;
    assert_eq!(owners, 3, "three live daemons");
    for mut p in procs {
        assert!(p.terminate(secs(10)).await.success());
    }
}

/// A 401 pauses everything: while it holds, the daemon's due polls take nothing from the
/// shared status budget (what is taken and not sent is lost to every daemon until the
/// window ends). Before the fix each loop turn took its polls' worth and sent none.
#[tokio::test]
async fn a_paused_daemon_takes_nothing_from_the_shared_budget() {
    let Some(db) = common::pg::database("paused_budget").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Jobs that outlast the test: their polls stay due all along.
    let sim = start_sim(tight_sim(1000, secs(60), 2, secs(600))).await;
    let cfg = cluster_config(
        dir.path(),
        &sim,
        BucketLimit {
            requests: 1000,
            window: secs(60),
            concurrent: 2,
            reserve: 0,
        },
    );
    migrated(&db, dir.path(), &cfg).await;
    let pool = db.pool().await;
    insert_urls(&pool, &urls("paused", 2)).await;
    let config = write_config_with_url(dir.path(), "d", &cfg, &db.url);
    let mut d = Proc::start(&config, Some(KEY), "d");
    wait_until("both jobs are polled", secs(20), || async {
        count(
            &pool,
            "SELECT count(*) FROM imports WHERE state = 'running'",
        )
        .await
            == 2
            && sim.stats().status_requests >= 2
    })
    .await;
    // The key is revoked: the next answer is a 401, and the pause is stored.
    sim.set_api_key("revoked");
    wait_until("the pause is stored", secs(20), || async {
        count(&pool, "SELECT count(*) FROM pauses").await == 1
    })
    .await;
    let used = || async {
        count(
            &pool,
            "SELECT coalesce(max(used), 0)::bigint FROM budgets WHERE scope = 'status'",
        )
        .await
    };
    let at_pause = used().await;
    let sent_at_pause = sim.stats().status_requests;
    // Five lease renewals (300 ms apart) while paused, its polls due every 200 ms.
    let beat = count(
        &pool,
        "SELECT (extract(epoch FROM max(heartbeat_at)) * 1000)::bigint FROM daemons",
    )
    .await;
    wait_until("five more heartbeats", secs(20), || async {
        count(
            &pool,
            &format!(
                "SELECT count(*) FROM daemons \
                 WHERE heartbeat_at > to_timestamp({beat} / 1000.0) + interval '1.5 s'"
            ),
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        sim.stats().status_requests,
        sent_at_pause,
        "nothing is sent while paused (the probe is an hour away)"
    );
    assert_eq!(
        used().await,
        at_pause,
        "and nothing is taken from the shared status budget"
    );
    assert!(d.terminate(secs(10)).await.success());
}

#[tokio::test]
async fn a_killed_daemons_running_jobs_are_adopted_and_never_posted_again() {
    let Some(db) = common::pg::database("adopt").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Jobs run 4 s: the two the first daemon submits are still running when it dies.
    let sim = start_sim(tight_sim(1000, secs(60), 2, secs(4))).await;
    let cfg = cluster_config(
        dir.path(),
        &sim,
        BucketLimit {
            requests: 1000,
            window: secs(60),
            concurrent: 2,
            reserve: 0,
        },
    );
    migrated(&db, dir.path(), &cfg).await;
    let pool = db.pool().await;
    let all = urls("adopt", 4);
    insert_urls(&pool, &all).await;
    let a_config = write_config_with_url(dir.path(), "a", &cfg, &db.url);
    let mut a = Proc::start(&a_config, Some(KEY), "a");
    wait_until(
        "the first daemon runs both slots' jobs",
        secs(20),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM imports WHERE state = 'running'",
            )
            .await
                == 2
        },
    )
    .await;
    a.signal("KILL");
    a.wait_exit(secs(5)).await;
    let posts_at_kill = sim.stats().import_posts;
    let b_config = write_config_with_url(dir.path(), "b", &cfg, &db.url);
    let mut b = Proc::start(&b_config, Some(KEY), "b");
    b.wait_log("adopted the running jobs", secs(15)).await;
    wait_all_completed(&pool, 4, secs(40)).await;
    assert_each_url_once(&sim, &all);
    let stats = sim.stats();
    assert_eq!(
        stats.import_posts,
        posts_at_kill + 2,
        "the second daemon posts only the two rows never submitted"
    );
    assert_eq!(
        stats.concurrency_limited, 0,
        "the adopted jobs kept their slots"
    );
    assert!(b.terminate(secs(10)).await.success());
}

#[tokio::test]
async fn a_frozen_daemon_past_its_lease_rejoins_without_overrun_or_duplicates() {
    let Some(db) = common::pg::database("frozen").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 3 s jobs: once both slots run, the daemon sends nothing for seconds, so the freeze
    // below lands between requests. (A freeze in the middle of a POST that outlasts the
    // request timeout loses that answer: an ambiguous submit, as with kill -9.)
    let sim = start_sim(tight_sim(30, secs(3), 2, secs(3))).await;
    let cfg = cluster_config(
        dir.path(),
        &sim,
        BucketLimit {
            requests: 30,
            window: secs(3),
            concurrent: 2,
            reserve: 0,
        },
    );
    migrated(&db, dir.path(), &cfg).await;
    let pool = db.pool().await;
    let all = urls("frozen", 8);
    insert_urls(&pool, &all).await;
    let a_config = write_config_with_url(dir.path(), "a", &cfg, &db.url);
    let b_config = write_config_with_url(dir.path(), "b", &cfg, &db.url);
    let a = Proc::start(&a_config, Some(KEY), "a");
    wait_until("the first daemon holds both slots", secs(20), || async {
        count(
            &pool,
            "SELECT count(*) FROM imports WHERE state = 'running'",
        )
        .await
            == 2
            && count(
                &pool,
                "SELECT count(*) FROM imports WHERE state = 'submitting'",
            )
            .await
                == 0
    })
    .await;
    a.signal("STOP");
    let b = Proc::start(&b_config, Some(KEY), "b");
    // Frozen for longer than the 3 s lease: the second daemon adopts what it held.
    b.wait_log("adopted the running jobs", secs(15)).await;
    a.signal("CONT");
    a.wait_log("joining again", secs(15)).await;
    wait_all_completed(&pool, 8, secs(60)).await;
    assert_each_url_once(&sim, &all);
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 0, "no request over the rate limit");
    assert!(
        stats.max_concurrent_imports <= 2,
        "never more than 2 jobs at once: {}",
        stats.max_concurrent_imports
    );
    for mut p in [a, b] {
        assert!(p.terminate(secs(10)).await.success());
    }
}

#[tokio::test]
async fn an_insert_from_psql_wakes_an_idle_daemon_without_waiting_for_its_poll() {
    let Some(db) = common::pg::database("wake").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(sim_config()).await;
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.api.request_timeout = secs(1);
    cfg.cluster.lease = secs(3);
    // Polling alone would take 20 s: a pickup within a few seconds is the NOTIFY's doing.
    cfg.poll.queue_interval = secs(20);
    let config = write_config_with_url(dir.path(), "d", &cfg, &db.url);
    let d = Proc::start(&config, Some(KEY), "d");
    d.wait_log("importlyd started", secs(15)).await;
    // Its first queue look is over once it has renewed its lease after starting (the
    // loop turned): from then on only a wake-up (or the poll, 20 s away) finds a row.
    let pool = db.pool().await;
    wait_until("the daemon's loop turned", secs(10), || async {
        count(
            &pool,
            "SELECT count(*) FROM daemons WHERE heartbeat_at > started_at + interval '500 ms'",
        )
        .await
            >= 1
    })
    .await;
    let out = db.psql("INSERT INTO imports (url) VALUES ('https://media.example/wake.mp4')");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the daemon posts the new row", secs(5), || async {
        sim.stats().import_posts >= 1
    })
    .await;
}

#[tokio::test]
async fn operator_commands_work_on_postgres_and_never_show_the_password() {
    let Some(db) = common::pg::database("operators").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(sim_config()).await;
    let cfg = cluster_config(
        dir.path(),
        &sim,
        BucketLimit {
            requests: 1000,
            window: secs(60),
            concurrent: 2,
            reserve: 0,
        },
    );
    // The private cluster trusts loopback, so the password is never checked: it is only
    // there to be hidden.
    let url = db.url.replacen("://postgres@", "://postgres:s3cret-pw@", 1);
    assert_ne!(url, db.url, "the test URL has the expected user");
    let config = write_config_with_url(dir.path(), "ops", &cfg, &url);
    cli(&config, &["migrate"]).await.ok();
    let out = cli(
        &config,
        &[
            "enqueue",
            "https://media.example/ops/a.mp4",
            "https://media.example/ops/fail.mp4",
            "https://unreachable.example/b.mp4",
        ],
    )
    .await
    .ok();
    assert!(!out.stdout.contains("s3cret") && !out.stderr.contains("s3cret"));
    let bad = cli(&config, &["enqueue", "ftp://media.example/c.mp4"]).await;
    assert_ne!(bad.code(), Some(0), "{bad:?}");
    assert!(
        bad.stderr.contains("url_must_be_http_or_https"),
        "{}",
        bad.stderr
    );
    let pool = db.pool().await;
    // A row due in a year, to cancel.
    sqlx::query(
        "INSERT INTO imports (url, next_attempt_at) \
         VALUES ('https://media.example/ops/later.mp4', now() + interval '1 year')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut d = Proc::start(&config, Some(KEY), "ops");
    wait_until("the three due rows finish", secs(30), || async {
        count(
            &pool,
            "SELECT count(*) FROM imports WHERE state IN ('completed', 'failed')",
        )
        .await
            == 3
    })
    .await;
    let status = cli(&config, &["status", "--json"]).await.ok().json();
    assert_eq!(status["counts"]["completed"], 1, "{status}");
    assert_eq!(status["counts"]["failed"], 2, "{status}");
    let daemons = status["daemons"].as_array().expect("daemons");
    assert_eq!(daemons.len(), 1, "{status}");
    assert_eq!(daemons[0]["pid"], d.pid, "{status}");
    let text = cli(&config, &["status"]).await.ok().stdout;
    assert!(text.contains("running since"), "{text}");
    let failed: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM imports WHERE state = 'failed' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let ticket = cli(
        &config,
        &["ticket", &failed[0].to_string(), "--format", "json"],
    )
    .await
    .ok()
    .json();
    assert!(
        !ticket["attempts"].as_array().expect("attempts").is_empty(),
        "{ticket}"
    );
    let list = cli(&config, &["list", "--state", "failed", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    let later: i64 = count(&pool, "SELECT id FROM imports WHERE url LIKE '%later%'").await;
    cli(&config, &["cancel", &later.to_string()]).await.ok();
    // The daemon stops for the retry, so that nothing claims the rows before they are seen
    // back in pending; a second one takes them after.
    assert!(d.terminate(secs(10)).await.success());
    let first_log = d.log_text();
    let retried = cli(&config, &["retry", "--failed"]).await.ok();
    assert_eq!(retried.stdout, "2 rows back to pending\n", "{retried:?}");
    let pending: Vec<(i64, i32)> =
        sqlx::query_as("SELECT id, attempts FROM imports WHERE state = 'pending' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        pending,
        failed.iter().map(|&id| (id, 0)).collect::<Vec<_>>(),
        "the failed rows, and only they, are pending again with a fresh attempt count"
    );
    let mut d = Proc::start(&config, Some(KEY), "ops-after-retry");
    wait_until("the retried rows fail again", secs(30), || async {
        count(&pool, "SELECT count(*) FROM imports WHERE state = 'failed'").await == 2
    })
    .await;
    let csv = cli(&config, &["export", "--format", "csv"])
        .await
        .ok()
        .stdout;
    assert_eq!(csv.lines().count(), 5, "a header and four rows: {csv}");
    let shown = cli(&config, &["show", &later.to_string(), "--json"])
        .await
        .ok()
        .json();
    assert_eq!(shown["row"]["state"], "cancelled", "{shown}");
    let audit: i64 = count(&pool, "SELECT count(*) FROM audit").await;
    assert!(audit >= 2, "cancel and retry are audited: {audit}");
    let purged = cli(&config, &["purge", "--older-than", "0s"]).await.ok();
    let first = purged.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("deleted 4 rows last changed before "),
        "{purged:?}"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM imports").await,
        0,
        "every row was finished, so purge leaves none"
    );
    assert!(d.terminate(secs(10)).await.success());
    let log = format!("{first_log}{}", d.log_text());
    assert!(
        !log.contains("s3cret"),
        "the password is never logged:\n{log}"
    );
    assert!(log.contains("***"), "the URL is shown redacted:\n{log}");
}

/// The dashboard and `/api/v1` over PostgreSQL, two daemons up: the same answers as the
/// CLI's `--json`, both daemons listed, a retry from the API reposts the row, and the
/// database password is in no answer and no log.
#[tokio::test]
async fn the_admin_api_and_dashboard_answer_on_postgres() {
    let Some(db) = common::pg::database("admin").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(sim_config()).await;
    let mut cfg = cluster_config(
        dir.path(),
        &sim,
        BucketLimit {
            requests: 1000,
            window: secs(60),
            concurrent: 2,
            reserve: 0,
        },
    );
    // Trusted loopback: the password is only there to be hidden.
    let url = db.url.replacen("://postgres@", "://postgres:s3cret-pw@", 1);
    let port = free_port();
    cfg.admin.listen = format!("127.0.0.1:{port}");
    let token = "pg-admin-token-4d1e";
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    cfg.admin.token_file = token_file.display().to_string();
    let a_config = write_config_with_url(dir.path(), "a", &cfg, &url);
    cfg.admin.listen = String::new();
    cfg.admin.token_file = String::new();
    let b_config = write_config_with_url(dir.path(), "b", &cfg, &url);
    cli(&a_config, &["migrate"]).await.ok();
    let pool = db.pool().await;
    let ok_url = format!("{}/media/ok.mp4", sim.base_url());
    let fail_url = format!("{}/media/fail.mp4", sim.base_url());
    insert_urls(&pool, &[ok_url.clone(), fail_url.clone()]).await;
    let mut a = Proc::start(&a_config, Some(KEY), "a");
    let mut b = Proc::start(&b_config, Some(KEY), "b");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(secs(10))
        .build()
        .unwrap();
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            let status = r.status();
            let body = r.text().await.unwrap();
            assert!(!body.contains("s3cret"), "{url} shows the password: {body}");
            assert!(!body.contains(token), "{url} shows the admin token: {body}");
            (status, body)
        }
    };
    let json = |(status, body): (reqwest::StatusCode, String)| {
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    wait_until(
        "one row completed, one failed, both daemons live",
        secs(30),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM imports WHERE state = 'completed'",
            )
            .await
                == 1
                && count(&pool, "SELECT count(*) FROM imports WHERE state = 'failed'").await == 1
                && count(
                    &pool,
                    "SELECT count(*) FROM daemons WHERE stopped_at IS NULL",
                )
                .await
                    == 2
        },
    )
    .await;
    let bad: i64 = sqlx::query_scalar("SELECT id FROM imports WHERE state = 'failed'")
        .fetch_one(&pool)
        .await
        .unwrap();

    let status = json(get("/api/v1/status").await);
    let cli_status = cli(&a_config, &["status", "--json"]).await.ok().json();
    assert_eq!(status["counts"], cli_status["counts"]);
    assert_eq!(status["counts"]["completed"], 1, "{status}");
    assert_eq!(status["counts"]["failed"], 1, "{status}");
    let pids: std::collections::BTreeSet<u64> = status["daemons"]
        .as_array()
        .expect("daemons")
        .iter()
        .filter_map(|d| d["pid"].as_u64())
        .collect();
    assert_eq!(
        pids,
        [a.pid as u64, b.pid as u64].into_iter().collect(),
        "{status}"
    );
    let failed = json(get("/api/v1/rows?state=failed").await);
    let cli_failed = cli(&a_config, &["list", "--state", "failed", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(failed["rows"], cli_failed);
    assert_eq!(failed["rows"][0]["id"], bad);
    let found = json(get("/api/v1/rows?q=fail.mp4").await);
    assert_eq!(found["rows"][0]["id"], bad, "{found}");
    let row = json(get(&format!("/api/v1/rows/{bad}")).await);
    let cli_row = cli(&a_config, &["show", &bad.to_string(), "--json"])
        .await
        .ok()
        .json();
    assert_eq!(row, cli_row);
    let ticket = json(get(&format!("/api/v1/rows/{bad}/ticket?format=json")).await);
    assert!(ticket.to_string().contains("fail.mp4"), "{ticket}");
    let groups = json(get("/api/v1/failures").await);
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
    let minutes = json(get("/api/v1/throughput").await);
    let completed: i64 = minutes
        .as_array()
        .expect("minutes")
        .iter()
        .filter_map(|m| m["completed"].as_i64())
        .sum();
    assert_eq!(completed, 1, "{minutes}");
    let overview = json(get("/ui/overview.json").await);
    assert!(overview.to_string().contains("fail.mp4"), "{overview}");
    let (page, html) = get("/").await;
    assert_eq!(page, reqwest::StatusCode::OK);
    assert!(html.contains("<html"), "{html}");

    // A retry from the API: the row is posted again, by whichever daemon claims it.
    let r = http
        .post(format!("{base}/api/v1/rows/{bad}/retry"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    wait_until("a second submit of the failed row", secs(20), || async {
        sim.stats()
            .import_posts_by_url
            .get(&fail_url)
            .copied()
            .unwrap_or(0)
            == 2
    })
    .await;
    let audit = json(get("/api/v1/audit").await);
    assert!(audit.to_string().contains("retry"), "{audit}");
    for p in [&mut a, &mut b] {
        assert!(p.terminate(secs(10)).await.success());
        let log = p.log_text();
        assert!(!log.contains("s3cret") && !log.contains(token), "{log}");
    }
}
