//! Issue 5's acceptance: importlyd as a systemd service. Every test drives the real
//! `importlyd` binary (`--config FILE run`) against the simulator in-process on
//! 127.0.0.1:0 and a real SQLite file in a temp dir: a fake `NOTIFY_SOCKET` (a Unix
//! datagram socket read on a thread), signals sent with `kill`, `/healthz` and `/metrics`
//! scraped over HTTP, and a second SQLite connection that takes the database lock.
//!
//! Waiting is always "look again until a deadline"; the only fixed-length waits are the
//! held database locks, which are the scenario itself.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use importlyd::sim::{BucketConfig, Sim, SimConfig};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection, SqlitePool};

/// The key the simulator accepts.
const KEY: &str = "sim-key";
const BIN: &str = env!("CARGO_BIN_EXE_importlyd");
/// How often the waits look again.
const POLL: Duration = Duration::from_millis(25);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---- waiting ----

/// A deadline for a condition polled in a loop:
/// `while !cond { d.tick().await }` panics naming `what` once it has passed.
struct Deadline {
    what: String,
    start: Instant,
    timeout: Duration,
}

impl Deadline {
    fn new(what: impl Into<String>, timeout: Duration) -> Deadline {
        Deadline {
            what: what.into(),
            start: Instant::now(),
            timeout,
        }
    }

    async fn tick(&self) {
        assert!(
            self.start.elapsed() < self.timeout,
            "timed out after {:?} waiting for {}",
            self.timeout,
            self.what
        );
        tokio::time::sleep(POLL).await;
    }
}

// ---- the simulator, the database and the config file ----

fn sim_config(job_duration: Duration, import_concurrent: u32) -> SimConfig {
    SimConfig {
        api_key: KEY.into(),
        import: BucketConfig::new(10_000, secs(60), import_concurrent),
        status: BucketConfig::new(100_000, secs(60), 0),
        metadata: BucketConfig::new(10_000, secs(60), 5),
        job_duration,
        metadata_duration: ms(200),
        ..SimConfig::default()
    }
}

/// One test's world: a simulator, a temp dir with the database and the config file, and a
/// connection of our own to the database (as a user's program has).
struct Fixture {
    dir: tempfile::TempDir,
    sim: Sim,
    db: SqlitePool,
    db_path: PathBuf,
    cfg_path: PathBuf,
}

impl Fixture {
    async fn new(sim: SimConfig) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let sim = Sim::start(sim).await.expect("simulator starts");
        let db_path = dir.path().join("importlyd.db");
        // The schema, as `importlyd migrate` creates it.
        importlyd::store::Store::open_sqlite(&db_path)
            .await
            .expect("create the schema")
            .close()
            .await;
        let db = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(db_options(&db_path))
            .await
            .expect("open the database");
        let cfg_path = dir.path().join("importlyd.toml");
        Fixture {
            dir,
            sim,
            db,
            db_path,
            cfg_path,
        }
    }

    /// Writes the daemon's config: this fixture's database and simulator, generous budgets,
    /// short intervals, `concurrent` import slots, then `extra` (whole TOML sections).
    fn write_config(&self, concurrent: u32, extra: &str) {
        let text = format!(
            "[database]\npath = \"{db}\"\n\n\
             [api]\nbase_url = \"{url}\"\nrequest_timeout = \"5s\"\n\n\
             [limits.import]\nrequests = 10000\nwindow = \"1m\"\nconcurrent = {concurrent}\n\n\
             [limits.status]\nrequests = 100000\nwindow = \"1m\"\nconcurrent = 0\n\n\
             [retry]\nbase_delay = \"200ms\"\nmax_delay = \"2s\"\n\n\
             [poll]\nstatus_interval = \"100ms\"\nqueue_interval = \"50ms\"\n\n\
             {extra}",
            db = self.db_path.display(),
            url = self.sim.base_url(),
        );
        std::fs::write(&self.cfg_path, text).expect("write the config");
    }

    fn url(&self, name: &str) -> String {
        format!("https://media.example.com/{name}.mp4")
    }

    async fn insert(&self, url: &str) -> i64 {
        sqlx::query_scalar("INSERT INTO imports (url) VALUES (?) RETURNING id")
            .bind(url)
            .fetch_one(&self.db)
            .await
            .expect("insert a row")
    }

    async fn count(&self, state: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM imports WHERE state = ?")
            .bind(state)
            .fetch_one(&self.db)
            .await
            .expect("count rows")
    }

    async fn wait_count(&self, state: &str, n: i64, timeout: Duration) {
        let d = Deadline::new(format!("{n} rows {state}"), timeout);
        while self.count(state).await < n {
            d.tick().await;
        }
    }

    fn start(&self, key: &str, env: &[(&str, String)]) -> Daemon {
        Daemon::start(&self.cfg_path, key, env)
    }

    fn posts(&self, url: &str) -> u64 {
        self.sim
            .stats()
            .import_posts_by_url
            .get(url)
            .copied()
            .unwrap_or(0)
    }
}

