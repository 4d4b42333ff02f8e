//! Shared harness of the integration tests: the simulator in-process on 127.0.0.1:0, a real
//! SQLite file in a temp dir, the daemon either in-process (a `Scheduler` on tokio) or as the
//! `importlyd` binary, and a separate sqlx connection that inserts and reads rows the way a
//! user's program does.
//!
//! Waiting is always "poll a condition until a deadline" ([`wait_until`], [`wait_for`]); the
//! only fixed-length waits are [`hold_for`], which checks that something stays true.

#![allow(dead_code)]

pub mod pg;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use importlyd::config::{BucketLimit, Config};
use importlyd::importly::Client;
use importlyd::scheduler::{Control, Scheduler};
use importlyd::sim::{BucketConfig, Sim, SimConfig};
use importlyd::store::{Row, Store, StoredAttempt, StoredPause};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The key the simulator accepts unless a test says otherwise.
pub const KEY: &str = "sim-key";

/// How often the wait helpers look again.
const POLL: Duration = Duration::from_millis(25);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---- waiting ----

/// Polls `cond` every 25 ms until it is true; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `probe` every 25 ms until it yields a value; panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that `cond` stays true for `period` (a negative property: "nothing is sent").
pub async fn hold_for<F, Fut>(what: &str, period: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + period;
    while Instant::now() < end {
        assert!(cond().await, "expected {what} to hold for {period:?}");
        tokio::time::sleep(POLL).await;
    }
    assert!(cond().await, "expected {what} to hold for {period:?}");
}

/// A free loopback port (for an admin listener, a cluster): free when asked, so another
/// process may take it before the caller binds; callers that can retry do.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

// ---- simulator and configuration ----

/// Generous limits and short jobs; each test tightens what it checks.
pub fn sim_config() -> SimConfig {
    SimConfig {
        api_key: KEY.into(),
        import: BucketConfig::new(10_000, secs(60), 2),
        status: BucketConfig::new(100_000, secs(60), 0),
        metadata: BucketConfig::new(10_000, secs(60), 5),
        job_duration: ms(300),
        metadata_duration: ms(200),
        ..SimConfig::default()
    }
}

pub async fn start_sim(cfg: SimConfig) -> Sim {
    Sim::start(cfg).await.expect("simulator starts")
}

/// A daemon config for tests: the simulator's address, a database in `dir`, budgets that
/// never get in the way, short intervals and delays.
pub fn daemon_config(dir: &Path, sim: &Sim) -> Config {
    daemon_config_at(dir, &sim.base_url())
}

/// [`daemon_config`] for any base URL. Tests never run the daemon with the built-in hourly
/// budgets: their pacing (time left in the hour / requests left) depends on the time of day.
pub fn daemon_config_at(dir: &Path, base_url: &str) -> Config {
    let mut cfg = Config::default();
    cfg.database.path = dir.join("importlyd.db");
    cfg.api.base_url = base_url.to_owned();
    cfg.api.request_timeout = secs(5);
    cfg.limits.import = BucketLimit {
        requests: 10_000,
        window: secs(60),
        concurrent: 2,
        reserve: 0,
    };
    cfg.limits.status = BucketLimit {
        requests: 100_000,
        window: secs(60),
        concurrent: 0,
        reserve: 0,
    };
    cfg.limits.metadata = BucketLimit {
        requests: 10_000,
        window: secs(60),
        concurrent: 5,
        reserve: 0,
    };
    cfg.retry.max_attempts = 8;
    cfg.retry.base_delay = ms(200);
    cfg.retry.max_delay = secs(2);
    cfg.poll.status_interval = ms(100);
    cfg.poll.queue_interval = ms(30);
    // As quick as the polls, so tests of slots held elsewhere run in seconds.
    cfg.limits.probe_delay = ms(100);
    cfg.pause.probe_interval = secs(3600);
    cfg.log.level = "importlyd=debug,info".into();
    cfg
}

/// The config as a TOML file the binary reads (sections and `[a.b]` subsections from the
/// serialised config; durations are humantime strings already).
pub fn config_toml(cfg: &Config) -> String {
    fn scalar(v: &Value) -> String {
        // A JSON string, number or bool is valid TOML as written.
        v.to_string()
    }
    fn section(out: &mut String, name: &str, obj: &serde_json::Map<String, Value>) {
        out.push_str(&format!("[{name}]\n"));
        let mut subs = Vec::new();
        for (k, v) in obj {
            match v {
                Value::Object(m) => subs.push((format!("{name}.{k}"), m)),
                Value::Null => {}
                v => out.push_str(&format!("{k} = {}\n", scalar(v))),
            }
        }
        out.push('\n');
        for (n, m) in subs {
            section(out, &n, m);
        }
    }
    let v = serde_json::to_value(cfg).expect("config serialises");
    let mut out = String::new();
    if let Value::Object(top) = v {
        for (k, v) in &top {
            if let Value::Object(m) = v {
                section(&mut out, k, m);
            }
        }
    }
    out
}

