//! Issue 12, webhooks: the real daemon (`importlyd run`) with `[webhook]` on, against the
//! simulator, which delivers completion callbacks the way Importly does. A delivery makes the
//! job's next status poll due at once; only that status answer changes the row. Forged,
//! replayed, misdirected, garbled and oversized deliveries change nothing; polling stays on
//! as the safety net; a row's own `webhookUrl` wins.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::*;
use importlyd::config::Config;
use importlyd::sim::{Sim, SimConfig, WebhookConfig};
use serde_json::{Value, json};

const URL: &str = "https://media.example.com";

/// A loopback port nothing listens on (bound once by the system, then let go).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("its address").port()
}

fn urls(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{URL}/{prefix}-{i}.mp4")).collect()
}

fn sim_with_hooks(job_duration: Duration, attempts: u32) -> SimConfig {
    SimConfig {
        job_duration,
        webhooks: WebhookConfig {
            attempts,
            interval: ms(200),
        },
        ..sim_config()
    }
}

/// The daemon's config with webhooks on: the receiver on a free port, and `public_url` the
/// address the simulator posts to (`None`: the receiver itself).
fn hooks_config(dir: &Path, sim: &Sim, public_url: Option<String>) -> (Config, String) {
    let mut cfg = daemon_config(dir, sim);
    let listen = format!("127.0.0.1:{}", free_port());
    cfg.webhook.public_url = public_url.unwrap_or_else(|| format!("http://{listen}/importly"));
    cfg.webhook.listen = listen.clone();
    (cfg, format!("http://{listen}/importly"))
}

async fn start(dir: &Path, cfg: &Config) -> (Db, Proc) {
    let config = write_config(dir, cfg);
    let db = Db::create(&cfg.database.path).await;
    let daemon = Proc::start(&config, Some(KEY), "daemon");
    daemon
        .wait_log("webhook receiver listening", secs(20))
        .await;
    (db, daemon)
}