fn db_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::from_str("sqlite://")
        .expect("sqlite options")
        .filename(path)
        .busy_timeout(secs(10))
}

/// Another process's connection holding `BEGIN EXCLUSIVE`: the daemon can read (WAL) but
/// not write until [`Lock::release`].
struct Lock {
    conn: SqliteConnection,
    at: Instant,
}

impl Lock {
    async fn take(path: &Path) -> Lock {
        let mut conn = SqliteConnection::connect_with(&db_options(path))
            .await
            .expect("a second connection");
        sqlx::raw_sql("BEGIN EXCLUSIVE")
            .execute(&mut conn)
            .await
            .expect("BEGIN EXCLUSIVE");
        Lock {
            conn,
            at: Instant::now(),
        }
    }

    async fn release(mut self) -> Instant {
        sqlx::raw_sql("COMMIT")
            .execute(&mut self.conn)
            .await
            .expect("COMMIT");
        let _ = self.conn.close().await;
        Instant::now()
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// `(status, body)` of a GET, or `None` while nothing listens.
async fn get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(secs(8))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

async fn wait_get(url: &str, status: u16, timeout: Duration) -> String {
    let d = Deadline::new(format!("GET {url} answering {status}"), timeout);
    loop {
        if let Some((s, body)) = get(url).await
            && s == status
        {
            return body;
        }
        d.tick().await;
    }
}

/// The value of the Prometheus sample whose line starts with `name_and_labels `.
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

// ---- the daemon as a subprocess ----

/// `importlyd --config FILE run`, its stderr collected line by line on a thread.
struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Where stderr goes instead of the pipe, if the test chose a file.
    log_file: Option<PathBuf>,
}

impl Daemon {
    fn start(cfg: &Path, key: &str, env: &[(&str, String)]) -> Daemon {
        Daemon::spawn(cfg, key, env, None)
    }

    /// As `start`, with stderr written to `file` (its device and inode are known before
    /// the daemon starts, as the journal's are under systemd).
    fn start_logging_to(cfg: &Path, key: &str, env: &[(&str, String)], file: &Path) -> Daemon {
        Daemon::spawn(cfg, key, env, Some(file))
    }

    fn spawn(cfg: &Path, key: &str, env: &[(&str, String)], file: Option<&Path>) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(cfg).arg("run");
        // Nothing of the test runner's own environment that the daemon reads.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("IMPORTLYD_") {
                cmd.env_remove(k);
            }
        }
        for k in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
            "RUST_LOG",
            "CREDENTIALS_DIRECTORY",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("IMPORTLY_API_KEY", key);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        if let Some(path) = file {
            let f = std::fs::File::options()
                .append(true)
                .open(path)
                .expect("open the log file");
            let child = cmd.stderr(f).spawn().expect("start importlyd");
            return Daemon {
                child,
                log: Arc::default(),
                reader: None,
                log_file: Some(path.to_owned()),
            };
        }
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("start importlyd");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            log,
            reader: Some(reader),
            log_file: None,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.pid()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -s {sig} {}", self.pid());
    }

    fn lines(&self) -> Vec<String> {
        match &self.log_file {
            Some(path) => std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect(),
            None => self.log.lock().unwrap().clone(),
        }
    }

    fn log(&self) -> String {
        self.lines().join("\n")
    }

    fn count_lines(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    async fn wait_log(&self, needle: &str, timeout: Duration) {
        let d = Deadline::new(format!("a log line containing {needle:?}"), timeout);
        while self.count_lines(needle) == 0 {
            d.tick().await;
        }
    }

    fn assert_running(&mut self) {
        let exited = self.child.try_wait().expect("try_wait");
        assert!(
            exited.is_none(),
            "importlyd exited ({exited:?}); log:\n{}",
            self.log()
        );
    }

    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let d = Deadline::new("importlyd to exit", timeout);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            d.tick().await;
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }

    /// SIGTERM, then the exit status (within 10 s).
    async fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(secs(10)).await
    }

    async fn stop_ok(&mut self) {
        let status = self.stop().await;
        assert!(
            status.success(),
            "importlyd exited with {status}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- importlyd log ----\n{}\n----", self.log());
        }
    }
}

// ---- a fake NOTIFY_SOCKET ----

