//! PostgreSQL stopped and started again under two running daemons: they ride it out
//! (retrying, `/healthz` 503 meanwhile, 200 again after), stay up, and every row completes
//! once, none lost or imported twice.
//!
//! A binary of its own: restarting the private cluster cuts every test's connections.

mod common;

use common::*;
use importlyd::config::BucketLimit;
use importlyd::sim::BucketConfig;
use sqlx::PgPool;

/// A free loopback port for the admin listener.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The status code of GET `url`, `None` when nothing answers.
async fn status_of(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

async fn count(pool: &PgPool, sql: &str) -> Option<i64> {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .ok()
}

#[tokio::test]
async fn a_postgres_restart_mid_run_loses_nothing_and_the_daemons_stay_up() {
    let Some(db) = common::pg::database("restart").await else {
        return;
    };
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
    let port = free_port();
    cfg.admin.listen = format!("127.0.0.1:{port}");
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let toml = config_toml(&cfg).replacen(
        "[database]\n",
        &format!("[database]\nurl = {:?}\n", db.url),
        1,
    );
    let config = dir.path().join("d.toml");
    std::fs::write(&config, toml).unwrap();
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
    // The second daemon has no admin listener (one port, one listener).
    let mut cfg_b = cfg.clone();
    cfg_b.admin.listen = String::new();
    let toml_b = config_toml(&cfg_b).replacen(
        "[database]\n",
        &format!("[database]\nurl = {:?}\n", db.url),
        1,
    );
    let config_b = dir.path().join("b.toml");
    std::fs::write(&config_b, toml_b).unwrap();
    let b = Proc::start(&config_b, Some(KEY), "b");
    wait_until("/healthz says ok", secs(15), || async {
        status_of(&healthz).await == Some(200)
    })
    .await;
    wait_until(
        "some rows are done before the restart",
        secs(30),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM imports WHERE state = 'completed'",
            )
            .await
            .unwrap_or(0)
                >= 5
        },
    )
    .await;
    assert!(
        common::pg::restart_cluster(),
        "the private cluster restarts"
    );
    wait_until(
        "every row completes after the restart",
        secs(90),
        || async {
            count(
                &pool,
                "SELECT count(*) FROM imports WHERE state = 'completed'",
            )
            .await
            .unwrap_or(0)
                == n
        },
    )
    .await;
    let stats = sim.stats();
    for (url, n) in &stats.accepted_by_url {
        assert_eq!(*n, 1, "{url} imported once");
    }
    assert_eq!(stats.accepted_by_url.len() as i64, n);
    for mut p in [a, b] {
        assert!(
            p.terminate(secs(10)).await.success(),
            "the daemon stayed up through the restart and stops cleanly; log:\n{}",
            p.log_text()
        );
    }
}
