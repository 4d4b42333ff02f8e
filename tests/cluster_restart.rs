//! PostgreSQL stopped and started again under two running daemons: they ride it out
//! (retrying, `/healthz` 503 meanwhile, 200 again after), stay up, and every row completes
//! once, none lost or imported twice.
//!
//! A binary of its own: stopping the private cluster cuts every test's connections.

mod common;

use common::*;
use importlyd::config::BucketLimit;
use importlyd::sim::BucketConfig;

/// The status code of GET `url`, `None` when nothing answers within 2 s (a daemon stuck on
/// its database must not stall the poll past the waits' deadlines).
async fn status_of(url: &str) -> Option<u16> {
    let http = reqwest::Client::builder()
        .timeout(secs(2))
        .build()
        .expect("an HTTP client");
    http.get(url).send().await.ok().map(|r| r.status().as_u16())
}

/// Runs a blocking cluster operation (pg_ctl -w) off the runtime, so that the in-process
/// simulator keeps answering the daemons meanwhile; a panic in it is the test's.
async fn cluster_op(op: fn() -> bool) -> bool {
    tokio::task::spawn_blocking(op)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[tokio::test]
async fn a_postgres_restart_mid_run_loses_nothing_and_the_daemons_stay_up() {
    let Some(db) = common::pg::database("restart").await else {
        return;
    };
    if !common::pg::controls_cluster() {
        common::pg::skip_test(
            "restart",
            &format!(
                "the tests use ${} and cannot stop that server",
                common::pg::URL_ENV
            ),
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = sim_config();
    s.import = BucketConfig::new(1000, secs(60), 2);
    s.job_duration = ms(400);
    let sim = start_sim(s).await;
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.api.request_timeout = secs(1);
    cfg.cluster.lease = secs(5);
    cfg.limits.import = BucketLimit {
        requests: 1000,
        window: secs(60),
        concurrent: 2,
        reserve: 0,
    };
    // Each daemon has an admin listener of its own, to watch both /healthz.
    let port_a = free_port();
    cfg.admin.listen = format!("127.0.0.1:{port_a}");
    let config = write_config_with_url(dir.path(), "a", &cfg, &db.url);
    cli(&config, &["migrate"]).await.ok();
    let pool = db.pool().await;
    let n = 30i64;
    for i in 0..n {
        sqlx::query("INSERT INTO imports (url) VALUES ($1)")
            .bind(format!("https://media.example/restart/{i}.mp4"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let a = Proc::start(&config, Some(KEY), "a");
    let mut cfg_b = cfg.clone();
    let port_b = free_port();
    cfg_b.admin.listen = format!("127.0.0.1:{port_b}");
    let config_b = write_config_with_url(dir.path(), "b", &cfg_b, &db.url);
    let b = Proc::start(&config_b, Some(KEY), "b");
    let healthz = [
        format!("http://127.0.0.1:{port_a}/healthz"),
        format!("http://127.0.0.1:{port_b}/healthz"),
    ];
    let all_answer = |code: u16| {
        let healthz = &healthz;
        move || async move {
            for url in healthz {
                if status_of(url).await != Some(code) {
                    return false;
                }
            }
            true
        }
    };
    wait_until("both daemons' /healthz say ok", secs(15), all_answer(200)).await;
    let completed = || async {
        // The pool's connections may be the dead ones of the old server for a moment.
        common::pg::try_count(
            &pool,
            "SELECT count(*) FROM imports WHERE state = 'completed'",
        )
        .await
        .unwrap_or(0)
    };
    wait_until("some rows are done before the outage", secs(30), || async {
        completed().await >= 5
    })
    .await;
    assert!(
        cluster_op(common::pg::stop_cluster).await,
        "the private cluster stops"
    );
    // A database call to a stopped server fails only at the pool's acquire timeout (10 s),
    // so the daemons' own writes notice late; /healthz gives its read of the database a
    // second and answers 503 when it gets nothing.
    wait_until(
        "both daemons' /healthz answer 503 while the database is down",
        secs(10),
        all_answer(503),
    )
    .await;
    assert!(
        cluster_op(common::pg::start_cluster).await,
        "the private cluster starts again"
    );
    wait_until(
        "both daemons' /healthz say ok again after the outage",
        secs(60),
        all_answer(200),
    )
    .await;
    wait_until("every row completes after the outage", secs(90), || async {
        completed().await == n
    })
    .await;
    let stats = sim.stats();
    for (url, n) in &stats.accepted_by_url {
        assert_eq!(*n, 1, "{url} imported once");
    }
    assert_eq!(stats.accepted_by_url.len() as i64, n);
    for mut p in [a, b] {
        assert!(
            p.terminate(secs(10)).await.success(),
            "the daemon stayed up through the outage and stops cleanly; log:\n{}",
            p.log_text()
        );
    }
}