/// A Unix datagram socket standing in for systemd's notify socket; every datagram is kept
/// with the time it arrived.
struct Notify {
    path: PathBuf,
    msgs: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(ms(50))).expect("read timeout");
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (msgs.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stopped.load(Ordering::Relaxed) {
                match sock.recv(&mut buf) {
                    Ok(n) => sink.lock().unwrap().push((
                        Instant::now(),
                        String::from_utf8_lossy(&buf[..n]).into_owned(),
                    )),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("notify socket: {e}"),
                }
            }
        });
        Notify {
            path,
            msgs,
            stop,
            thread: Some(thread),
        }
    }

    fn env(&self) -> (&'static str, String) {
        ("NOTIFY_SOCKET", self.path.display().to_string())
    }

    fn msgs(&self) -> Vec<(Instant, String)> {
        self.msgs.lock().unwrap().clone()
    }

    /// Index of the first datagram at or after `from` holding the assignment `field`
    /// (`"READY=1"`, or a prefix ending in `=` such as `"STATUS="`).
    fn find(&self, from: usize, field: &str) -> Option<usize> {
        self.msgs()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, (_, m))| has(m, field))
            .map(|(i, _)| i)
    }

    async fn wait(&self, from: usize, field: &str, timeout: Duration) -> usize {
        let d = Deadline::new(
            format!("{field:?} on the notify socket after message {from}"),
            timeout,
        );
        loop {
            if let Some(i) = self.find(from, field) {
                return i;
            }
            d.tick().await;
        }
    }

    /// Arrival times of the `WATCHDOG=1` pings.
    fn pings(&self) -> Vec<Instant> {
        self.msgs()
            .into_iter()
            .filter(|(_, m)| has(m, "WATCHDOG=1"))
            .map(|(t, _)| t)
            .collect()
    }

    async fn wait_pings(&self, n: usize, after: Instant, timeout: Duration) {
        let d = Deadline::new(format!("{n} watchdog pings"), timeout);
        while self.pings().iter().filter(|t| **t > after).count() < n {
            d.tick().await;
        }
    }

    fn statuses(&self) -> Vec<String> {
        self.msgs()
            .iter()
            .flat_map(|(_, m)| m.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_owned))
            .collect()
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if std::thread::panicking() {
            eprintln!("---- notify messages ----");
            for (_, m) in self.msgs() {
                eprintln!("{m:?}");
            }
        }
    }
}

/// True if the datagram `msg` holds `field`: an exact line, or a line starting with it when
/// it ends in `=`.
fn has(msg: &str, field: &str) -> bool {
    msg.lines().any(|l| {
        if field.ends_with('=') {
            l.starts_with(field)
        } else {
            l == field
        }
    })
}

// ---- the tests ----

/// READY=1 first, then STATUS= (with counts) and WATCHDOG=1 at half of WATCHDOG_USEC, and
/// STOPPING=1 last after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_gets_ready_status_watchdog_stopping_in_order() {
    let fx = Fixture::new(sim_config(ms(300), 2)).await;
    fx.write_config(2, "");
    for i in 0..3 {
        fx.insert(&fx.url(&format!("order-{i}"))).await;
    }
    let notify = Notify::bind(fx.dir.path());
    let started = Instant::now();
    let mut d = fx.start(
        KEY,
        &[notify.env(), ("WATCHDOG_USEC", "1000000".to_owned())],
    );
    fx.wait_count("completed", 3, secs(15)).await;
    let d_status = Deadline::new("STATUS= showing 3 completed", secs(5));
    while !notify.statuses().iter().any(|s| s.contains("3 completed")) {
        d_status.tick().await;
    }
    notify.wait_pings(3, started, secs(5)).await;
    d.assert_running();
    d.stop_ok().await;
    let stopping = notify.wait(0, "STOPPING=1", secs(3)).await;

    let msgs = notify.msgs();
    assert!(has(&msgs[0].1, "READY=1"), "READY=1 comes first: {msgs:?}");
    assert_eq!(
        msgs.iter().filter(|(_, m)| has(m, "READY=1")).count(),
        1,
        "one READY=1 without a reload: {msgs:?}"
    );
    let status = notify.find(0, "STATUS=").expect("a STATUS=");
    let ping = notify.find(0, "WATCHDOG=1").expect("a WATCHDOG=1");
    assert!(
        0 < status && status < ping,
        "STATUS= follows READY=1 and precedes the first WATCHDOG=1: {msgs:?}"
    );
    assert_eq!(
        stopping,
        msgs.len() - 1,
        "STOPPING=1 is the last message: {msgs:?}"
    );
    let first = &notify.statuses()[0];
    for word in ["running", "pending", "completed", "failed"] {
        assert!(first.contains(word), "STATUS= {first:?} counts {word} rows");
    }
    // Pings at half the interval: never a gap systemd would punish (WATCHDOG_USEC = 1 s).
    let pings = notify.pings();
    let worst = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .expect("two pings");
    assert!(
        worst < secs(1),
        "pings every ~500 ms while the loop runs; worst gap {worst:?}"
    );
}

