//! Issue 7: metadata rows, the metadata cache and the credit guard, proven against the
//! simulator.
//!
//! Real parts only: the simulator in-process on 127.0.0.1:0, a SQLite file in a temporary
//! directory, and the daemon either in-process or as the `importlyd` binary. Every budget is
//! a few seconds or a minute long (never the built-in hourly ones, whose pacing depends on the
//! time of day), and every wait polls a condition until a deadline.

mod common;

use std::time::Instant;

use common::*;
use importlyd::config::Config;
use importlyd::sim::{BucketConfig, FaultMix, Sim, SimConfig};
use importlyd::store::{CachedMetadata, Row, StoredAttempt};
use serde_json::{Value, json};
use tempfile::TempDir;

const URL: &str = "https://media.example.com/meta";
/// The simulator's starting balance (its default).
const CREDITS: i64 = 1_000_000;

// ---- helpers ----

/// A simulator, a daemon config pointing at it and the user's connection to a fresh queue.
struct Setup {
    dir: TempDir,
    sim: Sim,
    cfg: Config,
    db: Db,
}

async fn setup(sim_cfg: SimConfig, edit: impl FnOnce(&mut Config)) -> Setup {
    let sim = start_sim(sim_cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    edit(&mut cfg);
    let db = Db::create(&cfg.database.path).await;
    Setup { dir, sim, cfg, db }
}

/// `INSERT INTO imports (url, kind) VALUES (?, 'metadata')`.
async fn insert_metadata(db: &Db, url: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO imports (url, kind) VALUES (?, 'metadata') RETURNING id")
        .bind(url)
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("insert metadata row {url}: {e}"))
}

/// The cache entry of `url`, whatever its age.
async fn cached(db: &Db, url: &str) -> Option<CachedMetadata> {
    sqlx::query_as::<_, CachedMetadata>(
        "SELECT url, title, duration, formats, data, job_id, fetched_at FROM metadata_cache \
         WHERE url = ?",
    )
    .bind(url)
    .fetch_optional(&db.pool)
    .await
    .expect("read metadata_cache")
}

/// The metadata rows queued for `url` (by a user or by the credit guard).
async fn metadata_rows(db: &Db, url: &str) -> Vec<Row> {
    db.rows()
        .await
        .into_iter()
        .filter(|r| r.kind == "metadata" && r.url == url)
        .collect()
}

fn terminal(r: &Row) -> bool {
    matches!(r.state.as_str(), "completed" | "failed" | "cancelled")
}

/// Waits until row `id` is terminal and returns it.
async fn settled(db: &Db, id: i64, timeout: std::time::Duration) -> Row {
    wait_for(&format!("row {id} terminal"), timeout, || async move {
        let r = db.row(id).await;
        terminal(&r).then_some(r)
    })
    .await
}