/// The `webhookUrl` the simulator saw for `url` (None: the body had none).
fn hook_url_seen(sim: &Sim, url: &str) -> Option<String> {
    sim.stats()
        .last_import_body_by_url
        .get(url)
        .and_then(|b| b.get("webhookUrl"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// With webhooks on and a 30 s status interval, a batch drains as fast as the slots allow:
/// each row completes within seconds of its job's end (polling alone would take 30 s per
/// job), by one confirming status call per job. The token never reaches the attempt log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_drains_at_the_pace_of_the_slots_with_a_30s_status_interval() {
    let sim = start_sim(sim_with_hooks(ms(400), 3)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, public) = hooks_config(dir.path(), &sim, None);
    cfg.poll.status_interval = secs(30);
    let (db, mut daemon) = start(dir.path(), &cfg).await;
    let n = 10;
    let batch = urls("batch", n);
    db.insert_many(&batch).await;
    let d = &db;
    // 5 rounds of 0.4 s jobs on 2 slots; by polling alone the first round would take 30 s.
    wait_until("the batch completed", secs(20), || async move {
        d.count("completed").await == n as i64
    })
    .await;
    let stats = sim.stats();
    let ends: std::collections::BTreeMap<String, u64> = stats
        .import_jobs
        .iter()
        .map(|j| (j.job_id.clone(), j.ends_ms))
        .collect();
    for r in db.rows().await {
        let job = r.importly_job_id.clone().unwrap_or_default();
        let end = ends[&job];
        let done = unix_ms(r.completed_at.expect("completed_at"));
        assert!(
            done >= end && done - end < 10_000,
            "row {} completed {} ms after its job ended (a 30 s poll, not the webhook)",
            r.id,
            done as i64 - end as i64
        );
        let sent = hook_url_seen(&sim, &r.url).unwrap_or_default();
        assert!(sent.starts_with(&format!("{public}/")), "{sent}");
        assert_eq!(sent.len(), public.len() + 1 + 64, "a 64-hex token: {sent}");
        // The attempt log keeps the request without the live token.
        let accepted = db
            .attempts(r.id)
            .await
            .into_iter()
            .find(|a| a.outcome == "accepted")
            .expect("the accepted submit is logged");
        let body = accepted.request_body.unwrap_or_default();
        let token = sent.rsplit('/').next().unwrap_or_default();
        assert!(!body.contains(token), "{body}");
        assert!(body.contains(&format!("{public}/[token]")), "{body}");
    }
    let tokens: std::collections::BTreeSet<String> = batch
        .iter()
        .filter_map(|u| hook_url_seen(&sim, u))
        .collect();
    assert_eq!(tokens.len(), n, "a fresh token per job");
    assert_eq!(sim.webhook_counts().delivered(), n as u64);
    // One confirming status call per job, not a poll a second.
    assert!(
        stats.status_requests <= n as u64 + 2,
        "{} status calls for {n} jobs",
        stats.status_requests
    );
    assert!(daemon.terminate(secs(15)).await.success());
    sim.shutdown().await;
}

/// Metadata jobs carry a token too: with a 30 s status interval, a metadata row completes
/// as soon as its job's callback comes (by polling alone it would take 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_job_is_called_back_too() {
    let sim = start_sim(sim_with_hooks(ms(300), 3)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, _) = hooks_config(dir.path(), &sim, None);
    cfg.poll.status_interval = secs(30);
    let (db, mut daemon) = start(dir.path(), &cfg).await;
    let id: i64 =
        sqlx::query_scalar("INSERT INTO imports (url, kind) VALUES (?, 'metadata') RETURNING id")
            .bind(format!("{URL}/meta-hooked.mp4"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let d = &db;
    wait_until("the metadata row completed", secs(20), || async move {
        d.row(id).await.state == "completed"
    })
    .await;
    assert_eq!(sim.webhook_counts().delivered(), 1);
    assert_eq!(
        sim.stats().metadata_status_requests,
        1,
        "one confirming call"
    );
    assert!(daemon.terminate(secs(15)).await.success());
    sim.shutdown().await;
}

/// What the receiver answers a delivery.
async fn deliver(to: &str, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(to)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the receiver answers")
        .status()
        .as_u16()
}

fn snapshot(rows: &[importlyd::store::Row]) -> String {
    format!("{rows:?}")
}

/// Deliveries nobody should trust: a forged token (404), a body that is not a JSON object
/// (400), one over 64 KiB (413), a genuine token carrying another job's id and a
/// "completed" with a fake media URL (200, confirmed by a status call that says otherwise),
/// a GET (405). None changes a row; the daemon stays up. Once the jobs really end, the real
/// deliveries complete the rows with the simulator's data, and a replay of one answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_misdirected_and_garbled_deliveries_change_nothing() {
    let sim = start_sim(sim_with_hooks(secs(6), 3)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, public) = hooks_config(dir.path(), &sim, None);
    cfg.poll.status_interval = secs(30);
    let (db, mut daemon) = start(dir.path(), &cfg).await;
    let [a, b] = [format!("{URL}/hook-a.mp4"), format!("{URL}/hook-b.mp4")];
    let ida = db.insert(&a).await;
    let idb = db.insert(&b).await;
    let d = &db;
    wait_until("both jobs running", secs(10), || async move {
        d.count("running").await == 2
    })
    .await;
    let (to_a, to_b) = (
        hook_url_seen(&sim, &a).expect("A's webhookUrl"),
        hook_url_seen(&sim, &b).expect("B's webhookUrl"),
    );
    let job_b = db.row(idb).await.importly_job_id.expect("B's job id");
    let before = &snapshot(&db.rows().await);
    let status_before = sim.stats().status_requests;

    let forged = format!("{public}/{}", "ab".repeat(32));
    let claim = |job: &str| {
        serde_json::to_vec(&json!({
            "jobId": job, "status": "completed", "creditsUsed": 0,
            "mediaUrl": "https://evil.example/x.mp4", "message": "Import completed.",
        }))
        .unwrap()
    };
    assert_eq!(deliver(&forged, claim(&job_b)).await, 404, "forged token");
    assert_eq!(deliver(&to_a, b"not json".to_vec()).await, 400, "garbage");
    assert_eq!(
        deliver(&to_a, b"[1, 2]".to_vec()).await,
        400,
        "not an object"
    );
    let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100 * 1024)).into_bytes();
    assert_eq!(deliver(&to_a, huge).await, 413, "oversized");
    // A's genuine token claiming B's job has ended: a hint for A only.
    assert_eq!(deliver(&to_a, claim(&job_b)).await, 200, "a live token");
    let get = reqwest::get(&to_b).await.expect("GET answered").status();
    assert_eq!(get.as_u16(), 405);
    // The hint is confirmed by one status call for A, which says it is still running.
    let s = &sim;
    wait_until("the confirming status call", secs(5), || async move {
        s.stats().status_requests > status_before
    })
    .await;
    hold_for("the rows unchanged", ms(500), || async move {
        snapshot(&d.rows().await) == *before
    })
    .await;
    assert!(daemon.log_text().contains("unknown or spent token: 404"));

    wait_until("both rows completed", secs(20), || async move {
        d.count("completed").await == 2
    })
    .await;
    for id in [ida, idb] {
        let r = db.row(id).await;
        let media = r.media_url.unwrap_or_default();
        assert!(
            media.starts_with("https://media.sim.importly.local/"),
            "{media}"
        );
        let result: Value = serde_json::from_str(r.result.as_deref().unwrap_or("{}")).unwrap();
        assert_eq!(result["jobId"].as_str(), r.importly_job_id.as_deref());
    }
    // Importly's retry of an answered delivery, or a replay by someone who saw it: spent.
    let after = &snapshot(&db.rows().await);
    let real = serde_json::to_vec(&json!({"jobId": job_b, "status": "completed"})).unwrap();
    assert_eq!(deliver(&to_b, real).await, 404, "replay of a spent token");
    hold_for("the rows unchanged", ms(300), || async move {
        snapshot(&d.rows().await) == *after
    })
    .await;
    assert_eq!(sim.webhook_counts().delivered(), 2);
    let status = daemon.terminate(secs(15)).await;
    assert!(
        status.success(),
        "the daemon stayed up and stops cleanly: {status:?}"
    );
    sim.shutdown().await;
}