/// A wedged scheduler loop (its single writer blocked on another process's
/// `BEGIN EXCLUSIVE`, within the 5 s busy timeout) stops the WATCHDOG=1 pings; they resume
/// once the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_loop_withholds_watchdog_pings() {
    // Long jobs: the daemon keeps polling; free slots: it tries to claim every queue tick
    // (an UPDATE, so a write, even when nothing is due).
    let fx = Fixture::new(sim_config(secs(60), 4)).await;
    fx.write_config(4, "");
    fx.insert(&fx.url("wedge-1")).await;
    fx.insert(&fx.url("wedge-2")).await;
    let notify = Notify::bind(fx.dir.path());
    let mut d = fx.start(
        KEY,
        &[notify.env(), ("WATCHDOG_USEC", "1000000".to_owned())],
    );
    fx.wait_count("running", 2, secs(15)).await;
    notify.wait_pings(3, Instant::now(), secs(5)).await;
    // A row that falls due 700 ms from now: its claim (a write) comes due while the lock
    // is held (an idle tick only reads).
    sqlx::query(
        "INSERT INTO imports (url, next_attempt_at) \
         VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+0.7 seconds'))",
    )
    .bind(fx.url("wedge-3"))
    .execute(&fx.db)
    .await
    .expect("insert a row due soon");

    let lock = Lock::take(&fx.db_path).await;
    // Hold it until the pings have stopped for 1.8 s, at most 4 s (below the daemon's busy
    // timeout of 5 s, so its write waits rather than fails).
    loop {
        let last = notify
            .pings()
            .last()
            .copied()
            .expect("pings before the lock")
            .max(lock.at);
        if last.elapsed() >= ms(1800) || lock.at.elapsed() >= secs(4) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let locked_at = lock.at;
    let released_at = lock.release().await;
    notify.wait_pings(2, released_at, secs(5)).await;

    let pings = notify.pings();
    let gap = pings
        .windows(2)
        .filter(|w| w[1] > locked_at && w[0] < released_at)
        .map(|w| w[1] - w[0])
        .max()
        .expect("pings around the lock");
    assert!(
        gap >= ms(1500),
        "no watchdog ping for >= 1.5 s while the loop was wedged; the longest gap was {gap:?} \
         (lock held {:?})",
        released_at - locked_at
    );
    d.wait_log("scheduler loop is not making progress", secs(2))
        .await;
    d.wait_log("making progress again", secs(3)).await;
    // And the loop really goes on: the row due during the lock gets submitted.
    fx.wait_count("running", 3, secs(10)).await;
    d.assert_running();
    d.stop_ok().await;
}

/// SIGHUP with a good config applies it (import concurrency 1 -> 2); with a bad one the
/// daemon logs "rejected", keeps the old config and keeps working. RELOADING=1 then READY=1
/// around each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_config_and_rejects_a_bad_one() {
    let fx = Fixture::new(sim_config(secs(1), 4)).await;
    fx.write_config(1, "");
    for i in 0..6 {
        fx.insert(&fx.url(&format!("hup-{i}"))).await;
    }
    let notify = Notify::bind(fx.dir.path());
    let mut d = fx.start(KEY, &[notify.env()]);
    notify.wait(0, "READY=1", secs(10)).await;
    fx.wait_count("completed", 1, secs(15)).await;
    assert_eq!(
        fx.sim.stats().max_concurrent_imports,
        1,
        "concurrent = 1 before the reload"
    );

    // A good config: two import slots.
    fx.write_config(2, "");
    let before = notify.msgs().len();
    d.signal("HUP");
    let reloading = notify.wait(before, "RELOADING=1", secs(5)).await;
    assert!(
        has(&notify.msgs()[reloading].1, "MONOTONIC_USEC="),
        "RELOADING=1 carries MONOTONIC_USEC="
    );
    notify.wait(reloading + 1, "READY=1", secs(5)).await;
    d.wait_log("reloaded configuration", secs(5)).await;
    let dl = Deadline::new("two imports at once after SIGHUP", secs(8));
    while fx.sim.stats().max_concurrent_imports < 2 {
        dl.tick().await;
    }

    // A bad config: rejected, the old one (2 slots) stays in force.
    std::fs::write(&fx.cfg_path, "[limits.import]\nconcurrent = 0\n").expect("write");
    let before = notify.msgs().len();
    d.signal("HUP");
    d.wait_log("rejected", secs(5)).await;
    let line = d
        .lines()
        .into_iter()
        .find(|l| l.contains("rejected"))
        .expect("the line");
    assert!(
        line.contains("limits.import.concurrent"),
        "the rejection names the key: {line}"
    );
    let reloading = notify.wait(before, "RELOADING=1", secs(5)).await;
    notify.wait(reloading + 1, "READY=1", secs(5)).await;
    fx.insert(&fx.url("hup-after-1")).await;
    fx.insert(&fx.url("hup-after-2")).await;
    fx.wait_count("completed", 8, secs(20)).await;
    assert_eq!(fx.count("failed").await, 0);
    assert_eq!(
        fx.sim.stats().max_concurrent_imports,
        2,
        "the good config's two slots, never more"
    );
    d.assert_running();
    d.stop_ok().await;
}