/// Writes `cfg` with `database.url` (PostgreSQL) (the URL is a secret and never serialised) as
/// `<dir>/<name>.toml`.
pub fn write_config_with_url(dir: &Path, name: &str, cfg: &Config, url: &str) -> PathBuf {
    let toml =
        config_toml(cfg).replacen("[database]\n", &format!("[database]\nurl = {url:?}\n"), 1);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).expect("write config");
    path
}

pub fn write_config(dir: &Path, cfg: &Config) -> PathBuf {
    let path = dir.join("importlyd.toml");
    std::fs::write(&path, config_toml(cfg)).expect("write config");
    path
}

// ---- the database, as another program sees it ----

/// A user's own connection to the queue database (not the daemon's store).
#[derive(Clone)]
pub struct Db {
    pub pool: SqlitePool,
    pub path: PathBuf,
}

const ROW_COLUMNS: &str = "id, url, kind, options, external_id, state, attempts, \
     next_attempt_at, importly_job_id, media_url, credits_used, result, last_error, \
     created_at, updated_at, completed_at";

impl Db {
    /// Creates the schema (as `importlyd migrate` would) and opens a separate connection
    /// with a 5 s busy timeout.
    pub async fn create(path: &Path) -> Db {
        let store = Store::open_sqlite(path).await.expect("create the schema");
        store.close().await;
        Db::connect(path).await
    }

    /// Opens a connection to an existing database.
    pub async fn connect(path: &Path) -> Db {
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .expect("sqlite options")
            .filename(path)
            .busy_timeout(secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .expect("open the database");
        Db {
            pool,
            path: path.to_owned(),
        }
    }

    /// `INSERT INTO imports (url) VALUES (?)`; returns the row id.
    pub async fn insert(&self, url: &str) -> i64 {
        sqlx::query_scalar("INSERT INTO imports (url) VALUES (?) RETURNING id")
            .bind(url)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("insert {url}: {e}"))
    }

