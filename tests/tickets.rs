//! Issue 4: the failure log, `importlyd ticket` and the operator's toolbox, proven end to end.
//!
//! Real parts only: the simulator in-process on 127.0.0.1:0 with a distinctive API key, a
//! SQLite file in a temporary directory, and the real `importlyd` binary run as a daemon
//! (stopped with SIGTERM) and as one-shot commands. Every wait polls a condition until a
//! deadline. Every command runs with the API key in its environment, so a command that
//! leaked it would be caught, and every byte any of them printed is kept for the key scan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use importlyd::sim::{BucketConfig, Sim, SimConfig};
use importlyd::store::{ListFilter, Row, State, Store, StoredAttempt};
use serde_json::{Value, json};
use tempfile::TempDir;

const KEY: &str = "sk_live_TOPSECRET_5f3a9";
/// A fragment of the key: a masked or partly printed key is a leak too.
const KEY_FRAGMENT: &str = "TOPSECRET";
const BIN: &str = env!("CARGO_BIN_EXE_importlyd");
const OPTIONS: &str = r#"{"videoQuality":"720p","includeVideo":true}"#;
const HOUR: Duration = Duration::from_secs(3600);
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The knobs of the daemon's config file that the tests vary.
struct Knobs {
    max_attempts: u32,
    keep_attempts: u32,
    import_concurrent: u32,
}

/// Budgets far above what a test spends, so the daemon's pacing never slows a test down, and
/// a job duration of the test's choosing (`/slow` jobs take three times as long).
fn sim_config(job_duration: Duration) -> SimConfig {
    SimConfig {
        api_key: KEY.to_owned(),
        import: BucketConfig::new(100_000, HOUR, 8),
        status: BucketConfig::new(100_000, HOUR, 0),
        metadata: BucketConfig::new(100_000, HOUR, 5),
        job_duration,
        ..SimConfig::default()
    }
}

/// What one command printed.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

struct Harness {
    dir: TempDir,
    cfg: PathBuf,
    db: PathBuf,
    log: PathBuf,
    sim: Sim,
    daemon: Option<tokio::process::Child>,
    store: Option<Store>,
    /// Every command line and what it printed, for the key scan.
    transcript: Vec<(String, String)>,
}

impl Harness {
    /// Starts the simulator, writes the config file and creates the database.
    async fn new(sim: SimConfig, k: Knobs) -> Harness {
        let sim = Sim::start(sim).await.expect("starting the simulator");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("queue.db");
        let cfg = dir.path().join("importlyd.toml");
        let toml = format!(
            r#"[database]
path = {db:?}

[api]
base_url = "{base}"
request_timeout = "5s"

[limits.import]
requests = 100000
window = "1h"
concurrent = {conc}

[limits.status]
requests = 100000
window = "1h"
concurrent = 0

[limits.metadata]
requests = 100000
window = "1h"
concurrent = 5

[retry]
max_attempts = {max}
base_delay = "100ms"
max_delay = "300ms"

[poll]
status_interval = "100ms"
queue_interval = "50ms"

[log]
keep_attempts = {keep}
"#,
            db = db.display().to_string(),
            base = sim.base_url(),
            conc = k.import_concurrent,
            max = k.max_attempts,
            keep = k.keep_attempts,
        );
        std::fs::write(&cfg, toml).expect("writing the config");
        let mut h = Harness {
            log: dir.path().join("daemon.log"),
            dir,
            cfg,
            db,
            sim,
            daemon: None,
            store: None,
            transcript: Vec::new(),
        };
        h.cli_ok(&["migrate"]).await;
        h
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(BIN);
        // A clean environment: no proxy settings, no stray IMPORTLYD_* overrides; only the
        // key (which no command may print) and a verbose log filter.
        c.env_clear()
            .env("IMPORTLY_API_KEY", KEY)
            .arg("--config")
            .arg(&self.cfg)
            .kill_on_drop(true);
        c
    }