/// Start-up recovery: a row left `submitting` by a crash goes back to pending with an
/// `ambiguous_submit` attempt and completes; a `running` row is polled to completion by
/// its job id without a second POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_recovers_submitting_and_running_rows() {
    let fx = Fixture::new(sim_config(secs(1), 2)).await;
    fx.write_config(2, "");
    let url_run = fx.url("crash-running");
    let url_sub = fx.url("crash-submitting");
    // The job a killed daemon had submitted: Importly has it, our row says `running`.
    let resp: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/import", fx.sim.base_url()))
        .bearer_auth(KEY)
        .json(&serde_json::json!({ "url": url_run }))
        .send()
        .await
        .expect("POST /import")
        .json()
        .await
        .expect("JSON answer");
    let job_id = resp["data"]["jobId"].as_str().expect("a jobId").to_owned();
    let running: i64 = sqlx::query_scalar(
        "INSERT INTO imports (url, state, importly_job_id) VALUES (?, 'running', ?) RETURNING id",
    )
    .bind(&url_run)
    .bind(&job_id)
    .fetch_one(&fx.db)
    .await
    .expect("insert the running row");
    let submitting: i64 = sqlx::query_scalar(
        "INSERT INTO imports (url, state) VALUES (?, 'submitting') RETURNING id",
    )
    .bind(&url_sub)
    .fetch_one(&fx.db)
    .await
    .expect("insert the submitting row");

    let mut d = fx.start(KEY, &[]);
    fx.wait_count("completed", 2, secs(15)).await;

    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM import_attempts WHERE import_id = ? ORDER BY id")
            .bind(submitting)
            .fetch_all(&fx.db)
            .await
            .expect("attempts");
    assert_eq!(
        outcomes.first().map(String::as_str),
        Some("ambiguous_submit"),
        "the recovered submit is logged first: {outcomes:?}"
    );
    let (method, endpoint): (String, String) = sqlx::query_as(
        "SELECT method, endpoint FROM import_attempts WHERE import_id = ? ORDER BY id LIMIT 1",
    )
    .bind(submitting)
    .fetch_one(&fx.db)
    .await
    .expect("the recovery record");
    assert_eq!(
        (method.as_str(), endpoint.as_str()),
        ("POST", "/import"),
        "the ticket names the request that may have gone out"
    );
    assert_eq!(fx.posts(&url_sub), 1, "the recovered row is submitted once");
    assert_eq!(
        fx.posts(&url_run),
        1,
        "the running row is polled, never submitted again"
    );
    let (job, media): (String, String) =
        sqlx::query_as("SELECT importly_job_id, media_url FROM imports WHERE id = ?")
            .bind(running)
            .fetch_one(&fx.db)
            .await
            .expect("the running row");
    assert_eq!(job, job_id);
    assert!(
        media.contains(&job_id),
        "the media URL of that job: {media}"
    );
    assert!(d.count_lines("back to pending") >= 1, "{}", d.log());
    assert!(d.count_lines("resuming polls") >= 1, "{}", d.log());
    d.stop_ok().await;
}

