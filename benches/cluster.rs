//! importlyd's PostgreSQL benchmarks (issue 13): the figures in BENCHMARKS.md, section
//! "PostgreSQL (issue 13)", come from here.
//!
//!     cargo build --release
//!     cargo bench --bench cluster                   # all of them
//!     cargo bench --bench cluster -- claims         # one: claims, throughput, pickup,
//!                                                   #      utilisation, failover
//!
//! As `benches/importlyd.rs`: the daemons run as the real release binary, the simulator in
//! this process on loopback. The database is a private throwaway PostgreSQL cluster started
//! from the installed server binaries by the test support (`tests/common/pg.rs`: loopback,
//! trust, fsync/synchronous_commit off), one fresh database per measurement; or the server
//! named by `IMPORTLYD_TEST_DATABASE_URL` (a superuser's URL). These report; they assert
//! nothing.
//!
//! BENCH_LOG=importlyd=debug BENCH_KEEP=1 keeps each run's dir (configs, daemon logs);
//! BENCH_VERBOSE=1 prints raw samples; BENCH_PG_STATEMENTS=1, with a server that preloads
//! pg_stat_statements (IMPORTLYD_TEST_DATABASE_URL), prints the costliest statements of the
//! claims and throughput runs; BENCH_THROUGHPUT=DAEMONS:HISTORY[,...] (e.g. `3:100000`)
//! runs only those throughput runs.

#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use importlyd::importly::JobKind;
use importlyd::sim::{BucketConfig, Sim, SimConfig};
use importlyd::store::{DaemonInfo, PgStore, Store};
use sqlx::{Connection, PgConnection};

const KEY: &str = "bench-key";

type R<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> R<()> {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    println!(
        "importlyd PostgreSQL benchmarks ({} cores)",
        std::thread::available_parallelism()?.get()
    );
    if want("claims") {
        claims().await?;
    }
    if want("throughput") {
        throughput().await?;
    }
    if want("pickup") {
        pickup().await?;
    }
    if want("utilisation") {
        utilisation().await?;
    }
    if want("failover") {
        failover().await?;
    }
    Ok(())
}

fn verbose() -> bool {
    std::env::var_os("BENCH_VERBOSE").is_some()
}

// ---- the database ----

/// A fresh database (migrated), or `None` after the test support's loud SKIPPED line.
async fn database(hint: &str) -> R<Option<(pg::TestDb, Store)>> {
    let Some(db) = pg::database(hint).await else {
        return Ok(None);
    };
    let store = Store::Postgres(PgStore::open(&db.url).await?);
    Ok(Some((db, store)))
}

/// `n` pending rows in one statement.
async fn insert_rows(c: &mut PgConnection, n: i64, prefix: &str) -> R<()> {
    sqlx::query(
        "INSERT INTO imports (url) \
         SELECT 'https://media.example.com/' || $2 || '/' || i || '.mp4' \
         FROM generate_series(1, $1) AS i",
    )
    .bind(n)
    .bind(prefix)
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn finished(c: &mut PgConnection) -> R<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM imports WHERE state IN ('completed', 'failed')")
            .fetch_one(&mut *c)
            .await?,
    )
}

/// Waits until `n` rows are finished, looking every `every` with an index probe that stops at
/// the first unfinished row (counting 20,000 rows every 50 ms cost the server 8 % of what
/// the throughput run measured), and counting only once none is left. Leaves seq scans off
/// on `c`.
async fn wait_finished(c: &mut PgConnection, n: i64, every: Duration, limit: Duration) -> R<()> {
    // The planner would rather seq-scan for "any unfinished row" once most of the table is
    // finished (pending rows being many in its statistics): on a table with history that
    // costs tens of ms a look, which is then the bench measuring itself.
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *c)
        .await?;
    let start = Instant::now();
    loop {
        let busy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM imports \
                            WHERE state IN ('pending', 'submitting', 'running'))",
        )
        .fetch_one(&mut *c)
        .await?;
        if !busy {
            let done = finished(c).await?;
            if done >= n {
                return Ok(());
            }
        }
        if start.elapsed() > limit {
            let done = finished(c).await?;
            return Err(format!("only {done}/{n} rows finished in {limit:?}").into());
        }
        tokio::time::sleep(every).await;
    }
}

