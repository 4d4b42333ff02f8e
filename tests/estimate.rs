//! Issue 15: the drain estimate that `status --json` (and `wait`) shows brackets the real
//! drain time on a tight account. The pure arithmetic is unit-tested in `src/estimate.rs`;
//! this checks the whole chain: the queue's shape and the budgets read from the database,
//! the config, and the daemon really draining at that pace.

mod common;

use common::*;
use importlyd::config::BucketLimit;
use importlyd::sim::{BucketConfig, SimConfig};

#[tokio::test]
async fn the_estimate_brackets_the_real_drain_time_on_a_tight_account() {
    // 24 rows, 6 imports per 3 s, 4 slots and 200 ms jobs: the rate binds (about 12 s).
    let window = secs(3);
    let rows: i64 = 24;
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(6, window, 4),
        job_duration: ms(200),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = daemon_config(dir.path(), &sim);
    // The operator's config states the account's limits, so the estimate made before the
    // daemon's first answer already uses them.
    cfg.limits.import = BucketLimit {
        requests: 6,
        window,
        concurrent: 4,
        reserve: 0,
    };
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    let urls: Vec<String> = (0..rows)
        .map(|i| format!("https://example.com/estimate/{i}.mp4"))
        .collect();
    db.insert_many(&urls).await;

    // At the start of a window, so both sides count the same windows.
    ensure_room_in_window(window, secs(2)).await;
    let status = cli(&config, &["status", "--json"]).await.ok().json();
    let estimate = &status["estimate"];
    assert_eq!(estimate["ahead"], rows, "{estimate}");
    assert!(
        estimate["limited_by"]
            .as_str()
            .is_some_and(|l| l.contains("import rate (6/3s)")),
        "the rate binds: {estimate}"
    );
    let done_at_ms = estimate["done_at"].as_u64().expect("done_at") * 1000;

    let daemon = Daemon::start(&cfg, KEY).await;
    wait_until("every row completed", secs(60), || async {
        db.count("completed").await == rows
    })
    .await;
    let finished_ms = now_ms();
    daemon.stop().await;

    // One window either way: the estimate counts whole windows from the one it was made in,
    // `done_at` is in whole seconds, and the last job and its poll add a few hundred ms.
    let slack = window.as_millis() as i64 + 1_000;
    let off = finished_ms as i64 - done_at_ms as i64;
    assert!(
        off.abs() <= slack,
        "drained at {finished_ms}, estimated {done_at_ms} ({off:+} ms): {estimate}"
    );
    // And it is no vacuous bound: the drain took the rate's time, not an instant.
    assert!(
        sim.stats().accepted_imports >= rows as u64,
        "every row was imported"
    );
}
