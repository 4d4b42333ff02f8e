//! `importlyd demo`: the whole product in one command, on loopback. Starts the simulator,
//! creates a fresh database in a temp dir, queues sample rows (a few of which fail the way
//! real ones do), runs the daemon until every row is terminal while showing progress, and
//! prints a summary.

use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CmdResult, Failure};
use crate::config::Config;
use crate::importly::Client;
use crate::scheduler::Scheduler;
use crate::sim::{BucketConfig, Sim, SimConfig};
use crate::store::{EnqueueRow, ListFilter, State, Store};

const DEMO_KEY: &str = "demo-key";

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: 1,
        message: format!("demo: {e}"),
    }
}

pub async fn demo(rows: u32) -> CmdResult {
    let sim_cfg = SimConfig {
        api_key: DEMO_KEY.into(),
        job_duration: Duration::from_millis(600),
        import: BucketConfig::new(600, Duration::from_secs(60), 2),
        status: BucketConfig::new(6000, Duration::from_secs(60), 0),
        ..SimConfig::default()
    };
    let sim = Sim::start(sim_cfg).await.map_err(fail)?;
    let dir = tempfile::tempdir().map_err(fail)?;
    let mut cfg = Config::default();
    cfg.database.path = dir.path().join("demo.db");
    cfg.api.base_url = sim.base_url();
    cfg.limits.import.requests = 600;
    cfg.limits.import.window = Duration::from_secs(60);
    // A minute's window, so polls are not paced by what is left of the hour.
    cfg.limits.status.requests = 6000;
    cfg.limits.status.window = Duration::from_secs(60);
    cfg.retry.base_delay = Duration::from_millis(200);
    cfg.retry.max_delay = Duration::from_secs(2);
    cfg.poll.status_interval = Duration::from_millis(200);
    cfg.poll.queue_interval = Duration::from_millis(100);

    let store = Store::open(&cfg.database).await.map_err(fail)?;
    let samples: Vec<EnqueueRow> = (1..=rows).map(sample).collect();
    store.enqueue(&samples).await.map_err(fail)?;
    outln!(
        "importlyd demo: simulator at {}, database {}, {} rows queued (concurrency {})",
        sim.base_url(),
        cfg.database.path.display(),
        rows,
        cfg.limits.import.concurrent
    );

    let client = Client::new(
        &cfg.api.base_url,
        SecretString::from(DEMO_KEY.to_owned()),
        cfg.api.request_timeout,
    )
    .map_err(fail)?;
    let shutdown = CancellationToken::new();
    let (_tx, rx) = mpsc::channel(1);
    let daemon =
        tokio::spawn(Scheduler::new(cfg.clone(), store.clone(), client, shutdown.clone()).run(rx));

    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(300);
    loop {
        let c = store.status_counts().await.map_err(fail)?.counts;
        let get = |s: State| c.get(&s).copied().unwrap_or(0);
        let done = get(State::Completed) + get(State::Failed) + get(State::Cancelled);
        outln!(
            "  {:>5.1}s  pending {:>3}  in flight {:>2}  completed {:>3}  failed {:>3}",
            started.elapsed().as_secs_f64(),
            get(State::Pending),
            get(State::Submitting) + get(State::Running),
            get(State::Completed),
            get(State::Failed)
        );
        if done >= i64::from(rows) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            shutdown.cancel();
            return Err(fail("rows still unfinished after 300 s"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shutdown.cancel();
    daemon.await.map_err(fail)?.map_err(fail)?;

    let all = store.list(&ListFilter::default()).await.map_err(fail)?;
    outln!("\n{:>4}  {:<10}  {:<44}  RESULT", "ID", "STATE", "URL");
    for r in &all {
        let result = match r.state.as_str() {
            "completed" => format!(
                "job {} -> {} ({} credits)",
                r.importly_job_id.as_deref().unwrap_or("-"),
                r.media_url.as_deref().unwrap_or("-"),
                r.credits_used.unwrap_or(0)
            ),
            _ => r.last_error.clone().unwrap_or_default(),
        };
        outln!("{:>4}  {:<10}  {:<44}  {}", r.id, r.state, r.url, result);
    }
    let stats = sim.stats();
    let completed = all.iter().filter(|r| r.state == "completed").count();
    outln!(
        "\n{completed} completed, {} failed in {:.1}s; the simulator saw {} POST /import, \
         at most {} jobs at once (limit {}), {} status polls, {} 429s",
        all.len() - completed,
        started.elapsed().as_secs_f64(),
        stats.import_posts,
        stats.max_concurrent_imports,
        cfg.limits.import.concurrent,
        stats.status_requests,
        stats.rate_limited + stats.concurrency_limited
    );
    if let Some(r) = all.iter().find(|r| r.state == "failed") {
        let attempts = store.attempts(r.id).await.map_err(fail)?;
        let ticket = super::ticket::build(r, &attempts, &cfg);
        outln!(
            "\nThe support ticket `importlyd ticket {}` prints for a failed row:\n",
            r.id
        );
        out!(
            "{}",
            super::ticket::render(&ticket, super::TicketFormat::Text)
        );
    }
    store.close().await;
    sim.shutdown().await;
    Ok(())
}

/// Mostly ordinary media; every tenth fails in one of the ways real imports do.
fn sample(i: u32) -> EnqueueRow {
    let url = match i % 10 {
        3 => format!("https://media.example.com/clips/flaky500-1/clip-{i}.mp4"),
        7 if i % 20 == 7 => format!("https://media.example.com/notfound/clip-{i}.mp4"),
        7 => format!("https://media.example.com/fail/clip-{i}.mp4"),
        _ => format!("https://media.example.com/clips/clip-{i}.mp4"),
    };
    EnqueueRow {
        url,
        options: Some(r#"{"includeVideo":true,"videoQuality":"720p"}"#.into()),
        external_id: Some(format!("demo-{i}")),
        ..EnqueueRow::default()
    }
}