/// CPU seconds (user + system) of a process, from /proc; with `children`, also of its
/// reaped children (the postmaster's exited backends).
fn cpu_secs(pid: u32, children: bool) -> R<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let mut ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    if children {
        ticks += f[13].parse::<f64>()? + f[14].parse::<f64>()?;
    }
    Ok(ticks / 100.0)
}

/// Busy CPU seconds of the whole machine so far (all cores, from /proc/stat): what other
/// processes (other builds and tests on a shared box) took during a run is this less ours.
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    // user nice system idle iowait irq softirq steal ...
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: f64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum();
    busy / 100.0
}

/// The server's process: the first line of `postmaster.pid` in its data directory (`None`
/// when the server is not ours to read, e.g. a remote `IMPORTLYD_TEST_DATABASE_URL`).
async fn postmaster(c: &mut PgConnection) -> Option<u32> {
    let dir: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(&mut *c)
        .await
        .ok()?;
    let pid = std::fs::read_to_string(Path::new(&dir).join("postmaster.pid")).ok()?;
    pid.lines().next()?.trim().parse().ok()
}

/// CPU seconds of the whole server: the postmaster, its reaped children and its live ones.
fn server_cpu(postmaster: Option<u32>) -> f64 {
    let Some(pm) = postmaster else { return 0.0 };
    let mut total = cpu_secs(pm, true).unwrap_or(0.0);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pm) {
            total += cpu_secs(pid, false).unwrap_or(0.0);
        }
    }
    total
}

/// Transactions committed in this database so far (every statement outside a transaction
/// block is one), as the statistics collector has them.
async fn commits(c: &mut PgConnection) -> R<i64> {
    // The counters are flushed by backends now and then; a fresh snapshot each time.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *c)
        .await?;
    Ok(sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut *c)
    .await?)
}

/// BENCH_PG_STATEMENTS=1, on a server that preloads pg_stat_statements (see BENCHMARKS.md):
/// forget what this database's statements cost so far.
async fn statements_reset(c: &mut PgConnection) -> R<()> {
    if std::env::var_os("BENCH_PG_STATEMENTS").is_none() {
        return Ok(());
    }
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut *c)
        .await?;
    sqlx::query(
        "SELECT pg_stat_statements_reset(0, \
           (SELECT oid FROM pg_database WHERE datname = current_database()), 0)",
    )
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// BENCH_PG_STATEMENTS=1: the statements of this database that took the most server time
/// since [`statements_reset`].
async fn top_statements(c: &mut PgConnection, what: &str) -> R<()> {
    if std::env::var_os("BENCH_PG_STATEMENTS").is_none() {
        return Ok(());
    }
    let rows: Vec<(i64, f64, f64, i64, String)> = sqlx::query_as(
        "SELECT calls, total_exec_time, mean_exec_time, rows, \
                left(regexp_replace(query, '\\s+', ' ', 'g'), 150) \
         FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY total_exec_time DESC LIMIT 12",
    )
    .fetch_all(&mut *c)
    .await?;
    let (calls, total): (i64, f64) = sqlx::query_as(
        "SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(total_exec_time), 0) \
         FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut *c)
    .await?;
    println!(
        "{what}: {calls} statements took {total:.0} ms of execution (lock waits included); the most \
         costly (calls, total ms, mean ms, rows):"
    );
    for (calls, total, mean, n, query) in rows {
        println!("  {calls:>7} {total:>9.0} {mean:>8.3} {n:>8}  {query}");
    }
    Ok(())
}

// ---- daemons ----

/// A temp dir for configs and daemon logs (kept with BENCH_KEEP).
fn workdir() -> R<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("keeping {}", path.display());
        let kept = dir.keep();
        return Ok((tempfile::TempDir::new_in(&kept)?, kept));
    }
    Ok((dir, path))
}

/// The daemons' shared settings: the database, the API, the lease.
struct Cluster<'a> {
    dir: &'a Path,
    url: &'a str,
    base_url: String,
    request_timeout: &'a str,
    lease: &'a str,
    /// More TOML (sections other than database, api, cluster, log).
    extra: &'a str,
}