fn json_of(s: Option<&str>) -> Value {
    let s = s.expect("a JSON text");
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn costs(formats: &Value) -> Vec<i64> {
    formats
        .as_array()
        .expect("formats are a list")
        .iter()
        .map(|f| f["costInCredits"].as_i64().expect("costInCredits"))
        .collect()
}

fn outcomes(log: &[StoredAttempt]) -> Vec<(&str, &str)> {
    log.iter()
        .map(|a| (a.endpoint.as_str(), a.outcome.as_str()))
        .collect()
}

// ---- 1. metadata rows ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_rows_complete_and_fill_the_cache() {
    let s = setup(sim_config(), |_| {}).await;
    let (db, sim) = (&s.db, &s.sim);
    let urls = [
        format!("{URL}/fill-a.mp4"),
        format!("{URL}/fill-b.mp4"),
        format!("{URL}/cost-3/fill-c.mp4"),
    ];
    let t0 = now_ms();
    let mut ids = Vec::new();
    for u in &urls {
        ids.push(insert_metadata(db, u).await);
    }
    let daemon = Daemon::start(&s.cfg, KEY).await;
    wait_until("3 metadata rows completed", secs(15), || async move {
        db.count("completed").await == 3
    })
    .await;
    daemon.stop().await;
    let t1 = now_ms();

    for (id, url) in ids.iter().zip(&urls) {
        let r = db.row(*id).await;
        let ctx = format!("{r:?}");
        assert_eq!(
            (r.kind.as_str(), r.state.as_str()),
            ("metadata", "completed")
        );
        assert_eq!(r.attempts, 0, "{ctx}");
        assert!(r.completed_at.is_some(), "{ctx}");
        let job = r.importly_job_id.clone().expect("a job id");
        assert!(job.starts_with("meta_"), "{ctx}");
        let result = json_of(r.result.as_deref());
        assert_eq!(result["status"], "completed", "{ctx}");
        assert_eq!(result["jobId"], json!(job), "{ctx}");
        assert!(
            result.get("fromCache").is_none(),
            "fetched, not cached: {ctx}"
        );
        let name = url.rsplit('/').next().unwrap();
        assert_eq!(
            result["result"]["title"],
            json!(format!("Sim media {name}"))
        );

        let c = cached(db, url)
            .await
            .unwrap_or_else(|| panic!("{url} cached"));
        assert_eq!(
            c.title.as_deref(),
            Some(format!("Sim media {name}").as_str())
        );
        assert!(c.duration.is_some_and(|d| d >= 60.0), "{c:?}");
        let formats: Value = serde_json::from_str(&c.formats).expect("formats JSON");
        let want = if url.contains("/cost-3/") {
            vec![3, 6, 12, 3]
        } else {
            vec![1, 2, 4, 1]
        };
        assert_eq!(costs(&formats), want, "costInCredits of {url}");
        assert_eq!(formats, result["result"]["availableFormats"]);
        assert_eq!(
            serde_json::from_str::<Value>(&c.data).unwrap(),
            result,
            "the cache keeps the whole data object"
        );
        assert_eq!(c.job_id.as_deref(), Some(job.as_str()));
        let fetched = unix_ms(c.fetched_at);
        assert!(
            t0 <= fetched && fetched <= t1,
            "fetched_at {} not in the run",
            importlyd::clock::iso(c.fetched_at)
        );

        let log = db.attempts(*id).await;
        assert_eq!(outcomes(&log), [("/metadata", "accepted")], "{log:?}");
        assert_eq!(log[0].method, "POST");
        assert_eq!(log[0].job_id.as_deref(), Some(job.as_str()));
    }
    let stats = sim.stats();
    assert_eq!(stats.metadata_posts, 3);
    assert!(stats.metadata_status_requests >= 3);
    assert_eq!(stats.import_posts, 0);
    assert_eq!(stats.credits, CREDITS, "metadata costs no credits");

    // `purge` keeps the cache from growing without bound: entries older than the cut go,
    // younger ones stay.
    let config = write_config(s.dir.path(), &s.cfg);
    let out = cli(&config, &["purge", "--completed", "--older-than", "1h"])
        .await
        .ok();
    assert!(
        !out.stdout.contains("metadata cache entries"),
        "fresh entries kept: {}",
        out.stdout
    );
    for u in &urls {
        assert!(cached(db, u).await.is_some(), "{u} purged too early");
    }
    let out = cli(&config, &["purge", "--completed", "--older-than", "0s"])
        .await
        .ok();
    assert!(
        out.stdout.contains("deleted 3 metadata cache entries"),
        "{}",
        out.stdout
    );
    for u in &urls {
        assert!(
            cached(db, u).await.is_none(),
            "{u} still cached after purge"
        );
    }
    s.sim.clone().shutdown().await;
}