    /// Runs `importlyd --config CFG ARGS...` to completion and records its output.
    async fn cli(&mut self, args: &[&str]) -> Out {
        let output = tokio::time::timeout(
            DEADLINE,
            self.command()
                .env("RUST_LOG", "debug")
                .args(args)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("`importlyd {}` did not finish", args.join(" ")))
        .expect("running importlyd");
        let out = Out {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        let line = format!("importlyd {}", args.join(" "));
        self.transcript
            .push((format!("{line} (stdout)"), out.stdout.clone()));
        self.transcript
            .push((format!("{line} (stderr)"), out.stderr.clone()));
        out
    }

    async fn cli_ok(&mut self, args: &[&str]) -> Out {
        let out = self.cli(args).await;
        assert_eq!(
            out.code,
            Some(0),
            "`importlyd {}` failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        out
    }

    /// Starts `importlyd run`, its stdout and stderr (the logs) each to a file.
    fn start_daemon(&mut self, rust_log: &str) {
        assert!(self.daemon.is_none(), "daemon already running");
        let stdout = std::fs::File::create(self.dir.path().join("daemon.out")).expect("stdout");
        let stderr = std::fs::File::create(&self.log).expect("stderr");
        let child = self
            .command()
            .env("RUST_LOG", rust_log)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("starting importlyd run");
        self.daemon = Some(child);
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop_daemon(&mut self) {
        let mut child = self.daemon.take().expect("daemon not running");
        let pid = child.id().expect("daemon pid");
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(kill.success(), "kill -TERM {pid} failed");
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "daemon did not exit within 15 s of SIGTERM; log:\n{}",
                    self.daemon_log()
                )
            })
            .expect("waiting for the daemon");
        assert!(
            status.success(),
            "daemon exited with {status}; log:\n{}",
            self.daemon_log()
        );
    }

    fn daemon_log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    async fn store(&mut self) -> &Store {
        if self.store.is_none() {
            self.store = Some(
                Store::open_unmigrated(&importlyd::config::DatabaseConfig::sqlite(&self.db))
                    .await
                    .expect("opening the database"),
            );
        }
        self.store.as_ref().expect("store")
    }

    async fn row(&mut self, id: i64) -> Option<Row> {
        self.store().await.row(id).await.expect("reading a row")
    }

    async fn attempts(&mut self, id: i64) -> Vec<StoredAttempt> {
        self.store()
            .await
            .attempts(id)
            .await
            .expect("reading attempts")
    }

    /// Row ids by URL.
    async fn ids(&mut self) -> BTreeMap<String, i64> {
        self.store()
            .await
            .list(&ListFilter::default())
            .await
            .expect("listing rows")
            .into_iter()
            .map(|r| (r.url, r.id))
            .collect()
    }