impl Cluster<'_> {
    /// `<dir>/<name>.toml` with `database.url`, as tests/cluster.rs writes them.
    fn config(&self, name: &str) -> R<PathBuf> {
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[database]\nurl = {:?}\n[api]\nbase_url = {:?}\nrequest_timeout = {:?}\n\
                 [cluster]\nlease = {:?}\n[log]\nlevel = {:?}\n{}\n",
                self.url,
                self.base_url,
                self.request_timeout,
                self.lease,
                std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
                self.extra
            ),
        )?;
        Ok(path)
    }

    /// `importlyd migrate` once, as an operator would before starting the daemons.
    fn migrate(&self) -> R<()> {
        let config = self.config("migrate")?;
        let out = binary()
            .arg("--config")
            .arg(&config)
            .arg("migrate")
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "importlyd migrate: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(())
    }

    fn start(&self, name: &str) -> R<Daemon> {
        let config = self.config(name)?;
        let log = self.dir.join(format!("{name}.log"));
        let child = binary()
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()?;
        Ok(Daemon {
            child: Some(child),
            log,
        })
    }
}

/// The release binary with a clean environment, as tests/common's `command`: the daemon
/// reads every `IMPORTLYD_*` variable as a config override, and `IMPORTLYD_TEST_DATABASE_URL`
/// is not one.
fn binary() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_importlyd"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("IMPORTLYD_") {
            c.env_remove(&k);
        }
    }
    c.env_remove("RUST_LOG")
        .env("IMPORTLY_API_KEY", KEY)
        .stdin(Stdio::null());
    c
}

/// A running `importlyd run`, killed (SIGKILL) if a benchmark fails while it runs.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn signal(&self, sig: &str) -> R<()> {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill -{sig} {} failed", self.pid()).into());
        }
        Ok(())
    }

    /// SIGTERM and wait: a clean shutdown.
    fn stop(mut self) -> R<()> {
        self.signal("TERM")?;
        if let Some(mut c) = self.child.take() {
            c.wait()?;
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn cpu(&self) -> f64 {
        cpu_secs(self.pid(), false).unwrap_or(0.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `cond` holds, checking every `every`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, every: Duration, mut cond: F) -> R<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = R<bool>>,
{
    let start = Instant::now();
    while !cond().await? {
        if start.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}").into());
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// How busy the machine was over a run: `machine_busy()` then, and how long ago.
fn busy_since(before: f64, t: Instant) -> String {
    let secs = t.elapsed().as_secs_f64();
    format!(
        "machine {:.0} % busy",
        (machine_busy() - before) / (secs * cores()) * 100.0
    )
}

/// Quantile `q` of sorted `v`.
fn q<T: Copy>(v: &[T], q: f64) -> T {
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

// ---- the benchmarks ----

/// Claims per second from a table of 1,000,000 pending rows, the store alone: N handles
/// registered as N daemons, each claiming batches of 64 in a loop (no slot limit, so no
/// advisory lock: the claim statement itself). A fresh table for each N.
async fn claims() -> R<()> {
    for daemons in [1usize, 4] {
        let Some((db, admin)) = database("bench_claims").await? else {
            return Ok(());
        };
        let mut c = PgConnection::connect(&db.url).await?;
        let pm = postmaster(&mut c).await;
        let t = Instant::now();
        insert_rows(&mut c, 1_000_000, "claims").await?;
        let load = t.elapsed();
        // What autovacuum would do soon after such a load; done here so every run plans
        // with the same statistics.
        sqlx::query("VACUUM ANALYZE imports")
            .execute(&mut c)
            .await?;
        println!(
            "claims: {daemons} daemon(s): inserted 1,000,000 rows in {:.1}s (one INSERT ... SELECT generate_series), vacuum analyze {:.1}s",
            load.as_secs_f64(),
            t.elapsed().as_secs_f64() - load.as_secs_f64()
        );
        let mut stores = Vec::new();
        for i in 0..daemons {
            let s = Store::Postgres(PgStore::open_unmigrated(&db.url).await?);
            let mut info = DaemonInfo::this_process();
            info.id = format!("{}-bench-{i}", info.id);
            s.register_daemon(info, Duration::from_secs(60)).await?;
            stores.push(s);
        }
        let run = Duration::from_secs(5);
        statements_reset(&mut c).await?;
        let server_before = server_cpu(pm);
        let bench_before = cpu_secs(std::process::id(), false)?;
        let machine_before = machine_busy();
        let t = Instant::now();
        let mut tasks = Vec::new();
        for s in &stores {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let (mut rows, mut calls) = (0usize, 0usize);
                let mut worst = Duration::ZERO;
                while t.elapsed() < run {
                    let now = SystemTime::now();
                    let one = Instant::now();
                    rows += s.claim_due(JobKind::Import, 64, now, u32::MAX).await?.len();
                    worst = worst.max(one.elapsed());
                    calls += 1;
                }
                Ok::<_, importlyd::store::StoreError>((rows, calls, worst))
            }));
        }
        let (mut rows, mut calls, mut worst) = (0usize, 0usize, Duration::ZERO);
        for task in tasks {
            let (r, n, w) = task.await??;
            rows += r;
            calls += n;
            worst = worst.max(w);
        }
        let secs = t.elapsed().as_secs_f64();
        let server = server_cpu(pm) - server_before;
        let bench = cpu_secs(std::process::id(), false)? - bench_before;
        let others = (machine_busy() - machine_before - server - bench).max(0.0);
        let owners: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT owner) FROM imports WHERE state = 'submitting'",
        )
        .fetch_one(&mut c)
        .await?;
        let claimed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM imports WHERE state = 'submitting' AND owner IS NOT NULL",
        )
        .fetch_one(&mut c)
        .await?;
        println!(
            "claims: {daemons} daemon(s), batch 64: {rows} rows in {secs:.1}s = {:.0} rows claimed/s in total \
             ({calls} claims, {:.2} ms mean, {:.1} ms worst; table says {claimed} claimed by {owners} owner(s)); \
             CPU: server {server:.1}s, bench process {bench:.1}s, other processes {others:.1}s (of {:.0} core-s)",
            rows as f64 / secs,
            secs * 1000.0 * daemons as f64 / calls.max(1) as f64,
            worst.as_secs_f64() * 1000.0,
            secs * cores()
        );
        top_statements(&mut c, "claims").await?;
        for s in &stores {
            s.close().await;
        }
        admin.close().await;
        c.close().await?;
    }
    Ok(())
}

