//! A real PostgreSQL for the integration tests: a fresh database per [`database`] call, on a
//! throwaway cluster this test binary starts once from the installed server binaries, or on
//! the server named by `IMPORTLYD_TEST_DATABASE_URL` when that is set.
//!
//! The private cluster is loopback-only with trust authentication and durability switched
//! off (its data dies with the test process anyway). It is stopped, and its directory
//! removed, when the test process exits (an `atexit` handler: libtest ends with
//! `std::process::exit` or a return from `main`, both of which run it). A run killed outright
//! (SIGKILL) cannot do that; the next run stops and removes such leftovers.
//!
//! Without server binaries a test gets `None` after a loud SKIPPED line, except under
//! `CI=true`, where it fails. Binaries that are there but do not give a working server are a
//! failure everywhere: that is a bug to see, not an environment to skip.
//!
//! Environment:
//! - `IMPORTLYD_TEST_DATABASE_URL`: use this server (a superuser's URL, any database in the
//!   path) instead of a private cluster; each test still gets a database of its own.
//! - `IMPORTLYD_TEST_PG_BINDIR`: look for the server binaries only there (a directory without
//!   `initdb` makes them "not found", which is how the skip path is checked by hand).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

pub const URL_ENV: &str = "IMPORTLYD_TEST_DATABASE_URL";
pub const BINDIR_ENV: &str = "IMPORTLYD_TEST_PG_BINDIR";

/// Names our cluster directories in the temp dir, so a later run can find a killed run's.
const DIR_PREFIX: &str = "importlyd-pg-";
/// The file in a cluster directory that names the test process owning it.
const OWNER_FILE: &str = "owner.pid";

/// A database of one's own, dropped (with any connections still open to it) when this is
/// dropped: keep it alive as long as the test uses `url`.
pub struct TestDb {
    /// `postgres://user@host:port/name`, ready for sqlx, psql and the daemon's config.
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl TestDb {
    /// A small pool on this database.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }

    /// [`psql`] on this database.
    pub fn psql(&self, sql: &str) -> Output {
        psql(&self.url, sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // A template copy is several MB; a binary with many tests (or a shared server) should
        // not keep them all. Drop runs in sync code, possibly inside a runtime, so the async
        // client gets a thread and a runtime of its own. Failures are ignored: the private
        // cluster goes away at exit anyway.
        let admin = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = conn.execute(AssertSqlSafe(sql)).await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// A fresh, empty database (no migrations applied), or `None` when there is no PostgreSQL to
/// test against and we are not under CI (after a loud SKIPPED line).
pub async fn database(name_hint: &str) -> Option<TestDb> {
    // Starting the cluster blocks for a second or two (initdb, pg_ctl -w); off the runtime.
    let server = match tokio::task::spawn_blocking(server)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    {
        Ok(server) => server,
        Err(why) => {
            skip(name_hint, why);
            return None;
        }
    };
    let name = fresh_name(name_hint);
    let admin_url = server.admin_url();
    let mut conn = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin_url}: {e}"));
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin_url}: {e}"));
    let _ = conn.close().await;
    Some(TestDb {
        url: with_database(&admin_url, &name),
        name,
        admin_url,
    })
}

/// The one `bigint` that `sql` (a `SELECT count(*) ...`) returns; panics naming `sql` if the
/// query fails.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    try_count(pool, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// [`count`] for a test that expects the query may fail for a while (a server restarting).
pub async fn try_count(pool: &PgPool, sql: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
}

/// Runs `sql` with the `psql` binary, the way a user would from a shell: no ~/.psqlrc, stop
/// at the first error. The caller looks at the status, stdout ("INSERT 0 1") and stderr
/// (the server's ERROR line, which names the violated constraint).
pub fn psql(url: &str, sql: &str) -> Output {
    Command::new(psql_binary())
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", psql_binary().display()))
}

/// Restarts the private cluster on the same port (`pg_ctl restart -m fast`: open connections
/// are cut, as a real server restart would). False, doing nothing, when the tests use
/// `IMPORTLYD_TEST_DATABASE_URL` or no cluster has been started yet. It affects every test
/// of this binary running at the time: a test that restarts belongs in a binary of its own.
pub fn restart_cluster() -> bool {
    control(|c| c.pg_ctl(&["restart", "-m", "fast"], "restart"))
}

/// Stops the private cluster (`-m fast`); see [`restart_cluster`].
pub fn stop_cluster() -> bool {
    control(|c| c.pg_ctl(&["stop", "-m", "fast"], "stop"))
}

/// Starts the private cluster again after [`stop_cluster`], on the same port.
pub fn start_cluster() -> bool {
    control(|c| c.pg_ctl(&["start"], "start"))
}

/// Whether this process's tests run on a private cluster that [`restart_cluster`],
/// [`stop_cluster`] and [`start_cluster`] can control (not on `IMPORTLYD_TEST_DATABASE_URL`).
/// Call it after [`database`], which starts the server.
pub fn controls_cluster() -> bool {
    matches!(SERVER.get(), Some(Ok(Server::Private(_))))
}

/// A test that cannot run here says so loudly, by name, and returns; under `CI=true` it
/// fails instead, so that CI never passes on a test that did not run.
pub fn skip_test(name_hint: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and this test cannot run: {why}"
    );
    // libtest names a test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or(name_hint);
    // Straight to the process's stderr: eprintln! is captured by the test harness and shown
    // only for failures, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n======== SKIPPED {test}: {why} ========\n"
    );
}