/// `/healthz` answers 200 "ok", `/metrics` has the row, pause and budget gauges and, after
/// some work, the request counters and the poll latency histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_healthz_and_metrics_over_http() {
    let fx = Fixture::new(sim_config(ms(300), 2)).await;
    let base = format!("http://127.0.0.1:{}", free_port());
    fx.write_config(
        2,
        &format!(
            "[admin]\nlisten = \"{}\"\n",
            base.trim_start_matches("http://")
        ),
    );
    for i in 0..3 {
        fx.insert(&fx.url(&format!("admin-{i}"))).await;
    }
    let mut d = fx.start(KEY, &[]);
    let body = wait_get(&format!("{base}/healthz"), 200, secs(10)).await;
    assert_eq!(body.trim(), "ok");
    fx.wait_count("completed", 3, secs(15)).await;

    // Budgets are saved about once a second; wait for the three submits to show.
    let url = format!("{base}/metrics");
    let dl = Deadline::new("the import budget to show the submits", secs(5));
    let metrics = loop {
        let (status, body) = get(&url).await.expect("/metrics answers");
        assert_eq!(status, 200);
        if sample(&body, "importlyd_budget_remaining{bucket=\"import\"}")
            .is_some_and(|v| v < 10_000.0)
        {
            break body;
        }
        dl.tick().await;
    };
    assert_eq!(
        sample(&metrics, "importlyd_rows{state=\"completed\"}"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "importlyd_rows{state=\"pending\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "importlyd_paused{scope=\"all\"}"),
        Some(0.0),
        "{metrics}"
    );
    for needle in [
        "# TYPE importlyd_rows gauge",
        "importlyd_budget_remaining{bucket=\"status\"}",
        "importlyd_requests_total{",
        "importlyd_poll_latency_seconds_bucket{",
        "importlyd_poll_latency_seconds_count",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics has {needle}:\n{metrics}"
        );
    }
    let resp = reqwest::get(&url).await.expect("GET /metrics");
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ctype.starts_with("text/plain"), "content type {ctype}");
    d.stop_ok().await;
}

/// `/healthz` answers 503 while a 401 pauses the daemon, and 200 again once the pause is
/// lifted (`importlyd resume` after the key is fixed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_paused_by_401() {
    let fx = Fixture::new(sim_config(ms(300), 2)).await;
    let port = free_port();
    fx.write_config(2, &format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"));
    fx.insert(&fx.url("paused")).await;
    let mut d = fx.start("not-the-key", &[]);
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let body = wait_get(&healthz, 503, secs(10)).await;
    assert!(
        body.contains("paused") && body.contains("401"),
        "healthz says why: {body}"
    );
    let (_, metrics) = get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("/metrics");
    assert_eq!(
        sample(&metrics, "importlyd_paused{scope=\"all\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(fx.count("completed").await, 0);

    // The account now accepts that key; the operator lifts the pause.
    fx.sim.set_api_key("not-the-key");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&fx.cfg_path)
        .arg("resume")
        .env_remove("RUST_LOG")
        .output()
        .expect("importlyd resume");
    assert!(out.status.success(), "resume: {out:?}");
    fx.wait_count("completed", 1, secs(10)).await;
    let body = wait_get(&healthz, 200, secs(5)).await;
    assert_eq!(body.trim(), "ok");
    d.stop_ok().await;
}

/// `log.format = "json"`: one JSON object per stderr line. Text under the journal
/// (`JOURNAL_STREAM` names stderr's device and inode): no time stamps, no ANSI escapes; text
/// elsewhere, an inherited `JOURNAL_STREAM` naming another stream included, has time
/// stamps, and `RUST_LOG` sets the level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_formats_json_and_journal() {
    let fx = Fixture::new(sim_config(ms(200), 2)).await;
    let starts_with_year = |l: &str| {
        l.len() > 5 && l[..4].bytes().all(|b| b.is_ascii_digit()) && l.as_bytes()[4] == b'-'
    };

    // JSON
    fx.write_config(2, "[log]\nformat = \"json\"\n");
    fx.insert(&fx.url("log-json")).await;
    let mut d = fx.start(KEY, &[]);
    fx.wait_count("completed", 1, secs(15)).await;
    d.wait_log("completed", secs(5)).await;
    d.stop_ok().await;
    let lines = d.lines();
    assert!(lines.len() >= 3, "some log lines: {lines:?}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object(), "a JSON object per line: {line}");
        assert!(v.get("level").is_some(), "with a level: {line}");
        assert!(v.get("timestamp").is_some(), "and a time stamp: {line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"importlyd started\"")),
        "{lines:?}"
    );

    // Text under the journal.
    fx.write_config(2, "");
    fx.insert(&fx.url("log-journal")).await;
    let journal = fx.dir.path().join("journal.log");
    let stream = std::fs::File::create(&journal)
        .and_then(|f| f.metadata())
        .map(|m| format!("{}:{}", m.dev(), m.ino()))
        .expect("the log file's device and inode");
    let mut d =
        Daemon::start_logging_to(&fx.cfg_path, KEY, &[("JOURNAL_STREAM", stream)], &journal);
    fx.wait_count("completed", 2, secs(15)).await;
    d.wait_log("completed", secs(5)).await;
    d.stop_ok().await;
    let lines = d.lines();
    assert!(lines.len() >= 3, "some log lines: {lines:?}");
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "no ANSI escapes: {line:?}");
        assert!(!starts_with_year(line), "no time stamp: {line:?}");
        let level = line.split_whitespace().next().unwrap_or_default();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "starts with the level: {line:?}"
        );
    }

    // Text elsewhere: a time stamp, and RUST_LOG wins over log.level. A JOURNAL_STREAM
    // inherited from a parent whose stderr was the journal names another stream: ignored.
    fx.insert(&fx.url("log-text")).await;
    let mut d = fx.start(
        KEY,
        &[
            ("RUST_LOG", "importlyd=debug".to_owned()),
            ("JOURNAL_STREAM", "1:1".to_owned()),
        ],
    );
    fx.wait_count("completed", 3, secs(15)).await;
    d.wait_log("completed", secs(5)).await;
    d.stop_ok().await;
    let lines = d.lines();
    assert!(
        lines.iter().all(|l| starts_with_year(l)),
        "time stamps: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("DEBUG")),
        "RUST_LOG=importlyd=debug shows debug lines: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "no ANSI in a pipe"
    );
}