// ---- 2. the cache and its TTL ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_within_the_ttl_completes_from_the_cache() {
    let s = setup(sim_config(), |_| {}).await;
    let (db, sim) = (&s.db, &s.sim);
    let url = format!("{URL}/repeat.mp4");
    let daemon = Daemon::start(&s.cfg, KEY).await;
    let first = insert_metadata(db, &url).await;
    let first_row = settled(db, first, secs(10)).await;
    assert_eq!(first_row.state, "completed");
    assert_eq!(sim.stats().metadata_posts, 1);

    let second = insert_metadata(db, &url).await;
    let row = settled(db, second, secs(10)).await;
    daemon.stop().await;

    assert_eq!(row.state, "completed", "{row:?}");
    assert_eq!(row.attempts, 0);
    assert_eq!(sim.stats().metadata_posts, 1, "no second API call");
    assert!(db.attempts(second).await.is_empty(), "no exchange at all");
    let c = cached(db, &url).await.expect("cached");
    let result = json_of(row.result.as_deref());
    assert_eq!(result["fromCache"], true, "{result}");
    assert_eq!(
        result["cachedAt"],
        json!(importlyd::clock::iso(c.fetched_at))
    );
    let fetched = json_of(first_row.result.as_deref());
    assert_eq!(result["result"], fetched["result"], "the same metadata");
    assert_eq!(row.importly_job_id, first_row.importly_job_id);
    s.sim.clone().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_ttl_a_repeat_calls_the_api_again() {
    let ttl = ms(300);
    let s = setup(sim_config(), |c| c.metadata.cache_ttl = ttl).await;
    let (db, sim) = (&s.db, &s.sim);
    let url = format!("{URL}/expiring.mp4");
    let daemon = Daemon::start(&s.cfg, KEY).await;
    let first = insert_metadata(db, &url).await;
    let first_row = settled(db, first, secs(10)).await;
    assert_eq!(first_row.state, "completed");
    let old = cached(db, &url).await.expect("cached");
    let expired = unix_ms(old.fetched_at) + ttl.as_millis() as u64 + 50;
    wait_until("the cache entry to expire", secs(5), || async move {
        now_ms() > expired
    })
    .await;

    let second = insert_metadata(db, &url).await;
    let row = settled(db, second, secs(10)).await;
    daemon.stop().await;

    assert_eq!(row.state, "completed", "{row:?}");
    assert_eq!(
        sim.stats().metadata_posts,
        2,
        "an expired entry is fetched again"
    );
    let result = json_of(row.result.as_deref());
    assert!(result.get("fromCache").is_none(), "{result}");
    assert_ne!(row.importly_job_id, first_row.importly_job_id, "a new job");
    let new = cached(db, &url).await.expect("cached");
    assert!(new.fetched_at > old.fetched_at, "{new:?} after {old:?}");
    assert_eq!(
        new.job_id, row.importly_job_id,
        "the cache holds the new fetch"
    );
    s.sim.clone().shutdown().await;
}