fn control(action: impl FnOnce(&Cluster)) -> bool {
    // One operation at a time: two tests stopping and starting at once would race pg_ctl.
    static CONTROL: Mutex<()> = Mutex::new(());
    match SERVER.get() {
        Some(Ok(Server::Private(cluster))) => {
            let _one = CONTROL.lock().unwrap_or_else(|e| e.into_inner());
            action(cluster);
            true
        }
        _ => false,
    }
}

// ---- the server ----

enum Server {
    Private(Cluster),
    External { url: String },
}

impl Server {
    /// A superuser URL whose database exists, to create and drop test databases from.
    fn admin_url(&self) -> String {
        match self {
            Server::Private(c) => format!("postgres://postgres@127.0.0.1:{}/postgres", c.port),
            Server::External { url } => url.clone(),
        }
    }
}

/// The server of this test process, or why there is none to test against.
static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// The server, started on first use. A panic here (a cluster that will not start) leaves it
/// unset, so every test reports it, not only the first.
fn server() -> Result<&'static Server, &'static str> {
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var(URL_ENV) {
                return Ok(Server::External { url });
            }
            let bindir =
                find_bindir().ok_or("no PostgreSQL server binaries (initdb, pg_ctl) found")?;
            let owner = if running_as_root() {
                Some(postgres_user().ok_or(
                    "running as root and there is no `postgres` user to run the server as",
                )?)
            } else {
                None
            };
            let cluster = Cluster::start(bindir, owner);
            // SAFETY: registering a plain extern "C" fn with no arguments; it only reads the
            // static being initialised here (and finds nothing if that never completes).
            unsafe { libc::atexit(stop_cluster_at_exit) };
            Ok(Server::Private(cluster))
        })
        .as_ref()
        .map_err(String::as_str)
}

/// Every test that wanted a server says it was skipped, by name; under CI=true it fails.
fn skip(name_hint: &str, why: &str) {
    skip_test(
        name_hint,
        &format!(
            "no PostgreSQL: {why} (looked in ${BINDIR_ENV}, `pg_config --bindir`, \
             /usr/lib/postgresql/*/bin and PATH; set ${URL_ENV} to use a running server, \
             or apt-get install postgresql)"
        ),
    );
}

extern "C" fn stop_cluster_at_exit() {
    if let Some(Ok(Server::Private(cluster))) = SERVER.get() {
        cluster.stop_and_remove();
    }
}

// ---- the private cluster ----

struct Cluster {
    bindir: PathBuf,
    /// The temp dir: data/, the log, the unix socket, owner.pid.
    dir: PathBuf,
    port: u16,
    /// uid and gid of `postgres` when we are root (the server refuses to run as root).
    owner: Option<(u32, u32)>,
}

