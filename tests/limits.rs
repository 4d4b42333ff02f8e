//! Issue 12, budgets and slots: the server's `X-RateLimit-*` window rules once Importly has
//! answered (looser or stricter than the config), survives a restart and the headers
//! stopping; `reserve` leaves requests to other programs; a slot held elsewhere costs a
//! handful of 429s, not one per job; status polls share a budget of one a second.
//!
//! Windows in these tests are seconds long so the runs stay short; the daemon's config keeps
//! the hourly defaults where the point is that the server, not the config, sets the pace.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::*;
use importlyd::config::Config;
use importlyd::sim::{BucketConfig, Sim, SimConfig, SimStats};

const URL: &str = "https://media.example.com";

fn urls(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{URL}/{prefix}-{i}.mp4")).collect()
}

/// The shipped import budget (240 per hour): what a new user runs with.
fn default_import_budget(cfg: &mut Config) {
    let d = Config::default();
    cfg.limits.import.requests = d.limits.import.requests;
    cfg.limits.import.window = d.limits.import.window;
}

/// `POST /import`s per aligned window of `window`, of URLs containing `needle` ("" for all).
fn posts_per_window(stats: &SimStats, window: Duration, needle: &str) -> BTreeMap<u64, u64> {
    let len = window.as_millis() as u64;
    let mut out = BTreeMap::new();
    for (url, t) in &stats.post_times {
        if url.contains(needle) {
            *out.entry(unix_ms(*t) / len).or_default() += 1;
        }
    }
    out
}

async fn wait_completed(db: &Db, n: i64, timeout: Duration) {
    wait_until(&format!("{n} rows completed"), timeout, || async move {
        db.count("completed").await == n
    })
    .await;
}

/// The other program on the key: `n` counted requests (400s: they use the window, start no
/// job).
async fn other_client_posts(sim: &Sim, n: usize) {
    let http = reqwest::Client::new();
    for i in 0..n {
        let resp = http
            .post(format!("{}/import", sim.base_url()))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"url": format!("{URL}/bad/other-client-{i}.mp4")}))
            .send()
            .await
            .expect("the other client reaches the simulator");
        assert_eq!(resp.status(), 400, "the other client's request is counted");
    }
}

/// A server 6 per 3 s (7,200/h) with the default config (240/h): the daemon goes at the
/// server's pace. With the config as a ceiling beside the server's window, 12 rows took
/// about 12 x 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_looser_than_the_config_is_used_at_its_rate() {
    let window = secs(3);
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(6, window, 2),
        job_duration: ms(200),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    default_import_budget(&mut cfg);
    let db = Db::create(&cfg.database.path).await;
    db.insert_many(&urls("loose", 12)).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    // Two windows and a bit at the server's pace; minutes at the config's.
    wait_completed(&db, 12, secs(30)).await;
    daemon.stop().await;
    let stats = sim.stats();
    assert_eq!(
        stats.rate_limited, 0,
        "no 429: the server's window was kept"
    );
    let per_window = posts_per_window(&stats, window, "loose");
    assert!(
        per_window.values().all(|n| *n <= 6),
        "at most the server's limit per window: {per_window:?}"
    );
    assert!(
        per_window.values().any(|n| *n >= 4),
        "a window used (nearly) in full: {per_window:?}"
    );
    sim.shutdown().await;
}

/// A server allowing 2 per 3 s with a config that allows a million a minute (so loose that
/// it would let every free slot's request go at once): no 429 at all, not even at start,
/// because until Importly has answered once, the config is trusted for one request only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stricter_than_the_config_costs_no_429() {
    let window = secs(3);
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(2, window, 3),
        job_duration: ms(200),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    cfg.limits.import.requests = 1_000_000;
    cfg.limits.import.concurrent = 3;
    let db = Db::create(&cfg.database.path).await;
    db.insert_many(&urls("strict", 6)).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    wait_completed(&db, 6, secs(30)).await;
    daemon.stop().await;
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 0, "no avoidable 429");
    let per_window = posts_per_window(&stats, window, "");
    assert!(per_window.values().all(|n| *n <= 2), "{per_window:?}");
    sim.shutdown().await;
}