// ---- 3, 4. the credit guard per row ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflighted_import_over_max_credits_fails_without_a_post() {
    let s = setup(sim_config(), |_| {}).await;
    let (db, sim) = (&s.db, &s.sim);
    // cost-2: 360p 2, 720p 4, 1080p 8, audio 2.
    let url = format!("{URL}/cost-2/big.mp4");
    let id = db
        .insert_with_options(&url, r#"{"videoQuality":"1080p","max_credits":5}"#)
        .await;
    // No quality asked for: the most expensive format (8) is the one compared.
    let any_url = format!("{URL}/cost-2/any.mp4");
    let any = db
        .insert_with_options(&any_url, r#"{"max_credits":5}"#)
        .await;
    let daemon = Daemon::start(&s.cfg, KEY).await;
    let row = settled(db, id, secs(15)).await;
    let any_row = settled(db, any, secs(15)).await;
    daemon.stop().await;

    for (r, quality) in [(&row, "1080p"), (&any_row, "most expensive")] {
        let ctx = db.dump().await;
        assert_eq!(r.state, "failed", "{ctx}");
        let err = r.last_error.as_deref().unwrap_or_default();
        for needle in ["credit guard", quality, "8 credits", "max_credits = 5"] {
            assert!(err.contains(needle), "`{needle}` in the reason: {err}");
        }
        assert_eq!(r.attempts, 0, "{ctx}");
        assert_eq!(r.importly_job_id, None, "{ctx}");
        assert!(
            db.attempts(r.id)
                .await
                .iter()
                .all(|a| a.endpoint != "/import"),
            "no POST /import in the log"
        );
        let meta = metadata_rows(db, &r.url).await;
        assert_eq!(meta.len(), 1, "the guard queued one metadata row: {ctx}");
        assert_eq!(meta[0].state, "completed", "{ctx}");
        assert!(cached(db, &r.url).await.is_some());
    }
    let stats = sim.stats();
    assert!(!stats.import_posts_by_url.contains_key(&url), "{stats:?}");
    assert!(
        !stats.import_posts_by_url.contains_key(&any_url),
        "{stats:?}"
    );
    assert_eq!(stats.import_posts, 0);
    assert_eq!(stats.metadata_posts, 2);
    assert_eq!(stats.credits, CREDITS, "nothing was spent");
    s.sim.clone().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflighted_import_under_max_credits_imports_with_its_quality() {
    let s = setup(sim_config(), |_| {}).await;
    let (db, sim) = (&s.db, &s.sim);
    let url = format!("{URL}/cost-2/fits.mp4");
    let id = db
        .insert_with_options(
            &url,
            r#"{"videoQuality":"720p","max_credits":5,"preflight":true,"includeAudio":true}"#,
        )
        .await;
    let daemon = Daemon::start(&s.cfg, KEY).await;
    let row = settled(db, id, secs(15)).await;
    assert_eq!(row.state, "completed", "{}", db.dump().await);
    assert_eq!(sim.stats().metadata_posts, 1);

    // A second import of the same URL reuses the cached metadata: no second metadata call,
    // and its own quality (1080p: 8 credits) is over its limit.
    let again = db
        .insert_with_options(&url, r#"{"videoQuality":"1080p","max_credits":5}"#)
        .await;
    let again_row = settled(db, again, secs(10)).await;
    daemon.stop().await;

    assert_eq!(row.attempts, 0);
    assert!(
        row.importly_job_id
            .as_deref()
            .is_some_and(|j| j.starts_with("imp_"))
    );
    assert_eq!(
        row.credits_used,
        Some(2),
        "the simulator charges cost-2 imports 2"
    );
    let stats = sim.stats();
    assert_eq!(stats.import_posts_by_url.get(&url), Some(&1), "{stats:?}");
    let body = &stats.last_import_body_by_url[&url];
    assert_eq!(
        body,
        &json!({"url": url, "videoQuality": "720p", "includeAudio": true}),
        "the row's quality and options are sent, our own keys are not"
    );
    assert_eq!(metadata_rows(db, &url).await.len(), 1);

    assert_eq!(again_row.state, "failed", "{again_row:?}");
    let err = again_row.last_error.as_deref().unwrap_or_default();
    assert!(
        err.contains("8 credits") && err.contains("max_credits = 5"),
        "{err}"
    );
    assert_eq!(
        stats.metadata_posts, 1,
        "the cache answered the second preflight"
    );
    assert_eq!(stats.import_posts, 1);
    assert_eq!(stats.credits, CREDITS - 2);
    s.sim.clone().shutdown().await;
}

// ---- 5. the credit guard from the config file ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_max_credits_guards_rows_without_options() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.metadata.max_credits = 3;
    let config = write_config(dir.path(), &cfg);
    let toml = std::fs::read_to_string(&config).unwrap();
    let section = toml
        .split("[metadata]")
        .nth(1)
        .expect("a [metadata] section");
    let section = section.split("\n[").next().unwrap();
    assert!(section.contains("max_credits = 3"), "{toml}");
    let db = Db::create(&cfg.database.path).await;

    // Multiplier 1: 360p 1, 720p 2, 1080p 4, audio 1.
    let plain = format!("{URL}/global-plain.mp4");
    let p = db.insert(&plain).await;
    let small = format!("{URL}/global-720.mp4");
    let q = db
        .insert_with_options(&small, r#"{"videoQuality":"720p"}"#)
        .await;
    let skip = format!("{URL}/cost-2/global-skip.mp4");
    let k = db
        .insert_with_options(&skip, r#"{"preflight":false}"#)
        .await;

    let mut daemon = Proc::start(&config, Some(KEY), "daemon");
    let d = &db;
    wait_until("3 rows terminal", secs(20), || async move {
        let rows = d.rows().await;
        [p, q, k]
            .iter()
            .all(|id| rows.iter().any(|r| r.id == *id && terminal(r)))
    })
    .await;
    assert!(daemon.terminate(secs(10)).await.success());

    let (p_row, q_row, k_row) = (db.row(p).await, db.row(q).await, db.row(k).await);
    let ctx = db.dump().await;
    assert_eq!(p_row.state, "failed", "{ctx}");
    let err = p_row.last_error.as_deref().unwrap_or_default();
    assert!(
        err.contains("4 credits") && err.contains("max_credits = 3"),
        "{err}"
    );
    assert_eq!(q_row.state, "completed", "{ctx}");
    assert_eq!(k_row.state, "completed", "{ctx}");
    for r in [&p_row, &q_row, &k_row] {
        assert_eq!(r.attempts, 0, "{ctx}");
    }
    let stats = sim.stats();
    assert!(!stats.import_posts_by_url.contains_key(&plain));
    assert_eq!(stats.import_posts_by_url.get(&small), Some(&1));
    assert_eq!(stats.import_posts_by_url.get(&skip), Some(&1));
    assert_eq!(
        stats.last_import_body_by_url[&small],
        json!({"url": small, "videoQuality": "720p"})
    );
    assert_eq!(stats.last_import_body_by_url[&skip], json!({"url": skip}));
    assert_eq!(stats.metadata_posts, 2, "the guarded rows only");
    assert!(
        metadata_rows(&db, &skip).await.is_empty(),
        "preflight false: no metadata"
    );
    assert!(cached(&db, &skip).await.is_none());
    sim.shutdown().await;
}

// ---- 6. a preflight whose metadata fails ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_preflight_fails_the_import_without_a_post() {
    let s = setup(sim_config(), |_| {}).await;
    let (db, sim) = (&s.db, &s.sim);
    let url = format!("{URL}/notfound/gone.mp4");
    let id = db.insert_with_options(&url, r#"{"preflight":true}"#).await;
    let daemon = Daemon::start(&s.cfg, KEY).await;
    let row = settled(db, id, secs(15)).await;
    daemon.stop().await;

    let ctx = db.dump().await;
    assert_eq!(row.state, "failed", "{ctx}");
    let err = row.last_error.as_deref().unwrap_or_default();
    assert!(err.starts_with("preflight metadata failed"), "{err}");
    assert_eq!(row.attempts, 0, "{ctx}");
    let meta = metadata_rows(db, &url).await;
    assert_eq!(meta.len(), 1, "{ctx}");
    assert_eq!(meta[0].state, "failed");
    let meta_log = db.attempts(meta[0].id).await;
    assert_eq!(meta_log.len(), 1, "{meta_log:?}");
    assert_eq!(meta_log[0].endpoint, "/metadata");
    assert_eq!(meta_log[0].http_status, Some(404));
    assert!(cached(db, &url).await.is_none());
    let stats = sim.stats();
    assert_eq!(stats.import_posts, 0);
    assert_eq!(stats.metadata_posts, 1, "a 404 is not retried");
    assert_eq!(stats.credits, CREDITS);
    s.sim.clone().shutdown().await;
}

// ---- 7. limits of their own ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_429s_stay_in_their_own_bucket() {
    let window = secs(3);
    let s = setup(
        SimConfig {
            metadata: BucketConfig::new(3, window, 5),
            ..sim_config()
        },
        |c| {
            c.limits.metadata.requests = 100;
            c.limits.metadata.window = window;
        },
    )
    .await;
    let (db, sim) = (&s.db, &s.sim);
    let urls: Vec<String> = (1..=5)
        .map(|i| format!("{URL}/throttled-{i}.mp4"))
        .collect();
    for u in &urls {
        insert_metadata(db, u).await;
    }

    // Another client of the account spends the metadata window first, so the daemon's first
    // request meets a 429 and the bucket stays shut until the window resets.
    ensure_room_in_window(window, ms(2500)).await;
    let http = reqwest::Client::new();
    for i in 0..3 {
        let resp = http
            .get(format!("{}/metadata", sim.base_url()))
            .query(&[("url", format!("{URL}/bad/other-client-{i}.mp4"))])
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "the other client's request is counted");
    }
    let started = Instant::now();
    let daemon = Daemon::start(&s.cfg, KEY).await;
    wait_until("a metadata 429", secs(5), || async move {
        sim.stats().rate_limited >= 1
    })
    .await;

    // Imports go at full speed meanwhile.
    let import_url = format!("{URL}/during-throttle.mp4");
    let import = db.insert(&import_url).await;
    let t = Instant::now();
    let import_row = settled(db, import, secs(10)).await;
    let import_took = t.elapsed();
    let meta_done = db
        .rows()
        .await
        .iter()
        .filter(|r| r.kind == "metadata" && r.state == "completed")
        .count();
    assert_eq!(import_row.state, "completed", "{}", db.dump().await);
    assert!(import_took < secs(2), "the import took {import_took:?}");
    assert!(
        meta_done < urls.len(),
        "the import finished while metadata was throttled"
    );

    wait_until("5 metadata rows completed", secs(20), || async move {
        db.count("completed").await == 6
    })
    .await;
    let elapsed = started.elapsed();
    daemon.stop().await;

    let stats = sim.stats();
    for r in db.rows().await {
        assert_eq!(r.attempts, 0, "429s never count: {r:?}");
    }
    let log = db.all_attempts().await;
    let limited: Vec<&StoredAttempt> = log.iter().filter(|a| a.outcome == "rate_limited").collect();
    assert!(stats.rate_limited >= 1);
    assert_eq!(
        limited.len() as u64,
        stats.rate_limited,
        "every 429 is logged"
    );
    for a in &limited {
        assert_eq!(
            (a.endpoint.as_str(), a.http_status),
            ("/metadata", Some(429))
        );
        let body = json_of(a.response_body.as_deref());
        assert_eq!(body["endpoint"], "/metadata");
    }
    assert_eq!(
        outcomes(&db.attempts(import).await),
        [("/import", "accepted")],
        "the import met no limit"
    );
    let ours = log.iter().filter(|a| a.endpoint == "/metadata").count() as u64;
    assert_eq!(
        ours + 3,
        stats.metadata_posts,
        "every metadata request is in the log"
    );
    // Adapted to the server's window: at most the requests in flight met the 429s.
    assert!(
        stats.rate_limited <= 3,
        "{} rate-limit 429s",
        stats.rate_limited
    );
    assert!(elapsed < secs(15), "took {elapsed:?}");
    s.sim.clone().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_concurrency_is_kept_to_the_servers_limit() {
    let s = setup(
        SimConfig {
            metadata: BucketConfig::new(10_000, secs(60), 2),
            metadata_duration: ms(300),
            ..sim_config()
        },
        |c| c.limits.metadata.concurrent = 5,
    )
    .await;
    let (db, sim) = (&s.db, &s.sim);
    for i in 1..=8 {
        insert_metadata(db, &format!("{URL}/concurrent-{i}.mp4")).await;
    }
    let started = Instant::now();
    let daemon = Daemon::start(&s.cfg, KEY).await;
    wait_until("8 metadata rows completed", secs(20), || async move {
        db.count("completed").await == 8
    })
    .await;
    let elapsed = started.elapsed();
    daemon.stop().await;

    let stats = sim.stats();
    assert!(
        stats.max_concurrent_metadata <= 2,
        "{}",
        stats.max_concurrent_metadata
    );
    assert_eq!(stats.max_concurrent_metadata, 2, "the limit is used");
    for r in db.rows().await {
        assert_eq!(r.attempts, 0, "concurrency 429s never count: {r:?}");
    }
    let log = db.all_attempts().await;
    let refused: Vec<&StoredAttempt> = log
        .iter()
        .filter(|a| a.outcome == "concurrency_limited")
        .collect();
    assert_eq!(
        refused.len() as u64,
        stats.concurrency_limited,
        "every one logged"
    );
    assert!(
        refused
            .iter()
            .all(|a| a.endpoint == "/metadata" && a.http_status == Some(429))
    );
    assert_eq!(stats.metadata_posts, 8 + stats.concurrency_limited);
    assert_eq!(stats.import_posts, 0);
    let probes = elapsed.as_millis() as u64 / s.cfg.poll.status_interval.as_millis() as u64;
    assert!(
        stats.concurrency_limited <= probes + 8,
        "{} concurrency 429s in {elapsed:?}",
        stats.concurrency_limited
    );
    s.sim.clone().shutdown().await;
}

// ---- 8. operator commands ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_metadata_bucket_and_ticket_covers_metadata_rows() {
    let window = secs(60);
    let sim = start_sim(SimConfig {
        metadata: BucketConfig::new(40, window, 5),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.limits.metadata.requests = 500;
    cfg.limits.metadata.window = window;
    let config = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    let ok = insert_metadata(&db, &format!("{URL}/ticket-ok.mp4")).await;
    let gone_url = format!("{URL}/notfound/ticket.mp4");
    let gone = insert_metadata(&db, &gone_url).await;

    // The server's window must not roll over between the requests and `status`.
    ensure_room_in_window(window, secs(5)).await;
    let mut daemon = Proc::start(&config, Some(KEY), "daemon");
    let d = &db;
    wait_until("both rows terminal", secs(20), || async move {
        terminal(&d.row(ok).await) && terminal(&d.row(gone).await)
    })
    .await;
    assert!(daemon.terminate(secs(10)).await.success());
    assert_eq!(db.row(ok).await.state, "completed");
    assert_eq!(db.row(gone).await.state, "failed");

    let st = cli(&config, &["status", "--json"]).await.ok().json();
    let b = &st["buckets"]["metadata"];
    for k in ["limit", "remaining", "reset"] {
        assert!(b[k].is_u64(), "buckets.metadata.{k} in {st}");
    }
    assert_eq!(b["source"], "server", "{st}");
    assert_eq!(b["limit"], 40, "the server's limit: {st}");
    assert_eq!(
        b["remaining"],
        json!(40 - sim.stats().metadata_posts),
        "{st}"
    );
    let text = cli(&config, &["status"]).await.ok().stdout;
    assert!(text.contains("metadata"), "{text}");

    let sid = gone.to_string();
    let t = cli(&config, &["ticket", &sid, "--format", "json"])
        .await
        .ok()
        .json();
    assert_eq!(t["row"]["id"], json!(gone), "{t}");
    assert_eq!(t["row"]["kind"], "metadata", "{t}");
    assert_eq!(t["row"]["state"], "failed", "{t}");
    assert_eq!(t["request_payload"]["url"], json!(gone_url), "{t}");
    let attempts = t["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{t}");
    let a = &attempts[0];
    assert_eq!(a["endpoint"], "/metadata", "{t}");
    assert_eq!(a["http_status"], 404, "{t}");
    for k in ["started_at", "finished_at", "response_body"] {
        assert!(a[k].is_string(), "{k} in {t}");
    }
    assert!(
        a["response_body"]
            .as_str()
            .is_some_and(|b| b.contains("not publicly accessible")),
        "{t}"
    );
    let text = cli(&config, &["ticket", &sid]).await.ok().stdout;
    assert!(text.contains("/metadata") && text.contains("404"), "{text}");
    assert!(
        !text.contains(KEY) && !t.to_string().contains(KEY),
        "no key in a ticket"
    );
    sim.shutdown().await;
}

// ---- edges of the guard ----

/// `cache_ttl = 0s` ("always ask"): a guarded import still gets the metadata fetched for it,
/// once, and goes on; it must not queue metadata rows forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_cache_ttl_still_lets_the_guard_decide() {
    let s = setup(sim_config(), |c| c.metadata.cache_ttl = ms(0)).await;
    let (db, sim) = (&s.db, &s.sim);
    let fits = format!("{URL}/cost-2/ttl0-fits.mp4");
    let over = format!("{URL}/cost-2/ttl0-over.mp4");
    let gone = format!("{URL}/notfound/ttl0.mp4");
    let a = db
        .insert_with_options(&fits, r#"{"videoQuality":"720p","max_credits":5}"#)
        .await;
    let b = db
        .insert_with_options(&over, r#"{"videoQuality":"1080p","max_credits":5}"#)
        .await;
    let c = db.insert_with_options(&gone, r#"{"preflight":true}"#).await;
    let daemon = Daemon::start(&s.cfg, KEY).await;
    let (ra, rb, rc) = (
        settled(db, a, secs(10)).await,
        settled(db, b, secs(10)).await,
        settled(db, c, secs(10)).await,
    );
    daemon.stop().await;

    let ctx = db.dump().await;
    assert_eq!(ra.state, "completed", "{ctx}");
    assert_eq!(rb.state, "failed", "{ctx}");
    assert!(
        rb.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("8 credits")
    );
    assert_eq!(rc.state, "failed", "{ctx}");
    assert!(
        rc.last_error
            .as_deref()
            .unwrap_or_default()
            .starts_with("preflight metadata failed"),
        "{ctx}"
    );
    for u in [&fits, &over, &gone] {
        assert_eq!(
            metadata_rows(db, u).await.len(),
            1,
            "one fetch for {u}: {ctx}"
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.metadata_posts, 3);
    assert_eq!(stats.import_posts, 1);
    s.sim.clone().shutdown().await;
}

/// `importlyd retry` of an import whose preflight metadata failed (here: a 500 with
/// `max_attempts = 1`) tries the metadata again instead of failing at once on the old
/// failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_an_import_whose_preflight_failed_fetches_the_metadata_again() {
    let s = setup(sim_config(), |c| c.retry.max_attempts = 1).await;
    let (db, sim) = (&s.db, &s.sim);
    let config = write_config(s.dir.path(), &s.cfg);
    // Every request gets a 500 until the server recovers.
    sim.set_faults(FaultMix {
        p500: 1.0,
        ..FaultMix::default()
    });
    let url = format!("{URL}/retry.mp4");
    let id = db
        .insert_with_options(&url, r#"{"videoQuality":"720p","max_credits":5}"#)
        .await;
    let daemon = Daemon::start(&s.cfg, KEY).await;
    let row = settled(db, id, secs(10)).await;
    assert_eq!(row.state, "failed", "{}", db.dump().await);
    let err = row.last_error.clone().unwrap_or_default();
    assert!(err.starts_with("preflight metadata failed"), "{err}");
    assert!(err.contains("500"), "{err}");
    assert_eq!(sim.stats().metadata_posts, 1);

    sim.set_faults(FaultMix::default());
    cli(&config, &["retry", &id.to_string()]).await.ok();
    let row = settled(db, id, secs(10)).await;
    daemon.stop().await;
    let ctx = db.dump().await;
    assert_eq!(row.state, "completed", "{ctx}");
    assert_eq!(row.attempts, 0, "{ctx}");
    let meta = metadata_rows(db, &url).await;
    let states: Vec<&str> = meta.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(states, ["failed", "completed"], "{ctx}");
    let stats = sim.stats();
    assert_eq!(stats.metadata_posts, 2, "one new metadata fetch");
    assert_eq!(stats.import_posts_by_url.get(&url), Some(&1));
    s.sim.clone().shutdown().await;
}

/// A `max_credits` the guard cannot read as a whole number must not switch the guard off:
/// `5.0` is 5, and a string fails the row without spending anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_credits_that_is_not_an_integer_fails_closed() {
    let s = setup(sim_config(), |_| {}).await;
    let (db, sim) = (&s.db, &s.sim);
    let float = format!("{URL}/cost-2/float.mp4");
    let a = db
        .insert_with_options(&float, r#"{"videoQuality":"1080p","max_credits":5.0}"#)
        .await;
    let text = format!("{URL}/cost-2/text.mp4");
    let b = db
        .insert_with_options(&text, r#"{"videoQuality":"360p","max_credits":"5"}"#)
        .await;
    let daemon = Daemon::start(&s.cfg, KEY).await;
    let (ra, rb) = (
        settled(db, a, secs(10)).await,
        settled(db, b, secs(10)).await,
    );
    daemon.stop().await;

    let ctx = db.dump().await;
    assert_eq!(ra.state, "failed", "{ctx}");
    let err = ra.last_error.as_deref().unwrap_or_default();
    assert!(
        err.contains("8 credits") && err.contains("max_credits = 5"),
        "{err}"
    );
    assert_eq!(rb.state, "failed", "{ctx}");
    let err = rb.last_error.as_deref().unwrap_or_default();
    assert!(err.contains("max_credits"), "{err}");
    let stats = sim.stats();
    assert_eq!(stats.import_posts, 0, "nothing was imported");
    assert_eq!(stats.credits, CREDITS);
    s.sim.clone().shutdown().await;
}