impl Cluster {
    fn start(bindir: PathBuf, owner: Option<(u32, u32)>) -> Cluster {
        remove_abandoned_clusters(&bindir);
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .expect("a temp dir for the PostgreSQL cluster")
            .keep();
        std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())
            .expect("write the cluster's owner.pid");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the cluster dir");
        }
        let mut cluster = Cluster {
            bindir,
            dir,
            port: 0,
            owner,
        };
        let initdb = cluster
            .command("initdb")
            .args(["-D", "data", "-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"])
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb in {} failed: {}{}",
            cluster.dir.display(),
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        // In postgresql.conf rather than on pg_ctl's -o, so that a restart keeps them all.
        let conf = format!(
            "\n# importlyd tests\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nsynchronous_commit = off\nmax_connections = 200\n",
            cluster.dir.display()
        );
        cluster.append_conf(&conf);
        // Another process may take the free port between our look and the server's bind.
        for attempt in 1..=5 {
            cluster.port = free_port();
            cluster.append_conf(&format!("port = {}\n", cluster.port));
            let out = cluster.run_pg_ctl(&["start"]);
            if out.status.success() {
                return cluster;
            }
            assert!(
                attempt < 5,
                "pg_ctl start failed 5 times; last: {}{}\n--- server log ---\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                cluster.log()
            );
        }
        unreachable!()
    }

    /// A command running `program` from the cluster's binaries, as `postgres` when we are
    /// root, in the cluster dir (runuser keeps the cwd, which `postgres` may not be able to
    /// enter otherwise).
    fn command(&self, program: &str) -> Command {
        let bin = self.bindir.join(program);
        let mut cmd = if self.owner.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }

    fn run_pg_ctl(&self, args: &[&str]) -> Output {
        self.command("pg_ctl")
            .args(args)
            .args(["-D", "data", "-l", "server.log", "-w", "-t", "60"])
            .output()
            .expect("run pg_ctl")
    }

    fn pg_ctl(&self, args: &[&str], what: &str) {
        let out = self.run_pg_ctl(args);
        assert!(
            out.status.success(),
            "pg_ctl {what} failed: {}{}\n--- server log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn append_conf(&self, text: &str) {
        let path = self.dir.join("data/postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// At exit: no checkpoint, no waiting for clients; the data is thrown away next.
    fn stop_and_remove(&self) {
        let _ = self.run_pg_ctl(&["stop", "-m", "immediate"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops and removes the clusters of earlier test processes that died without their atexit
/// handler (SIGKILL, a crash): a cluster directory whose owner.pid names no live process.
/// A directory without owner.pid may be another process's, being created: left alone.
fn remove_abandoned_clusters(bindir: &Path) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Some(pid) = std::fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<libc::pid_t>().ok())
            .filter(|&pid| pid > 0)
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if alive {
            continue;
        }
        let mut stop = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bindir.join("pg_ctl"));
            c
        } else {
            Command::new(bindir.join("pg_ctl"))
        };
        let _ = stop
            .arg("-D")
            .arg(dir.join("data"))
            .args(["stop", "-m", "immediate", "-w"])
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---- finding things ----

/// The directory with initdb and pg_ctl: $IMPORTLYD_TEST_PG_BINDIR (only there, when set),
/// else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin (Debian keeps them
/// off PATH), else wherever PATH's initdb really lives (Debian-style symlinks resolved).
fn find_bindir() -> Option<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        let dir = PathBuf::from(dir);
        return has_server(&dir).then_some(dir);
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| has_server(d)) {
        return Some(dir);
    }
    let mut debian: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .map(|p| p.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, dir)) = debian.pop() {
        return Some(dir);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|d| {
        let real = std::fs::canonicalize(d.join("initdb")).ok()?;
        let dir = real.parent()?.to_path_buf();
        has_server(&dir).then_some(dir)
    })
}

/// psql from the server's binaries when we have them (Debian's /usr/bin/psql is a wrapper
/// that wants a configured cluster), else the one on PATH.
fn psql_binary() -> &'static Path {
    static PSQL: OnceLock<PathBuf> = OnceLock::new();
    PSQL.get_or_init(|| {
        find_bindir()
            .map(|d| d.join("psql"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("psql"))
    })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd entry, read at once
    // (tests do not call getpw* concurrently with this).
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// common's `free_port`, repeated: benches/cluster.rs includes this file alone, without
/// tests/common/mod.rs.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `t_<hint>_<pid>_<n>`: unique within this process (the counter) and among processes sharing
/// one external server (the pid), and a valid identifier within PostgreSQL's 63 bytes.
fn fresh_name(hint: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let hint: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    format!(
        "t_{hint}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with its database (the path) replaced by `name`; the query string is kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}