/// A daemon with the admin listener on, two rows `running` (jobs of 2 s at the simulator):
/// the start of the scenarios where database writes then fail. Returns the daemon, the
/// rows' URLs, the admin port and the `/healthz` URL.
async fn two_jobs_running(fx: &Fixture, name: &str) -> (Daemon, [String; 2], u16, String) {
    let port = free_port();
    fx.write_config(2, &format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"));
    let urls = [fx.url(&format!("{name}-1")), fx.url(&format!("{name}-2"))];
    for u in &urls {
        fx.insert(u).await;
    }
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let d = fx.start(KEY, &[]);
    wait_get(&healthz, 200, secs(10)).await;
    fx.wait_count("running", 2, secs(15)).await;
    (d, urls, port, healthz)
}

/// `/healthz`'s 503 body, waited for within `limit` while checking the daemon stays up.
async fn wait_503(d: &mut Daemon, healthz: &str, what: &str, limit: Duration) -> String {
    let dl = Deadline::new(format!("/healthz 503 while {what}"), limit);
    loop {
        d.assert_running();
        if let Some((503, body)) = get(healthz).await {
            return body;
        }
        dl.tick().await;
    }
}

/// Sets the soft file size limit (RLIMIT_FSIZE) of a running process with util-linux's
/// `prlimit`; `None` lifts it.
fn limit_file_size(pid: &str, bytes: Option<u64>) {
    let soft = bytes.map_or("unlimited".to_owned(), |b| b.to_string());
    let out = Command::new("prlimit")
        .args(["--pid", pid, &format!("--fsize={soft}:")])
        .output()
        .expect("prlimit (util-linux) is needed for this test");
    assert!(
        out.status.success(),
        "prlimit --fsize={soft}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The disk "fills up" under the running daemon: a file size limit makes the kernel refuse
/// its writes (short writes and EFBIG, which SQLite reports as SQLITE_FULL and
/// SQLITE_IOERR_WRITE), with no lock anywhere. The daemon keeps running, `/healthz`
/// answers 503, completions are not recorded until they can be, nothing is lost or sent
/// twice, and once the limit goes everything completes. A second time with the daemon
/// idle: its periodic write probe still turns `/healthz` to 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_keeps_daemon_alive_and_loses_nothing() {
    let fx = Fixture::new(sim_config(secs(2), 2)).await;
    let (mut d, urls, port, healthz) = two_jobs_running(&fx, "full").await;

    // Busy: both jobs finish at Importly about 2 s from now, and recording that fails.
    limit_file_size(&d.pid(), Some(100));
    let body = wait_503(&mut d, &healthz, "the disk is full", secs(20)).await;
    assert!(body.contains("database"), "healthz says why: {body}");
    // The daemon has a completion in hand (poll answers are counted as they are handled,
    // before they are stored) and cannot record it; its loop waits on that write, so the
    // other job's answer waits too.
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let dl = Deadline::new("a completion received", secs(10));
    loop {
        let text = get(&metrics)
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        let done = sample(
            &text,
            "importlyd_requests_total{call=\"poll\",outcome=\"job_completed\"}",
        );
        if done.unwrap_or(0.0) >= 1.0 {
            break;
        }
        dl.tick().await;
    }
    d.assert_running();
    assert_eq!(
        fx.count("completed").await,
        0,
        "nothing recorded while the disk is full"
    );
    assert_eq!(fx.count("running").await, 2, "the rows wait in `running`");

    limit_file_size(&d.pid(), None);
    fx.wait_count("completed", 2, secs(20)).await;
    let body = wait_get(&healthz, 200, secs(15)).await;
    assert_eq!(body.trim(), "ok");
    d.wait_log("database writes succeed again", secs(5)).await;
    assert!(
        d.lines()
            .iter()
            .any(|l| l.contains("database write failed")
                && (l.contains("full") || l.contains("I/O"))),
        "the failure is logged with SQLite's reason:\n{}",
        d.log()
    );

    // Idle: no row in flight, nothing due, the budgets saved after the last answer; only
    // the write probe can notice.
    let dl = Deadline::new("budgets saved after the last completion", secs(5));
    loop {
        let (saved, done): (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT (SELECT max(updated_at) FROM buckets), \
                    (SELECT max(completed_at) FROM imports)",
        )
        .fetch_one(&fx.db)
        .await
        .expect("read buckets");
        if saved > done {
            break;
        }
        dl.tick().await;
    }
    limit_file_size(&d.pid(), Some(100));
    let body = wait_get(&healthz, 503, secs(25)).await;
    assert!(body.contains("database"), "healthz says why: {body}");
    d.assert_running();
    limit_file_size(&d.pid(), None);
    wait_get(&healthz, 200, secs(25)).await;

    // And the queue works on.
    let late = fx.url("full-late");
    fx.insert(&late).await;
    fx.wait_count("completed", 3, secs(20)).await;
    for u in urls.iter().chain([&late]) {
        assert_eq!(fx.posts(u), 1, "{u} submitted once");
    }
    assert_eq!(
        d.count_lines("database write failed"),
        2,
        "one line per outage, not one per retry:\n{}",
        d.log()
    );
    d.stop_ok().await;
}

/// Database writes failing for longer than the busy timeout (another process holds
/// `BEGIN EXCLUSIVE` for > 5 s): the daemon keeps running, `/healthz` answers 503, no
/// completion is lost or invented, the failure of the completion write is logged once, and
/// everything completes once the lock goes. [`locked_database_strict`] adds timing and
/// log-volume bounds; [`full_disk_keeps_daemon_alive_and_loses_nothing`] is the same
/// promise for writes the kernel refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_database_keeps_daemon_alive_and_healthz_503() {
    locked_database_scenario(false).await;
}

/// The stricter form of the test above: `/healthz` 503 within one busy timeout of the lock,
/// and across a 12 s lock at most one log line about it (not one per retry and call site).
/// Needs the scheduler to report every failed write through `Health::write_failed` and the
/// store not to log each lock wait as a slow statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_database_strict() {
    locked_database_scenario(true).await;
}