/// The window is spent (by another program and the daemon) when the daemon restarts: the
/// restarted daemon knows it from the database, sends nothing more in that window and then
/// goes on at the server's pace, not the config's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_window_keeps_the_learned_server_window() {
    let window = secs(3);
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(3, window, 2),
        job_duration: ms(200),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    default_import_budget(&mut cfg);
    let db = Db::create(&cfg.database.path).await;
    let d = &db;
    db.insert(&format!("{URL}/restart-1.mp4")).await;

    ensure_room_in_window(window, ms(2200)).await;
    other_client_posts(&sim, 2).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    wait_until("the first row submitted", secs(5), || async move {
        d.row(1).await.importly_job_id.is_some()
    })
    .await;
    daemon.stop().await;
    db.insert_many(&urls("restart-late", 5)).await;

    let daemon = Daemon::start(&cfg, KEY).await;
    wait_completed(&db, 6, secs(30)).await;
    daemon.stop().await;
    let stats = sim.stats();
    assert_eq!(
        stats.rate_limited, 0,
        "the restarted daemon knew the window was spent"
    );
    // The other program's 2 and the daemon's first row fill the first window: a POST of
    // the restarted daemon in it would make 4.
    let per_window = posts_per_window(&stats, window, "");
    assert!(
        per_window.values().all(|n| *n <= 3),
        "no second burst: {per_window:?}"
    );
    sim.shutdown().await;
}

/// `reserve = 2` of a server window of 6: the simulator never sees more than 4 of our
/// requests in a window, and no 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_leaves_requests_of_every_window_unused() {
    let window = secs(3);
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(6, window, 2),
        job_duration: ms(200),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    default_import_budget(&mut cfg);
    cfg.limits.import.reserve = 2;
    let db = Db::create(&cfg.database.path).await;
    db.insert_many(&urls("reserve", 10)).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    wait_completed(&db, 10, secs(30)).await;
    daemon.stop().await;
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 0);
    let per_window = posts_per_window(&stats, window, "reserve");
    assert!(
        per_window.values().all(|n| *n <= 4),
        "at most limit - reserve per window: {per_window:?}"
    );
    sim.shutdown().await;
}

#[test]
fn a_reserve_not_below_requests_is_refused_naming_the_key() {
    let mut cfg = Config::default();
    cfg.limits.status.reserve = cfg.limits.status.requests;
    let err = cfg.validate().expect_err("reserve = requests is refused");
    assert!(err.to_string().contains("limits.status.reserve"), "{err}");
    cfg.limits.status.reserve = cfg.limits.status.requests - 1;
    cfg.validate().expect("reserve below requests is fine");
}

#[test]
fn the_sample_config_is_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/importlyd.toml");
    let sample = Config::load(Some(&path)).expect("the sample loads");
    let json = |c: &Config| {
        let mut v = serde_json::to_value(c).expect("config serialises");
        v["database"] = serde_json::Value::Null;
        v
    };
    assert_eq!(json(&sample), json(&Config::default()));
    assert_eq!(sample.poll.status_interval, secs(1));
}

// ---- a server that stops sending headers ----

/// Sits between the daemon and the simulator and, once `strip` is set, removes every
/// `X-RateLimit-*` header from the answers (as an API gateway in the way might).
#[derive(Clone)]
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    strip: Arc<AtomicBool>,
}

async fn forward(
    State(p): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut req = p.http.request(method, format!("{}{path}", p.upstream));
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    let Ok(resp) = req.body(body).send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = resp.status();
    let mut out = HeaderMap::new();
    for (name, value) in resp.headers() {
        let rate = name.as_str().starts_with("x-ratelimit-");
        if !(rate && p.strip.load(Ordering::SeqCst)) && name != "content-length" {
            out.insert(name.clone(), value.clone());
        }
    }
    let body = resp.bytes().await.unwrap_or_default();
    (status, out, body).into_response()
}

async fn start_proxy(sim: &Sim) -> (String, Arc<AtomicBool>) {
    let strip = Arc::new(AtomicBool::new(false));
    let proxy = Proxy {
        upstream: sim.base_url(),
        http: reqwest::Client::new(),
        strip: strip.clone(),
    };
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), strip)
}