/// `public_url` leads nowhere (a closed port): every delivery is refused, retried and
/// abandoned, and the status polls complete every row all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_completes_everything_while_the_receiver_is_unreachable() {
    let sim = start_sim(sim_with_hooks(ms(300), 2)).await;
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("http://127.0.0.1:{}/importly", free_port());
    let (mut cfg, _) = hooks_config(dir.path(), &sim, Some(closed.clone()));
    cfg.poll.status_interval = ms(300);
    let (db, mut daemon) = start(dir.path(), &cfg).await;
    let n = 6;
    let batch = urls("unreachable", n);
    db.insert_many(&batch).await;
    let d = &db;
    wait_until("every row completed by polling", secs(30), || async move {
        d.count("completed").await == n as i64
    })
    .await;
    let counts = sim.webhook_counts();
    let c = &counts;
    wait_until("the deliveries given up", secs(10), || async move {
        c.abandoned() == n as u64
    })
    .await;
    assert_eq!(counts.delivered(), 0);
    assert!(counts.refused() >= n as u64);
    for u in &batch {
        let sent = hook_url_seen(&sim, u).unwrap_or_default();
        assert!(sent.starts_with(&format!("{closed}/")), "{sent}");
    }
    assert!(daemon.terminate(secs(15)).await.success());
    sim.shutdown().await;
}

/// A row whose `options` carry the user's own `webhookUrl` keeps it (the simulator sees
/// the user's URL, no token of ours) and is completed by polling; the row beside it gets
/// ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rows_own_webhook_url_wins_and_the_row_is_polled() {
    let sim = start_sim(sim_with_hooks(ms(300), 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, public) = hooks_config(dir.path(), &sim, None);
    let (db, mut daemon) = start(dir.path(), &cfg).await;
    let users = format!("http://127.0.0.1:{}/users-own-hook", free_port());
    let mine = format!("{URL}/own-hook.mp4");
    let ours = format!("{URL}/our-hook.mp4");
    let id = db
        .insert_with_options(&mine, &json!({"webhookUrl": users}).to_string())
        .await;
    db.insert(&ours).await;
    let d = &db;
    wait_until("both rows completed", secs(20), || async move {
        d.count("completed").await == 2
    })
    .await;
    assert_eq!(hook_url_seen(&sim, &mine).as_deref(), Some(users.as_str()));
    let theirs = hook_url_seen(&sim, &ours).unwrap_or_default();
    assert!(theirs.starts_with(&format!("{public}/")), "{theirs}");
    assert_eq!(db.row(id).await.state, "completed");
    // The user's hook was tried (it is closed here); ours was delivered.
    let counts = sim.webhook_counts();
    let c = &counts;
    wait_until("both deliveries settled", secs(5), || async move {
        c.delivered() == 1 && c.abandoned() == 1
    })
    .await;
    assert!(daemon.terminate(secs(15)).await.success());
    sim.shutdown().await;
}

/// Bad `[webhook]` settings stop `run` with exit 2 naming the key; so does a listen
/// address already taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhook_settings_exit_2_naming_the_key() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    // Held until the end of the test: the daemon cannot listen there.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let cases = [
        (
            "127.0.0.1:9188",
            "ftp://hooks.example/i",
            "webhook.public_url",
        ),
        ("nonsense", "https://hooks.example/i", "webhook.listen"),
        ("", "https://hooks.example/i", "webhook.listen"),
        ("127.0.0.1:9188", "", "webhook.public_url"),
        (taken.as_str(), "https://hooks.example/i", "webhook.listen"),
    ];
    for (listen, public_url, key) in cases {
        let mut cfg = daemon_config(dir.path(), &sim);
        cfg.webhook.listen = listen.into();
        cfg.webhook.public_url = public_url.into();
        let config = write_config(dir.path(), &cfg);
        let out = cli(&config, &["run"]).await;
        assert_eq!(out.code(), Some(2), "{listen} {public_url}: {out:?}");
        assert!(
            out.stderr.contains(&format!("`{key}`")),
            "{listen} {public_url}: {}",
            out.stderr
        );
    }
    sim.shutdown().await;
}