/// Rows per second end to end: release daemons, no limits that bind (the account's
/// concurrency 1000), instant jobs; from the daemons' start until every row is finished.
///
/// Twice for 3 daemons (the goal): on fresh tables, and on tables with the history of a
/// queue in use (100,000 completed rows with their accepted-submit records), analyzed. On
/// fresh tables the planner's statistics say `import_attempts` is empty while it grows by
/// 20,000 rows within the run, and autovacuum's ANALYZE (at most once a minute) comes too
/// late for the group commit's generic plan (see BENCHMARKS.md). Then 1 daemon, with
/// history, for comparison.
///
/// BENCH_THROUGHPUT=DAEMONS:HISTORY[,DAEMONS:HISTORY...] runs only those (e.g. `3:100000`).
async fn throughput() -> R<()> {
    let runs = match std::env::var("BENCH_THROUGHPUT") {
        Ok(list) => list
            .split(',')
            .map(|r| {
                let (d, h) = r
                    .split_once(':')
                    .ok_or("BENCH_THROUGHPUT: DAEMONS:HISTORY")?;
                Ok((d.trim().parse()?, h.trim().parse()?))
            })
            .collect::<R<Vec<(usize, i64)>>>()?,
        Err(_) => vec![(3, 0), (3, 100_000), (1, 100_000)],
    };
    for (daemons, history) in runs {
        throughput_with(daemons, history).await?;
    }
    Ok(())
}