    pub async fn insert_with_options(&self, url: &str, options: &str) -> i64 {
        sqlx::query_scalar("INSERT INTO imports (url, options) VALUES (?, ?) RETURNING id")
            .bind(url)
            .bind(options)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("insert {url} {options}: {e}"))
    }

    pub async fn insert_many(&self, urls: &[String]) -> Vec<i64> {
        let mut ids = Vec::new();
        for u in urls {
            ids.push(self.insert(u).await);
        }
        ids
    }

    pub async fn row(&self, id: i64) -> Row {
        sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM imports WHERE id = ?"
        )))
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .unwrap_or_else(|e| panic!("row {id}: {e}"))
    }

    pub async fn rows(&self) -> Vec<Row> {
        sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM imports ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await
        .expect("rows")
    }

    /// Number of rows per state (states without rows are absent).
    pub async fn counts(&self) -> BTreeMap<String, i64> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM imports GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .expect("counts");
        rows.into_iter().collect()
    }

    pub async fn count(&self, state: &str) -> i64 {
        self.counts().await.get(state).copied().unwrap_or(0)
    }

    /// True once every row is in `state`.
    pub async fn all_in(&self, state: &str) -> bool {
        let c = self.counts().await;
        c.len() == 1 && c.contains_key(state)
    }

    /// The failure log of one row, oldest first.
    pub async fn attempts(&self, id: i64) -> Vec<StoredAttempt> {
        sqlx::query_as::<_, StoredAttempt>(
            "SELECT id, import_id, attempt, method, endpoint, request_body, started_at, \
             finished_at, http_status, error, outcome, rate_limit, response_body, \
             body_truncated, job_id, daemon_version \
             FROM import_attempts WHERE import_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .expect("attempts")
    }

    /// Every logged exchange, oldest first.
    pub async fn all_attempts(&self) -> Vec<StoredAttempt> {
        sqlx::query_as::<_, StoredAttempt>(
            "SELECT id, import_id, attempt, method, endpoint, request_body, started_at, \
             finished_at, http_status, error, outcome, rate_limit, response_body, \
             body_truncated, job_id, daemon_version \
             FROM import_attempts ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("attempts")
    }

    pub async fn pauses(&self) -> Vec<StoredPause> {
        sqlx::query_as::<_, StoredPause>(
            "SELECT scope, reason, http_status, since, next_probe FROM pauses ORDER BY scope",
        )
        .fetch_all(&self.pool)
        .await
        .expect("pauses")
    }

    /// A readable dump for failure messages.
    pub async fn dump(&self) -> String {
        let mut out = String::new();
        for r in self.rows().await {
            out.push_str(&format!(
                "  row {} {} attempts={} job={:?} err={:?} url={}\n",
                r.id, r.state, r.attempts, r.importly_job_id, r.last_error, r.url
            ));
        }
        for p in self.pauses().await {
            out.push_str(&format!(
                "  pause {} {:?}: {}\n",
                p.scope, p.http_status, p.reason
            ));
        }
        out
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Milliseconds since the epoch of a timestamp the database holds.
pub fn iso_ms(s: &str) -> u64 {
    let t = importlyd::clock::parse_iso(s).unwrap_or_else(|| panic!("not a time: {s}"));
    importlyd::clock::unix_ms(t) as u64
}

pub fn unix_ms(t: SystemTime) -> u64 {
    importlyd::clock::unix_ms(t) as u64
}

pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Moves into a fresh aligned window when less than `margin` is left of the current one.
pub async fn ensure_room_in_window(window: Duration, margin: Duration) {
    let len = window.as_millis() as u64;
    let left = len - now_ms() % len;
    if left < margin.as_millis() as u64 {
        tokio::time::sleep(ms(left + 20)).await;
    }
}

// ---- the daemon in-process ----

/// A `Scheduler` running on the test's runtime, stopped by cancelling its token.
pub struct Daemon {
    pub shutdown: CancellationToken,
    pub control: mpsc::Sender<Control>,
    handle: JoinHandle<anyhow::Result<()>>,
    store: Store,
}

impl Daemon {
    pub async fn start(cfg: &Config, key: &str) -> Daemon {
        let store = Store::open(&cfg.database)
            .await
            .expect("daemon opens the store");
        let client = Client::new(
            &cfg.api.base_url,
            SecretString::from(key.to_owned()),
            cfg.api.request_timeout,
        )
        .expect("client");
        let shutdown = CancellationToken::new();
        let (control, rx) = mpsc::channel(4);
        let handle = tokio::spawn(
            Scheduler::new(cfg.clone(), store.clone(), client, shutdown.clone()).run(rx),
        );
        Daemon {
            shutdown,
            control,
            handle,
            store,
        }
    }

    /// Cancels and waits (bounded) for the scheduler to drain and return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let res = tokio::time::timeout(secs(10), self.handle)
            .await
            .expect("the daemon stops within 10 s of its shutdown token");
        res.expect("daemon task").expect("daemon returned Ok");
        self.store.close().await;
    }
}

// ---- the binary ----

pub const BIN: &str = env!("CARGO_BIN_EXE_importlyd");

/// A `Command` for the binary with a clean environment: no `IMPORTLYD_*` overrides and no
/// `RUST_LOG` from the caller, and `IMPORTLY_API_KEY` only when `key` is given.
pub fn command(key: Option<&str>) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("IMPORTLYD_") {
            c.env_remove(&k);
        }
    }
    c.env_remove("RUST_LOG");
    c.env_remove("CREDENTIALS_DIRECTORY");
    match key {
        Some(k) => c.env("IMPORTLY_API_KEY", k),
        None => c.env_remove("IMPORTLY_API_KEY"),
    };
    c.stdin(Stdio::null());
    c
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn ok(self) -> Out {
        assert!(
            self.status.success(),
            "command failed ({:?}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `importlyd --config CONFIG ARGS...` to completion (bounded at 60 s).
pub async fn cli(config: &Path, args: &[&str]) -> Out {
    let mut c = command(Some(KEY));
    c.arg("--config").arg(config).args(args);
    run_to_end(c).await
}

pub async fn run_to_end(mut c: tokio::process::Command) -> Out {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(secs(60), c.output())
        .await
        .expect("command finishes within 60 s")
        .expect("command starts");
    Out {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `importlyd --config FILE run` as a child process, logging to a file in the test's dir.
pub struct Proc {
    child: tokio::process::Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl Proc {
    /// Starts the daemon; `key` goes into `IMPORTLY_API_KEY` (None: the key comes from
    /// `api.key_file`). `name` tells apart the logs of several runs in one dir.
    pub fn start(config: &Path, key: Option<&str>, name: &str) -> Proc {
        let dir = config.parent().expect("config dir");
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut c = command(key);
        c.arg("--config")
            .arg(config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        let child = c.spawn().expect("daemon starts");
        let pid = child.id().expect("daemon pid");
        Proc { child, pid, log }
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`).
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// Waits for the process to exit; panics (with its log) after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for the daemon"),
            Err(_) => panic!(
                "daemon did not exit within {timeout:?}; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// SIGTERM, then the exit status (within `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(timeout).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon's log contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let what = format!("`{needle}` in the daemon log");
        wait_until(&what, timeout, || async move {
            self.log_text().contains(needle)
        })
        .await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- log of daemon {} ({}) ----\n{}",
                self.pid,
                self.log.display(),
                self.log_text()
            );
        }
        // kill_on_drop ends a daemon a failed test left behind.
    }
}