/// Importly answers with headers for a while, then without: the daemon goes on with the
/// window it learned (6 per 3 s, rolled forward window after window), not with the config's
/// 240 per hour, and meets no 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_headers_stop_the_learned_window_goes_on() {
    let window = secs(3);
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(6, window, 2),
        job_duration: ms(200),
        ..sim_config()
    })
    .await;
    let (proxy_url, strip) = start_proxy(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config_at(dir.path(), &proxy_url);
    default_import_budget(&mut cfg);
    let db = Db::create(&cfg.database.path).await;
    db.insert_many(&urls("headers", 2)).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    wait_completed(&db, 2, secs(15)).await;
    strip.store(true, Ordering::SeqCst);
    db.insert_many(&urls("headerless", 10)).await;
    // Two windows and a bit at the learned pace; about 40 s if the config (240 per hour,
    // 15 s apart) took over.
    wait_completed(&db, 12, secs(25)).await;
    daemon.stop().await;
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 0, "the learned window was kept");
    let per_window = posts_per_window(&stats, window, "");
    assert!(per_window.values().all(|n| *n <= 6), "{per_window:?}");
    let db_rows = db.all_attempts().await;
    let headerless = db_rows
        .iter()
        .filter(|a| {
            a.request_body
                .as_deref()
                .is_some_and(|b| b.contains("headerless"))
        })
        .filter(|a| {
            a.rate_limit
                .as_deref()
                .is_some_and(|r| r.contains("remaining"))
        })
        .count();
    assert_eq!(headerless, 0, "the proxy did strip the headers");
    sim.shutdown().await;
}

// ---- slots ----

/// One of the account's two slots is held by another program while 20+ rows of short jobs
/// go through the other: the probe for the second slot backs off (base delay
/// `limits.probe_delay`, doubling up to 5 min), so the whole run draws about
/// log2(run / base delay) + 2 concurrency 429s, not one per job. When the other program lets
/// go, the slot is ours again within the probe delay reached by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_held_elsewhere_costs_a_handful_of_429s_and_is_taken_back() {
    let sim = start_sim(SimConfig {
        job_duration: ms(250),
        ..sim_config()
    })
    .await;
    sim.hold_slots(1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim);
    let base = cfg.limits.probe_delay;
    let db = Db::create(&cfg.database.path).await;
    let d = &db;
    db.insert_many(&urls("held", 50)).await;
    let started = Instant::now();
    let daemon = Daemon::start(&cfg, KEY).await;
    wait_until("20 rows completed on one slot", secs(60), || async move {
        d.count("completed").await >= 20
    })
    .await;
    let run = started.elapsed();
    let refused = sim.stats().concurrency_limited;
    let handful = (run.as_secs_f64() / base.as_secs_f64()).log2().ceil() as u64 + 3;
    eprintln!("{refused} concurrency 429s in {run:?} (at most {handful})");
    assert!(
        refused <= handful,
        "{refused} concurrency 429s in {run:?} (at most {handful})"
    );
    assert!(refused >= 1, "the held slot was noticed");

    // The other program lets go: the next probe comes within the delay reached so far.
    // Enough rows are queued that the single slot cannot run out of work before then.
    sim.release_slots();
    // Counted again: a probe may have been refused since the count above.
    let refused = sim.stats().concurrency_limited;
    let delay = base
        .saturating_mul(1 << (refused.saturating_sub(1)).min(16))
        .min(secs(300));
    let extra = (delay.as_millis() / 250) as usize + 10;
    db.insert_many(&urls("held-more", extra)).await;
    wait_until("both slots ours again", delay + secs(3), || async move {
        d.count("running").await >= 2
    })
    .await;
    daemon.stop().await;
    let stats = sim.stats();
    assert!(stats.max_concurrent_imports <= 2);
    assert!(
        stats.concurrency_limited <= refused + 1,
        "{} 429s, {refused} of them before the slot was freed",
        stats.concurrency_limited
    );
    for r in db.rows().await {
        assert_eq!(r.attempts, 0, "429s never count: {r:?}");
    }
    sim.shutdown().await;
}

// ---- status polling ----

/// Four jobs running for seconds, `poll.status_interval` at its default (1 s per job), and
/// a server status window of one request a second: the jobs share it (each polled about
/// every 4 s) and no poll meets a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_running_jobs_share_a_status_budget_of_one_a_second() {
    let sim = start_sim(SimConfig {
        import: BucketConfig::new(10_000, secs(60), 4),
        status: BucketConfig::new(1, secs(1), 0),
        job_duration: secs(3),
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(dir.path(), &sim);
    let d = Config::default();
    cfg.poll.status_interval = d.poll.status_interval;
    cfg.limits.status = d.limits.status.clone();
    cfg.limits.import.concurrent = 4;
    let db = Db::create(&cfg.database.path).await;
    let dbr = &db;
    db.insert_many(&urls("poll", 8)).await;
    let daemon = Daemon::start(&cfg, KEY).await;
    wait_until("4 jobs running at once", secs(10), || async move {
        dbr.count("running").await >= 4
    })
    .await;
    wait_completed(&db, 8, secs(60)).await;
    daemon.stop().await;
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 0, "no status 429 in normal operation");
    assert!(stats.status_requests >= 8);
    sim.shutdown().await;
}