async fn locked_database_scenario(strict: bool) {
    let fx = Fixture::new(sim_config(secs(2), 2)).await;
    let (mut d, urls, _, healthz) = two_jobs_running(&fx, "locked").await;
    let lines_before = d.lines().len();

    let lock = Lock::take(&fx.db_path).await;
    // The jobs finish at Importly about 2 s from now; the daemon's writes wait for the lock
    // and fail after its 5 s busy timeout, which /healthz then reports.
    let limit = if strict { secs(10) } else { secs(30) };
    let body = wait_503(&mut d, &healthz, "writes fail", limit).await;
    let to_503 = lock.at.elapsed();
    eprintln!("/healthz answered 503 {to_503:?} into the lock");
    assert!(body.contains("database"), "healthz says why: {body}");
    assert_eq!(
        fx.count("completed").await,
        0,
        "nothing is completed while it cannot be recorded"
    );
    assert_eq!(fx.sim.stats().accepted_imports, 2);
    if strict {
        // Two more busy timeouts' worth of retries.
        while lock.at.elapsed() < secs(12) {
            d.assert_running();
            tokio::time::sleep(POLL).await;
        }
        let noisy: Vec<String> = d.lines()[lines_before..]
            .iter()
            .filter(|l| l.contains("database is locked") || l.contains("slow statement"))
            .cloned()
            .collect();
        assert!(
            noisy.len() <= 1,
            "one log line per interval while writes fail, not one per retry: {noisy:#?}"
        );
    }
    let held = lock.at.elapsed();
    lock.release().await;

    fx.wait_count("completed", 2, secs(15)).await;
    let body = wait_get(&healthz, 200, secs(5)).await;
    assert_eq!(body.trim(), "ok");
    d.assert_running();
    assert_eq!(
        d.count_lines("database write failed"),
        1,
        "the failed write is logged once, not per retry (lock held {held:?}):\n{}",
        d.log()
    );
    for u in &urls {
        assert_eq!(fx.posts(u), 1, "{u} submitted once");
    }
    let media: Vec<Option<String>> =
        sqlx::query_scalar("SELECT media_url FROM imports ORDER BY id")
            .fetch_all(&fx.db)
            .await
            .expect("rows");
    assert!(
        media
            .iter()
            .all(|m| m.as_deref().is_some_and(|m| m.ends_with(".mp4"))),
        "each completion recorded in full: {media:?}"
    );
    if strict {
        d.wait_log("database writes succeed again", secs(2)).await;
    }
    d.stop_ok().await;
}