    /// Polls the row every 50 ms until `done` holds; panics with `what` at the deadline.
    async fn wait_row(&mut self, id: i64, what: &str, done: impl Fn(&Row) -> bool) -> Row {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let row = self.row(id).await;
            if let Some(r) = row.as_ref().filter(|r| done(r)) {
                return r.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for row {id} to be {what}; it is {row:?}\ndaemon log:\n{}",
                    tail(&self.daemon_log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the row is in `state` with at least `records` logged exchanges.
    async fn wait_state(&mut self, id: i64, state: &str, records: usize) -> Row {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let row = self.row(id).await;
            let n = self.attempts(id).await.len();
            if let Some(r) = row.as_ref().filter(|r| r.state == state && n >= records) {
                return r.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for row {id} to be {state} with {records}+ logged \
                     exchanges; it is {row:?} with {n}\ndaemon log:\n{}",
                    tail(&self.daemon_log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The daemon never failed a write because an operator command held the lock.
    fn assert_daemon_writes_never_failed(&self) {
        let log = self.daemon_log();
        for bad in ["database is locked", "database write failed", "SQLITE_BUSY"] {
            assert!(
                !log.contains(bad),
                "daemon log contains {bad:?}:\n{}",
                log.lines()
                    .filter(|l| l.contains(bad))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        for (what, text) in &self.transcript {
            assert!(
                !text.contains("database is locked"),
                "{what} reports a locked database: {text}"
            );
        }
    }

    /// The key is in no command's output and in no byte of any file under the temporary
    /// directory: database, -wal, -shm, daemon stdout and logs, ticket files, config.
    /// Returns the files scanned.
    fn assert_key_nowhere(&self) -> Vec<PathBuf> {
        for (what, text) in &self.transcript {
            for needle in [KEY, KEY_FRAGMENT] {
                assert!(
                    !text.contains(needle),
                    "{what} contains the API key:\n{text}"
                );
            }
        }
        let files = walk(self.dir.path());
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
            for needle in [KEY, KEY_FRAGMENT] {
                assert!(
                    find(&bytes, needle.as_bytes()).is_none(),
                    "{} contains the API key (at byte {:?})",
                    f.display(),
                    find(&bytes, needle.as_bytes())
                );
            }
        }
        files
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `2026-11-25T10:00:00.123Z`: UTC, ISO-8601, milliseconds.
fn is_utc_millis(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

fn json_of(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.stdout))
}

/// The three tickets of a failed row, checked against the database: the payload, every
/// attempt with its timestamps, status or error, endpoint and body, in all three formats.
/// Returns the JSON ticket.
async fn check_ticket(h: &mut Harness, id: i64, url: &str, max_attempts: u64) -> Value {
    let sid = id.to_string();
    let text = h.cli_ok(&["ticket", &sid, "--format", "text"]).await.stdout;
    let md = h
        .cli_ok(&["ticket", &sid, "--format", "markdown"])
        .await
        .stdout;
    let t = json_of(&h.cli_ok(&["ticket", &sid, "--format", "json"]).await);
    let row = h.row(id).await.expect("row");
    let log = h.attempts(id).await;
    let ctx = format!("ticket of row {id} ({url})");

    // The row and the request payload.
    assert_eq!(t["row"]["id"], json!(id), "{ctx}");
    assert_eq!(t["row"]["url"], json!(url), "{ctx}");
    assert_eq!(t["row"]["state"], json!("failed"), "{ctx}");
    assert_eq!(t["row"]["options"]["videoQuality"], json!("720p"), "{ctx}");
    assert_eq!(t["row"]["options"]["includeVideo"], json!(true), "{ctx}");
    assert_eq!(t["row"]["last_error"], json!(row.last_error), "{ctx}");
    assert!(
        row.last_error.is_some(),
        "{ctx}: failed row without last_error"
    );
    assert_eq!(
        t["request_payload"],
        json!({"url": url, "videoQuality": "720p", "includeVideo": true}),
        "{ctx}"
    );
    assert!(
        t["subject"].as_str().is_some_and(|s| s.contains(url)),
        "{ctx}: subject {}",
        t["subject"]
    );
    assert_eq!(
        t["daemon_version"],
        json!(env!("CARGO_PKG_VERSION")),
        "{ctx}"
    );
    assert_eq!(t["config"]["base_url"], json!(h.sim.base_url()), "{ctx}");
    assert_eq!(
        t["config"]["retry"]["max_attempts"],
        json!(max_attempts),
        "{ctx}"
    );

    for (fmt, doc) in [("text", &text), ("markdown", &md)] {
        for needle in [
            url,
            r#""videoQuality": "720p""#,
            r#""includeVideo": true"#,
            row.last_error.as_deref().unwrap_or_default(),
            env!("CARGO_PKG_VERSION"),
            &h.sim.base_url(),
            "Final state: failed",
        ] {
            assert!(
                doc.contains(needle),
                "{ctx} ({fmt}) lacks {needle:?}:\n{doc}"
            );
        }
    }
    assert!(text.starts_with("Subject: "), "{ctx}: text\n{text}");
    assert!(md.starts_with("# "), "{ctx}: markdown\n{md}");

    // Every attempt the database holds, oldest first, in every format.
    let attempts = t["attempts"].as_array().expect("attempts list");
    assert!(!attempts.is_empty(), "{ctx}: no attempts");
    assert_eq!(attempts.len(), log.len(), "{ctx}: attempts vs database");
    let mut last_started = String::new();
    for (a, stored) in attempts.iter().zip(&log) {
        let started = a["started_at"].as_str().expect("started_at");
        let finished = a["finished_at"].as_str().expect("finished_at");
        assert!(is_utc_millis(started), "{ctx}: started_at {started}");
        assert!(is_utc_millis(finished), "{ctx}: finished_at {finished}");
        assert!(started <= finished, "{ctx}: {started} after {finished}");
        assert!(started >= last_started.as_str(), "{ctx}: not oldest first");
        last_started = started.to_owned();
        assert_eq!(started, importlyd::clock::iso(stored.started_at), "{ctx}");
        assert_eq!(a["id"], json!(stored.id), "{ctx}");
        let endpoint = a["endpoint"].as_str().expect("endpoint");
        assert!(
            endpoint.starts_with("/import"),
            "{ctx}: endpoint {endpoint}"
        );
        let status = a["http_status"].as_i64();
        assert!(
            status.is_some() || a["error"].is_string(),
            "{ctx}: attempt without status or error: {a}"
        );
        // The rate-limit state the answer reported, with the reset as a UTC time.
        assert!(
            a["rate_limit"]["limit"].is_u64(),
            "{ctx}: rate limit of {a}"
        );
        assert!(
            a["rate_limit"]["remaining"].is_u64(),
            "{ctx}: rate limit of {a}"
        );
        assert!(
            a["rate_limit"]["reset_at"]
                .as_str()
                .is_some_and(is_utc_millis),
            "{ctx}: rate limit of {a}"
        );
        let body = a["response_body"].as_str().expect("response_body");
        assert_eq!(Some(body), stored.response_body.as_deref(), "{ctx}");
        for (fmt, doc) in [("text", &text), ("markdown", &md)] {
            let mut needles = vec![
                started.to_owned(),
                finished.to_owned(),
                endpoint.to_owned(),
                body.to_owned(),
            ];
            needles.extend(status.map(|s| format!("HTTP {s}")));
            for needle in needles {
                assert!(
                    doc.contains(&needle),
                    "{ctx} ({fmt}) lacks {needle:?}:\n{doc}"
                );
            }
        }
    }
    for (fmt, doc) in [("text", &text), ("markdown", &md)] {
        assert!(
            doc.contains(&format!("Timeline ({} logged exchanges, UTC)", log.len())),
            "{ctx} ({fmt}):\n{doc}"
        );
        assert_eq!(
            doc.matches("rate limit: ").count(),
            log.len(),
            "{ctx} ({fmt}): one rate-limit line per exchange:\n{doc}"
        );
        for needle in ["Retry: at most", "Limits: import "] {
            assert!(
                doc.contains(needle),
                "{ctx} ({fmt}) lacks {needle:?}:\n{doc}"
            );
        }
    }
    t
}

fn statuses(t: &Value) -> Vec<Option<i64>> {
    t["attempts"]
        .as_array()
        .map(|a| a.iter().map(|x| x["http_status"].as_i64()).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// A 400, a row that runs out of attempts on 500s and a job that ends `failed`: their
/// tickets in all three formats hold the payload, every attempt and the bodies; `--failed
/// --dir` writes one file per failed row; the key is nowhere, even in debug logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_show_payload_attempts_and_bodies_and_never_the_key() {
    let started = Instant::now();
    let mut h = Harness::new(
        sim_config(Duration::from_millis(300)),
        Knobs {
            max_attempts: 3,
            keep_attempts: 50,
            import_concurrent: 2,
        },
    )
    .await;
    let bad = "https://media.example.com/bad/x.mp4";
    let flaky = "https://media.example.com/flaky500-99/x.mp4";
    let fail = "https://media.example.com/fail/x.mp4";
    let ok = "https://media.example.com/ok/x.mp4";
    h.cli_ok(&["enqueue", "--options", OPTIONS, bad, flaky, fail, ok])
        .await;
    let ids = h.ids().await;
    let (bad_id, flaky_id, fail_id, ok_id) = (ids[bad], ids[flaky], ids[fail], ids[ok]);

    h.start_daemon("debug");
    for id in [bad_id, flaky_id, fail_id] {
        h.wait_row(id, "failed", |r| r.state == "failed").await;
    }
    h.wait_row(ok_id, "completed", |r| r.state == "completed")
        .await;

    // 400: one exchange, failed at once, no job.
    let t = check_ticket(&mut h, bad_id, bad, 3).await;
    assert_eq!(statuses(&t), vec![Some(400)]);
    assert!(
        t["attempts"][0]["response_body"]
            .as_str()
            .is_some_and(|b| b.contains("Invalid media URL"))
    );
    assert_eq!(t["attempts"][0]["error_text"], json!("Invalid media URL"));
    assert_eq!(t["job_ids"], json!([]));

    // 500s until max_attempts: exactly three records, all 500, counted.
    let t = check_ticket(&mut h, flaky_id, flaky, 3).await;
    assert_eq!(statuses(&t), vec![Some(500); 3], "{t:#}");
    assert_eq!(t["row"]["attempts"], json!(3));
    for a in t["attempts"].as_array().expect("attempts") {
        assert_eq!(a["outcome"], json!("transient"));
        assert_eq!(a["error_text"], json!("Internal server error"));
    }

    // A job that ended failed: its id is in the ticket, with the accepted submit and the
    // status answer that said `failed`.
    let t = check_ticket(&mut h, fail_id, fail, 3).await;
    let job = h
        .row(fail_id)
        .await
        .and_then(|r| r.importly_job_id)
        .expect("the failed job's id is kept on the row");
    assert_eq!(t["job_ids"], json!([job]));
    let attempts = t["attempts"].as_array().expect("attempts");
    let first = &attempts[0];
    assert_eq!(
        (
            first["outcome"].as_str(),
            first["http_status"].as_i64(),
            first["job_id"].as_str()
        ),
        (Some("accepted"), Some(200), Some(job.as_str())),
        "{t:#}"
    );
    assert!(
        first["error_text"].is_null(),
        "an accepted submit is no error: {first}"
    );
    let last = attempts.last().expect("last attempt");
    assert_eq!(last["outcome"], json!("job_failed"), "{t:#}");
    assert!(
        last["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("/import/status") && e.contains(&job))
    );
    assert_eq!(last["error_text"], json!("Unsupported media"));
    let text = h.cli_ok(&["ticket", &fail_id.to_string()]).await.stdout;
    assert!(
        text.contains(&format!("Importly job id(s): {job}")),
        "{text}"
    );
    assert!(t["subject"].as_str().is_some_and(|s| s.contains(&job)));

    // One ticket file per failed row, none for the completed one.
    let dir = h.dir.path().join("tickets");
    let dir_s = dir.display().to_string();
    let out = h
        .cli_ok(&["ticket", "--failed", "--since", "1h", "--dir", &dir_s])
        .await;
    assert!(out.stdout.contains("wrote 3 tickets"), "{}", out.stdout);
    let mut expected: Vec<String> = [bad_id, flaky_id, fail_id]
        .iter()
        .map(|id| format!("ticket-{id}.txt"))
        .collect();
    expected.sort();
    let mut names: Vec<String> = walk(&dir)
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, expected);
    for (id, url) in [(bad_id, bad), (flaky_id, flaky), (fail_id, fail)] {
        let body = std::fs::read_to_string(dir.join(format!("ticket-{id}.txt"))).expect("ticket");
        assert!(
            body.starts_with("Subject: ") && body.contains(url),
            "{body}"
        );
    }
    let jdir = h.dir.path().join("tickets-json");
    let jdir_s = jdir.display().to_string();
    h.cli_ok(&[
        "ticket", "--failed", "--since", "1h", "--format", "json", "--dir", &jdir_s,
    ])
    .await;
    for id in [bad_id, flaky_id, fail_id] {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(jdir.join(format!("ticket-{id}.json"))).expect("ticket"),
        )
        .expect("JSON ticket file");
        assert_eq!(v["row"]["id"], json!(id));
    }
    // A window that ends before the failures holds none of them.
    let out = h
        .cli_ok(&["ticket", "--failed", "--since", "1ms", "--dir", &dir_s])
        .await;
    assert!(out.stdout.contains("wrote 0 tickets"), "{}", out.stdout);

    h.stop_daemon().await;
    let log = h.daemon_log();
    assert!(
        log.contains("DEBUG"),
        "the daemon should have logged at debug level:\n{}",
        tail(&log, 20)
    );
    let wal = PathBuf::from(format!("{}-wal", h.db.display()));
    assert!(wal.exists(), "the -wal file should still be there to scan");
    // Positive control: the scan reads the real bytes, where the rows are.
    let mut stored = std::fs::read(&h.db).expect("db");
    stored.extend(std::fs::read(&wal).expect("wal"));
    assert!(
        find(&stored, b"flaky500-99").is_some(),
        "the rows are in db + wal"
    );
    let scanned = h.assert_key_nowhere();
    for must in [&h.db, &wal, &h.log] {
        assert!(scanned.contains(must), "{} was not scanned", must.display());
    }
    h.assert_daemon_writes_never_failed();
    eprintln!("tickets test: {:?}", started.elapsed());
}

/// list, show, status, cancel, retry and purge while the daemon works, none of them
/// making its writes fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_work_while_the_daemon_runs() {
    let started = Instant::now();
    // Jobs take 1.5 s, `/slow` ones 4.5 s: long enough to act on a running row.
    let mut h = Harness::new(
        sim_config(Duration::from_millis(1500)),
        Knobs {
            max_attempts: 3,
            keep_attempts: 50,
            import_concurrent: 4,
        },
    )
    .await;
    let slow = "https://media.example.com/slow/a.mp4";
    let bad = "https://media.example.com/bad/b.mp4";
    let fail = "https://media.example.com/fail/c.mp4";
    let flaky = "https://media.example.com/flaky500-3/d.mp4";
    let ok = "https://media.example.com/ok/e.mp4";
    let later = "https://media.example.com/later/f.mp4";
    h.cli_ok(&["enqueue", "--options", OPTIONS, slow, bad, fail, flaky, ok])
        .await;
    h.cli_ok(&["enqueue", later]).await;
    let ids = h.ids().await;
    let (s, b, f, r, o, p) = (
        ids[slow], ids[bad], ids[fail], ids[flaky], ids[ok], ids[later],
    );
    // A row another program queued for an hour from now: pending for the whole test.
    {
        let store_path = h.db.clone();
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&store_path)
                    .busy_timeout(Duration::from_secs(5)),
            )
            .await
            .expect("opening the database");
        sqlx::query(
            "UPDATE imports SET next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 hour') \
             WHERE id = ?",
        )
        .bind(p)
        .execute(&pool)
        .await
        .expect("postponing a row");
        pool.close().await;
    }

    h.start_daemon("info");
    let running = h.wait_row(s, "running", |r| r.state == "running").await;
    let job = running
        .importly_job_id
        .clone()
        .expect("running row has a job id");

    // cancel on a running row: refused, naming the job, exit 1; the row runs on.
    let out = h.cli(&["cancel", &s.to_string()]).await;
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains(&job) && said.contains("running"), "{said}");
    assert_eq!(h.row(s).await.expect("row").state, "running");

    // status --json while a job is in flight and a row is pending.
    let st = json_of(&h.cli_ok(&["status", "--json"]).await);
    assert!(st["counts"]["running"].as_i64() >= Some(1), "{st:#}");
    assert!(st["counts"]["pending"].as_i64() >= Some(1), "{st:#}");
    assert!(st["in_flight"].as_i64() >= Some(1), "{st:#}");
    assert!(st["paused"].is_null(), "{st:#}");
    assert!(
        st["oldest_pending"].as_str().is_some_and(is_utc_millis),
        "{st:#}"
    );
    for bucket in ["import", "status", "metadata"] {
        for k in ["limit", "remaining", "reset"] {
            assert!(st["buckets"][bucket][k].is_u64(), "{bucket}.{k}: {st:#}");
        }
    }
    let text = h.cli_ok(&["status"]).await.stdout;
    assert!(
        text.contains("in flight") && text.contains("budget import"),
        "{text}"
    );

    // list --state running --json, list --since 1h.
    let listed = json_of(&h.cli_ok(&["list", "--state", "running", "--json"]).await);
    let listed = listed.as_array().expect("list is an array");
    assert!(listed.iter().any(|x| x["id"] == json!(s)), "{listed:?}");
    assert!(
        listed.iter().all(|x| x["state"] == json!("running")),
        "{listed:?}"
    );
    let text = h.cli_ok(&["list", "--since", "1h"]).await.stdout;
    for url in [slow, bad, fail, flaky, ok, later] {
        assert!(text.contains(url), "list lacks {url}:\n{text}");
    }
    let all = json_of(&h.cli_ok(&["list", "--since", "1h", "--json"]).await);
    assert_eq!(all.as_array().map(Vec::len), Some(6), "{all:#}");

    // show, text and JSON.
    let text = h.cli_ok(&["show", &s.to_string()]).await.stdout;
    assert!(text.contains(slow) && text.contains(&job), "{text}");
    let shown = json_of(&h.cli_ok(&["show", &s.to_string(), "--json"]).await);
    assert_eq!(shown["row"]["id"], json!(s));
    assert_eq!(shown["row"]["importly_job_id"], json!(job));
    assert!(
        shown["attempts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["outcome"] == json!("accepted"))),
        "{shown:#}"
    );

    // cancel on a pending row.
    let out = h.cli_ok(&["cancel", &p.to_string()]).await;
    assert!(out.stdout.contains("cancelled 1 rows"), "{}", out.stdout);
    assert_eq!(h.row(p).await.expect("row").state, "cancelled");
    let out = h.cli(&["cancel", &p.to_string()]).await;
    assert_eq!(out.code, Some(1), "cancelling a cancelled row is refused");

    // retry by id: back to pending, attempts 0, history kept; then as the sim dictates.
    h.wait_state(b, "failed", 1).await;
    let r_failed = h.wait_state(r, "failed", 3).await;
    assert_eq!(r_failed.attempts, 3);
    let b_before = h.attempts(b).await;
    let r_before = h.attempts(r).await;
    let out = h.cli_ok(&["retry", &b.to_string(), &r.to_string()]).await;
    assert!(
        out.stdout.contains("2 rows back to pending"),
        "{}",
        out.stdout
    );
    let r_now = h.row(r).await.expect("row");
    assert_eq!(r_now.attempts, 0, "{r_now:?}");
    assert_ne!(r_now.state, "failed", "{r_now:?}");
    // /flaky500-3 answered its three 500s: the fourth submit is accepted.
    let r_done = h.wait_state(r, "completed", 4).await;
    assert_eq!(r_done.attempts, 0);
    let r_log = h.attempts(r).await;
    assert_eq!(
        r_log.iter().map(|a| a.id).take(3).collect::<Vec<_>>(),
        r_before.iter().map(|a| a.id).collect::<Vec<_>>(),
        "history kept"
    );
    assert_eq!(r_log.last().map(|a| a.outcome.as_str()), Some("accepted"));
    // /bad fails again at once: two 400s on record.
    let b_again = h.wait_state(b, "failed", 2).await;
    assert_eq!(b_again.attempts, 0);
    let b_log = h.attempts(b).await;
    assert_eq!(b_log[0].id, b_before[0].id, "history kept");
    assert!(b_log.iter().all(|a| a.http_status == Some(400)));

    // retry --failed: every failed row (the /bad and the /fail one).
    let f_first = h.wait_state(f, "failed", 2).await;
    let first_job = f_first.importly_job_id.clone().expect("job id");
    let out = h.cli_ok(&["retry", "--failed"]).await;
    assert!(
        out.stdout.contains("2 rows back to pending"),
        "{}",
        out.stdout
    );
    let f_now = h.row(f).await.expect("row");
    assert_ne!(f_now.state, "failed", "{f_now:?}");
    assert_eq!(f_now.attempts, 0);
    assert_ne!(f_now.importly_job_id.as_deref(), Some(first_job.as_str()));
    let f_again = h.wait_state(f, "failed", 4).await;
    let second_job = f_again.importly_job_id.clone().expect("job id");
    assert_ne!(second_job, first_job);
    h.wait_state(b, "failed", 3).await;
    // The /fail row's ticket names both jobs.
    let t = check_ticket(&mut h, f, fail, 3).await;
    let mut both = vec![first_job.clone(), second_job.clone()];
    both.sort();
    assert_eq!(t["job_ids"], json!(both), "{t:#}");

    // purge --completed --older-than 0s: completed rows and their logs go, the rest stay.
    h.wait_state(o, "completed", 1).await;
    let completed: Vec<i64> = h
        .store()
        .await
        .list(&ListFilter {
            state: Some(State::Completed),
            ..ListFilter::default()
        })
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(
        completed.contains(&o) && completed.contains(&r),
        "{completed:?}"
    );
    let out = h
        .cli_ok(&["purge", "--completed", "--older-than", "0s"])
        .await;
    assert!(out.stdout.contains("deleted"), "{}", out.stdout);
    for id in &completed {
        assert!(
            h.row(*id).await.is_none(),
            "completed row {id} survived purge"
        );
        assert!(
            h.attempts(*id).await.is_empty(),
            "row {id}'s log survived purge"
        );
    }
    for id in [b, f, p] {
        assert!(h.row(id).await.is_some(), "row {id} is not completed: kept");
        assert!(
            !h.attempts(id).await.is_empty() || id == p,
            "row {id}'s log kept"
        );
    }

    h.stop_daemon().await;
    h.assert_daemon_writes_never_failed();
    h.assert_key_nowhere();
    eprintln!("operator test: {:?}", started.elapsed());
}

/// `log.keep_attempts` bounds a row's failure log; the accepted submit is always kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_log_keeps_the_last_n_failures_and_the_accepted_submit() {
    let started = Instant::now();
    let mut h = Harness::new(
        sim_config(Duration::from_millis(200)),
        Knobs {
            max_attempts: 5,
            keep_attempts: 2,
            import_concurrent: 2,
        },
    )
    .await;
    let never = "https://media.example.com/flaky500-99/r.mp4";
    let late = "https://media.example.com/flaky500-4/s.mp4";
    h.cli_ok(&["enqueue", "--options", OPTIONS, never, late])
        .await;
    let ids = h.ids().await;
    let (x, y) = (ids[never], ids[late]);
    h.start_daemon("info");

    // Five 500s: the row fails; the last two are on record.
    let row = h.wait_row(x, "failed", |r| r.state == "failed").await;
    assert_eq!(row.attempts, 5);
    let log = h.attempts(x).await;
    assert_eq!(log.len(), 2, "{log:#?}");
    assert!(log.iter().all(|a| a.http_status == Some(500)));
    assert_eq!(
        log.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        vec![4, 5],
        "the newest failures are kept"
    );
    let t = check_ticket(&mut h, x, never, 5).await;
    assert_eq!(statuses(&t), vec![Some(500); 2]);

    // Four 500s, then accepted and completed: two failures plus the accepted submit.
    let row = h.wait_row(y, "completed", |r| r.state == "completed").await;
    let log = h.attempts(y).await;
    let failures = log.iter().filter(|a| a.outcome != "accepted").count();
    let accepted: Vec<_> = log.iter().filter(|a| a.outcome == "accepted").collect();
    assert!(failures <= 2, "{log:#?}");
    assert_eq!(accepted.len(), 1, "{log:#?}");
    assert_eq!(accepted[0].job_id, row.importly_job_id);

    h.stop_daemon().await;
    h.assert_daemon_writes_never_failed();
    h.assert_key_nowhere();
    eprintln!("retention test: {:?}", started.elapsed());
}