/// `history` completed rows, each with its accepted-submit record, as a queue in use has.
async fn insert_history(c: &mut PgConnection, history: i64) -> R<()> {
    sqlx::query(
        "INSERT INTO imports (url, state, attempts, importly_job_id, media_url, credits_used, \
                              completed_at) \
         SELECT 'https://media.example.com/history/' || i || '.mp4', 'completed', 1, \
                'job-h' || i, 'https://cdn.example.com/h/' || i || '.mp4', 1, now() \
         FROM generate_series(1, $1) AS i",
    )
    .bind(history)
    .execute(&mut *c)
    .await?;
    sqlx::query(
        "INSERT INTO import_attempts (import_id, attempt, method, endpoint, request_body, \
                                      started_at, finished_at, http_status, outcome, \
                                      response_body, job_id, daemon_version) \
         SELECT id, 0, 'POST', '/import', '{}', now(), now(), 200, 'accepted', '{}', \
                importly_job_id, 'bench' \
         FROM imports WHERE state = 'completed'",
    )
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn throughput_with(n: usize, history: i64) -> R<()> {
    let rows = 20_000i64;
    let Some((db, store)) = database("bench_throughput").await? else {
        return Ok(());
    };
    store.close().await;
    let sim = Sim::start(SimConfig {
        api_key: KEY.into(),
        job_duration: Duration::ZERO,
        import: BucketConfig::new(100_000_000, Duration::from_secs(3600), 100_000),
        status: BucketConfig::new(100_000_000, Duration::from_secs(3600), 0),
        ..SimConfig::default()
    })
    .await?;
    let (_keep, dir) = workdir()?;
    let cluster = Cluster {
        dir: &dir,
        url: &db.url,
        base_url: sim.base_url(),
        request_timeout: "1s",
        lease: "3s",
        extra: "[limits.import]\nrequests = 100000000\nconcurrent = 1000\n\
                [limits.status]\nrequests = 100000000\n\
                [poll]\nstatus_interval = \"1ms\"\nqueue_interval = \"20ms\"",
    };
    cluster.migrate()?;
    let mut c = PgConnection::connect(&db.url).await?;
    let pm = postmaster(&mut c).await;
    insert_history(&mut c, history).await?;
    insert_rows(&mut c, rows, "tp").await?;
    // With history, every table as autovacuum would have left it; fresh, only the queue
    // just loaded (the rest as a new install has it: never analyzed).
    let analyze = if history > 0 {
        "VACUUM ANALYZE"
    } else {
        "VACUUM ANALYZE imports"
    };
    sqlx::query(analyze).execute(&mut c).await?;
    statements_reset(&mut c).await?;
    let commits_before = commits(&mut c).await?;
    let server_before = server_cpu(pm);
    let bench_before = cpu_secs(std::process::id(), false)?;
    let machine_before = machine_busy();
    let t = Instant::now();
    let started = SystemTime::now();
    let mut daemons = Vec::new();
    for i in 0..n {
        daemons.push(cluster.start(&format!("d{i}"))?);
    }
    wait_finished(
        &mut c,
        rows,
        Duration::from_millis(50),
        Duration::from_secs(600),
    )
    .await?;
    let took = t.elapsed();
    let server = server_cpu(pm) - server_before;
    let bench = cpu_secs(std::process::id(), false)? - bench_before;
    let daemon_cpu: Vec<f64> = daemons.iter().map(Daemon::cpu).collect();
    let others =
        (machine_busy() - machine_before - server - bench - daemon_cpu.iter().sum::<f64>())
            .max(0.0);
    let cpus: Vec<String> = daemon_cpu.iter().map(|c| format!("{c:.1}")).collect();
    let stats = sim.stats();
    let first = stats.post_times.first().map_or(started, |p| p.1);
    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM imports WHERE state = 'completed'")
            .fetch_one(&mut c)
            .await?;
    for d in daemons {
        d.stop()?;
    }
    // Backends report their counters at most every second or so, and at exit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let per_row = (commits(&mut c).await? - commits_before) as f64 / rows as f64;
    println!(
        "throughput: {rows} rows, {n} daemon(s), {}, account concurrency 1000, instant jobs: {:.1}s from start to all finished \
         ({completed} completed) = {:.0} rows/s ({:.0} rows/s from the first POST); {} POSTs, {} status calls; \
         {per_row:.1} transactions per row; \
         CPU: daemons {} s, server {server:.1}s, bench process (simulator) {bench:.1}s, \
         other processes {others:.1}s (of {:.0} core-s)",
        if history == 0 {
            "fresh tables".to_owned()
        } else {
            format!("{history} rows of history")
        },
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        rows as f64 / (took.as_secs_f64() - first.duration_since(started)?.as_secs_f64()),
        stats.import_posts,
        stats.status_requests,
        cpus.join(" / "),
        took.as_secs_f64() * cores(),
    );
    top_statements(&mut c, "throughput").await?;
    sim.shutdown().await;
    Ok(())
}

/// Idle daemons: time from an INSERT's commit on another connection to the POST at the sim.
async fn pickup() -> R<()> {
    let samples = 200;
    for n in [1usize, 3] {
        let Some((db, store)) = database("bench_pickup").await? else {
            return Ok(());
        };
        store.close().await;
        let sim = Sim::start(SimConfig {
            api_key: KEY.into(),
            job_duration: Duration::from_millis(10),
            import: BucketConfig::new(100_000, Duration::from_secs(3600), 32),
            status: BucketConfig::new(100_000_000, Duration::from_secs(3600), 0),
            ..SimConfig::default()
        })
        .await?;
        let (_keep, dir) = workdir()?;
        let cluster = Cluster {
            dir: &dir,
            url: &db.url,
            base_url: sim.base_url(),
            request_timeout: "1s",
            lease: "3s",
            // queue_interval stays at its default (250 ms): a pickup faster than that is
            // the NOTIFY's doing.
            extra: "[limits.import]\nrequests = 100000\nconcurrent = 32\n\
                    [limits.status]\nrequests = 100000000\n[poll]\nstatus_interval = \"20ms\"",
        };
        cluster.migrate()?;
        let mut daemons = Vec::new();
        for i in 0..n {
            daemons.push(cluster.start(&format!("d{i}"))?);
        }
        let mut c = PgConnection::connect(&db.url).await?;
        wait_until(
            "every daemon registered",
            Duration::from_secs(15),
            Duration::from_millis(20),
            || {
                let url = db.url.clone();
                async move {
                    let mut c = PgConnection::connect(&url).await?;
                    let live: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM daemons \
                         WHERE stopped_at IS NULL AND heartbeat_at > started_at",
                    )
                    .fetch_one(&mut c)
                    .await?;
                    c.close().await?;
                    Ok(live >= n as i64)
                }
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (machine_before, t) = (machine_busy(), Instant::now());
        let (mut lat, mut low) = (Vec::new(), Vec::new());
        for i in 0..samples {
            // A random moment: anywhere in the daemons' queue and heartbeat ticks.
            tokio::time::sleep(Duration::from_millis(rand::random_range(20..400))).await;
            let url = format!("https://media.example.com/pickup/{i}.mp4");
            // The commit lies between these two: the latency is given from the first (an
            // upper bound, counting the INSERT's own round trip) and from the second (a
            // lower bound: on a busy machine the daemon may POST before this process runs
            // again to read the clock).
            let sent = SystemTime::now();
            sqlx::query("INSERT INTO imports (url) VALUES ($1)")
                .bind(&url)
                .execute(&mut c)
                .await?;
            let committed = SystemTime::now();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let seen = sim
                    .stats()
                    .post_times
                    .iter()
                    .find(|(u, _)| *u == url)
                    .map(|(_, t)| *t);
                if let Some(t) = seen {
                    lat.push(t.duration_since(sent).unwrap_or_default());
                    low.push(t.duration_since(committed).unwrap_or_default());
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("row {i} not picked up in 5 s").into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Idle again before the next sample: the row's job done and recorded.
            wait_finished(
                &mut c,
                i as i64 + 1,
                Duration::from_millis(5),
                Duration::from_secs(5),
            )
            .await?;
        }
        let busy = busy_since(machine_before, t);
        for d in daemons {
            d.stop()?;
        }
        if verbose() {
            let all: Vec<String> = lat
                .iter()
                .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
                .collect();
            println!("pickup: {n} daemon(s), ms: {}", all.join(" "));
        }
        lat.sort();
        low.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "pickup: {samples} inserts at random moments into {n} idle daemon(s) (queue_interval 250ms default, LISTEN/NOTIFY): \
             from sending the INSERT: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; from its return: p50 {:.1} ms, p99 {:.1} ms; {busy}",
            ms(q(&lat, 0.5)),
            ms(q(&lat, 0.99)),
            ms(lat[lat.len() - 1]),
            ms(q(&low, 0.5)),
            ms(q(&low, 0.99)),
        );
        sim.shutdown().await;
    }
    Ok(())
}

/// 3 daemons sharing a tight account: drain time over the ideal the account's limits allow.
async fn utilisation() -> R<()> {
    let (limit, window, slots, rows) = (60u64, Duration::from_secs(10), 2u32, 150i64);
    let job = Duration::from_millis(200);
    // The config's guess: looser than the account (the server's headers must rule), and
    // exactly the account.
    for (label, guess) in [("config 1000/10s", 1000u64), ("config 60/10s", 60)] {
        let Some((db, store)) = database("bench_util").await? else {
            return Ok(());
        };
        store.close().await;
        let sim = Sim::start(SimConfig {
            api_key: KEY.into(),
            job_duration: job,
            import: BucketConfig::new(limit, window, slots),
            // Only the import bucket is tight: polls must not be what limits the drain.
            status: BucketConfig::new(100_000, window, 0),
            ..SimConfig::default()
        })
        .await?;
        let (_keep, dir) = workdir()?;
        let extra = format!(
            "[limits.import]\nrequests = {guess}\nwindow = \"10s\"\nconcurrent = {slots}\n\
             [limits.status]\nrequests = 100000\nwindow = \"10s\"\n\
             [poll]\nstatus_interval = \"50ms\"\nqueue_interval = \"20ms\""
        );
        let cluster = Cluster {
            dir: &dir,
            url: &db.url,
            base_url: sim.base_url(),
            request_timeout: "1s",
            lease: "3s",
            extra: &extra,
        };
        cluster.migrate()?;
        let mut c = PgConnection::connect(&db.url).await?;
        insert_rows(&mut c, rows, "util").await?;
        let machine_before = machine_busy();
        let t = Instant::now();
        let mut daemons = Vec::new();
        for i in 0..3 {
            daemons.push(cluster.start(&format!("d{i}"))?);
        }
        wait_finished(
            &mut c,
            rows,
            Duration::from_millis(20),
            Duration::from_secs(300),
        )
        .await?;
        let took = t.elapsed().as_secs_f64();
        let drained = SystemTime::now();
        let busy = busy_since(machine_before, t);
        for d in daemons {
            d.stop()?;
        }
        let stats = sim.stats();
        let ideal = window.as_secs_f64() * rows as f64 / limit as f64;
        let first = stats.post_times.first().map(|p| p.1);
        let last = stats.post_times.last().map(|p| p.1);
        let span = match (first, last) {
            (Some(f), Some(l)) => l.duration_since(f)?.as_secs_f64(),
            _ => 0.0,
        };
        // From the first POST: the drain's end against the earliest end the account allows
        // given where that POST fell in the sim's aligned windows.
        let (from_first, tight) = match first {
            Some(f) => (
                drained.duration_since(f)?.as_secs_f64(),
                tightest(f, rows as u64, limit, window, slots, job),
            ),
            None => (0.0, 1.0),
        };
        if verbose()
            && let Some(first) = first
        {
            let offs: Vec<String> = stats
                .post_times
                .iter()
                .map(|(_, t)| {
                    format!(
                        "{:.2}",
                        t.duration_since(first).unwrap_or_default().as_secs_f64()
                    )
                })
                .collect();
            println!("utilisation: POST offsets (s): {}", offs.join(" "));
        }
        println!(
            "utilisation: {rows} rows, 3 daemons, account {limit}/{window:?} and {slots} slots, 200 ms jobs, {label}: \
             drained in {took:.2}s vs ideal {ideal:.2}s: ratio {:.3}; first->last POST {span:.2}s \
             ({from_first:.2}s from the first POST to drained vs {tight:.2}s the account allows from there: ratio {:.3}); {} POSTs for {rows} rows; 429s: {} rate, {} concurrency; \
             at most {} jobs at once; {busy}",
            took / ideal,
            from_first / tight,
            stats.import_posts,
            stats.rate_limited,
            stats.concurrency_limited,
            stats.max_concurrent_imports
        );
        sim.shutdown().await;
    }
    Ok(())
}

/// The earliest end of `rows` jobs of `job` each, the first POST at `first`, inside the
/// account: `limit` POSTs per `window` (windows aligned to multiples of it in unix time, as
/// the sim's), `slots` jobs at once. Seconds from `first`.
fn tightest(
    first: SystemTime,
    rows: u64,
    limit: u64,
    window: Duration,
    slots: u32,
    job: Duration,
) -> f64 {
    let t0 = first
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let w = window.as_secs_f64();
    let mut free = vec![t0; slots as usize];
    let (mut win, mut used, mut end) = ((t0 / w).floor(), 0u64, t0);
    for _ in 0..rows {
        free.sort_by(f64::total_cmp);
        // Never before the window we have moved on to (the other slot may be free earlier).
        let mut at = free[0].max(win * w);
        if (at / w).floor() > win {
            win = (at / w).floor();
            used = 0;
        }
        if used == limit {
            win += 1.0;
            used = 0;
            at = at.max(win * w);
        }
        used += 1;
        free[0] = at + job.as_secs_f64();
        end = end.max(free[0]);
    }
    end - t0
}

/// kill -9 of the daemon running both of the account's jobs: time from the kill to the
/// first status poll of an adopted job, by the other daemon (idle until then: it holds
/// nothing, so every status call after the kill is its poll of an adopted job).
async fn failover() -> R<()> {
    for (lease, timeout, runs) in [("3s", "1s", 5), ("10s", "5s", 3)] {
        let mut took = Vec::new();
        let (machine_before, t) = (machine_busy(), Instant::now());
        for _ in 0..runs {
            let Some((db, store)) = database("bench_failover").await? else {
                return Ok(());
            };
            store.close().await;
            let sim = Sim::start(SimConfig {
                api_key: KEY.into(),
                job_duration: Duration::from_secs(120),
                import: BucketConfig::new(1000, Duration::from_secs(60), 2),
                status: BucketConfig::new(100_000, Duration::from_secs(60), 0),
                ..SimConfig::default()
            })
            .await?;
            let (_keep, dir) = workdir()?;
            let cluster = Cluster {
                dir: &dir,
                url: &db.url,
                base_url: sim.base_url(),
                request_timeout: timeout,
                lease,
                extra: "[limits.import]\nrequests = 1000\nwindow = \"60s\"\nconcurrent = 2\n\
                        [limits.status]\nrequests = 100000\nwindow = \"60s\"",
            };
            cluster.migrate()?;
            let mut c = PgConnection::connect(&db.url).await?;
            insert_rows(&mut c, 2, "failover").await?;
            let a = cluster.start("a")?;
            wait_until(
                "daemon a runs both jobs",
                Duration::from_secs(20),
                Duration::from_millis(20),
                || {
                    let url = db.url.clone();
                    async move {
                        let mut c = PgConnection::connect(&url).await?;
                        let n: i64 = sqlx::query_scalar(
                            "SELECT count(*) FROM imports WHERE state = 'running'",
                        )
                        .fetch_one(&mut c)
                        .await?;
                        c.close().await?;
                        Ok(n == 2)
                    }
                },
            )
            .await?;
            let b = cluster.start("b")?;
            // b is up (registered, its loop turning) before a dies.
            wait_until(
                "daemon b registered",
                Duration::from_secs(15),
                Duration::from_millis(20),
                || {
                    let url = db.url.clone();
                    async move {
                        let mut c = PgConnection::connect(&url).await?;
                        let n: i64 = sqlx::query_scalar(
                            "SELECT count(*) FROM daemons WHERE heartbeat_at > started_at",
                        )
                        .fetch_one(&mut c)
                        .await?;
                        c.close().await?;
                        Ok(n >= 2)
                    }
                },
            )
            .await?;
            // A random moment in a's heartbeat period.
            tokio::time::sleep(Duration::from_millis(rand::random_range(200..1200))).await;
            a.signal("KILL")?;
            let killed = SystemTime::now();
            let mut a = a;
            if let Some(mut child) = a.child.take() {
                child.wait()?;
            }
            // a's last poll, if one was on the wire at the kill, has landed by now.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let before = sim.stats().status_requests;
            let deadline = Instant::now() + Duration::from_secs(60);
            let polled = loop {
                if sim.stats().status_requests > before {
                    break SystemTime::now();
                }
                if Instant::now() > deadline {
                    eprintln!("{}", b.log_text());
                    return Err("no poll of an adopted job within 60 s".into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            let adopted: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM imports i JOIN daemons d ON d.id = i.owner \
                 WHERE i.state = 'running' AND d.pid = $1",
            )
            .bind(b.pid() as i32)
            .fetch_one(&mut c)
            .await?;
            let posts = sim.stats().import_posts;
            b.stop()?;
            let d = polled.duration_since(killed)?;
            if verbose() {
                println!(
                    "failover: lease {lease}: {:.3}s; {adopted} rows now b's; {posts} POSTs",
                    d.as_secs_f64()
                );
            }
            if adopted != 2 || posts != 2 {
                println!(
                    "failover: WARNING: {adopted} of 2 running rows adopted by b, {posts} POSTs (2 expected)"
                );
            }
            took.push(d.as_secs_f64());
            sim.shutdown().await;
        }
        took.sort_by(f64::total_cmp);
        let all: Vec<String> = took.iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "failover: lease {lease} (request_timeout {timeout}), kill -9 of the daemon running both jobs -> \
             first poll of an adopted job by the other, {runs} runs: median {:.2}s, max {:.2}s (all: {} s); {}",
            q(&took, 0.5),
            took[took.len() - 1],
            all.join(", "),
            busy_since(machine_before, t)
        );
    }
    Ok(())
}
