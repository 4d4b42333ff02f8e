//! importlyd's benchmarks: the figures in BENCHMARKS.md come from here.
//!
//!     cargo bench --bench importlyd                 # all of them
//!     cargo bench --bench importlyd -- claims       # one: utilisation, throughput, claims,
//!                                                   #      pickup, idle, scale, ingest,
//!                                                   #      admin, export, looser, held, lag (issue 12)
//!
//! The daemon runs as the real release binary (`target/release/importlyd`), the simulator
//! in this process on loopback, the database in a temp dir. These report; they assert
//! nothing (timing belongs here, not in `cargo test`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use importlyd::importly::JobKind;
use importlyd::sim::{BucketConfig, JobTimes, Sim, SimConfig};
use importlyd::store::Store;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection};

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
        "importlyd benchmarks ({} cores)",
        std::thread::available_parallelism()?.get()
    );
    if want("utilisation") {
        utilisation().await?;
    }
    if want("throughput") {
        throughput().await?;
    }
    if want("claims") {
        claims().await?;
    }
    if want("pickup") {
        pickup().await?;
    }
    if want("idle") {
        idle().await?;
    }
    if want("scale") {
        scale().await?;
    }
    if want("ingest") {
        ingest().await?;
    }
    if want("admin") {
        admin().await?;
    }
    if want("export") {
        export().await?;
    }
    if want("looser") {
        looser().await?;
    }
    if want("held") {
        held().await?;
    }
    if want("lag") || want("occupancy") {
        lag().await?;
    }
    Ok(())
}

struct Env {
    /// Holds the temp dir (database, config, daemon.log) until the benchmark ends.
    _dir: tempfile::TempDir,
    db: PathBuf,
    config: PathBuf,
}

fn env(base_url: &str, extra: &str) -> R<Env> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    let config = dir.path().join("importlyd.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\npath = {:?}\n[api]\nbase_url = {:?}\n[log]\nlevel = {:?}\n{extra}\n",
            db.display().to_string(),
            base_url,
            // BENCH_LOG=debug (with BENCH_KEEP=1) to see what the daemon did.
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into())
        ),
    )?;
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("keeping {}", dir.path().display());
        let kept = dir.keep();
        return Ok(Env {
            _dir: tempfile::TempDir::new_in(&kept)?,
            db,
            config,
        });
    }
    Ok(Env {
        _dir: dir,
        db,
        config,
    })
}

fn daemon(e: &Env) -> R<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_importlyd"))
        .arg("--config")
        .arg(&e.config)
        .arg("run")
        .env("IMPORTLY_API_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            e.config.with_file_name("daemon.log"),
        )?))
        .spawn()?)
}

fn stop(mut child: Child) -> R<()> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    child.wait()?;
    Ok(())
}

async fn conn(db: &Path) -> R<SqliteConnection> {
    let opts = SqliteConnectOptions::from_str("sqlite://")?
        .filename(db)
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(5));
    Ok(SqliteConnection::connect_with(&opts).await?)
}

/// Inserts `n` rows in transactions of 1,000 with a recursive CTE.
async fn insert_rows(c: &mut SqliteConnection, n: u64, prefix: &str) -> R<()> {
    let mut done = 0;
    while done < n {
        let k = (n - done).min(1000);
        sqlx::query(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?1) \
             INSERT INTO imports (url) SELECT ?2 || (?3 + i) || '.mp4' FROM s",
        )
        .bind(k as i64)
        .bind(format!("https://media.example.com/{prefix}/"))
        .bind(done as i64)
        .execute(&mut *c)
        .await?;
        done += k;
    }
    Ok(())
}

async fn count(c: &mut SqliteConnection, state: &str) -> R<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM imports WHERE state = ?")
            .bind(state)
            .fetch_one(&mut *c)
            .await?,
    )
}

async fn wait_done(c: &mut SqliteConnection, n: i64, limit: Duration) -> R<Duration> {
    let start = Instant::now();
    loop {
        let done = count(c, "completed").await? + count(c, "failed").await?;
        if done >= n {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(format!("only {done}/{n} rows finished in {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_secs(pid: u32) -> R<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> R<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Drain time against a tight import limit, over the ideal the limits allow.
async fn utilisation() -> R<()> {
    let (limit, window, rows) = (20u64, Duration::from_secs(10), 60u64);
    let sim = Sim::start(SimConfig {
        api_key: KEY.into(),
        job_duration: Duration::from_millis(200),
        import: BucketConfig::new(limit, window, 2),
        // Only the import bucket is tight: polls must not be what limits the drain.
        status: BucketConfig::new(1000, window, 0),
        ..SimConfig::default()
    })
    .await?;
    let e = env(
        &sim.base_url(),
        "[limits.import]\nrequests = 1000\nwindow = \"10s\"\nconcurrent = 2\n\
         [limits.status]\nrequests = 1000\nwindow = \"10s\"\n\
         [poll]\nstatus_interval = \"50ms\"\nqueue_interval = \"20ms\"",
    )?;
    let store = Store::open_sqlite(&e.db).await?;
    store.close().await;
    let mut c = conn(&e.db).await?;
    insert_rows(&mut c, rows, "util").await?;
    let child = daemon(&e)?;
    let took = wait_done(&mut c, rows as i64, Duration::from_secs(120)).await?;
    stop(child)?;
    // Ideal: `rows` sends at `limit` per `window`; the first and last jobs add their own
    // duration. Windows are aligned, so the ideal is measured from the first POST.
    let stats = sim.stats();
    let first = stats
        .post_times
        .first()
        .map(|p| p.1)
        .unwrap_or(SystemTime::now());
    let last = stats
        .post_times
        .last()
        .map(|p| p.1)
        .unwrap_or(SystemTime::now());
    let span = last.duration_since(first)?;
    // Ideal from the limits: `rows` at `limit` per `window`.
    let ideal = window.as_secs_f64() * rows as f64 / limit as f64;
    if std::env::var_os("BENCH_VERBOSE").is_some() {
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
        "utilisation: {rows} rows, server limit {limit}/{window:?} (config 1000/10s), concurrency 2: \
         drained in {:.2}s vs ideal {:.2}s: ratio {:.3}; first->last POST {:.2}s; 429s {}",
        took.as_secs_f64(),
        ideal,
        took.as_secs_f64() / ideal,
        span.as_secs_f64(),
        stats.rate_limited + stats.concurrency_limited
    );
    sim.shutdown().await;
    Ok(())
}

/// Rows per second end to end with no limits and instant jobs.
async fn throughput() -> R<()> {
    let rows = 5_000u64;
    let sim = Sim::start(SimConfig {
        api_key: KEY.into(),
        job_duration: Duration::from_millis(0),
        import: BucketConfig::new(100_000_000, Duration::from_secs(3600), 32),
        status: BucketConfig::new(100_000_000, Duration::from_secs(3600), 0),
        ..SimConfig::default()
    })
    .await?;
    let e = env(
        &sim.base_url(),
        "[limits.import]\nrequests = 100000000\nconcurrent = 32\n\
         [limits.status]\nrequests = 100000000\n\
         [poll]\nstatus_interval = \"1ms\"\nqueue_interval = \"20ms\"",
    )?;
    let store = Store::open_sqlite(&e.db).await?;
    store.close().await;
    let mut c = conn(&e.db).await?;
    insert_rows(&mut c, rows, "tp").await?;
    let child = daemon(&e)?;
    let pid = child.id();
    let took = wait_done(&mut c, rows as i64, Duration::from_secs(300)).await?;
    let cpu = cpu_secs(pid)?;
    stop(child)?;
    println!(
        "throughput: {rows} rows, concurrency 32, instant jobs: {:.1}s, {:.0} rows/s; daemon CPU {:.1}s",
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        cpu
    );
    sim.shutdown().await;
    Ok(())
}

/// Claims per second from a table of 1,000,000 pending rows, store alone.
async fn claims() -> R<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("claims.db");
    let store = Store::open_sqlite(&db).await?;
    let mut c = conn(&db).await?;
    let t = Instant::now();
    insert_rows(&mut c, 1_000_000, "claims").await?;
    println!(
        "claims: inserted 1,000,000 rows in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    drop(c);
    for batch in [1u32, 64] {
        let t = Instant::now();
        let mut claimed = 0usize;
        while t.elapsed() < Duration::from_secs(5) {
            let now = SystemTime::now();
            claimed += store
                .claim_due(JobKind::Import, batch, now, u32::MAX)
                .await?
                .len();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "claims: batch {batch}: {claimed} rows in {secs:.1}s = {:.0} rows claimed/s",
            claimed as f64 / secs
        );
    }
    store.close().await;
    Ok(())
}

/// Idle daemon: time from an INSERT's commit in another process to the POST at the sim.
async fn pickup() -> R<()> {
    let sim = Sim::start(SimConfig {
        api_key: KEY.into(),
        job_duration: Duration::from_millis(10),
        import: BucketConfig::new(100_000, Duration::from_secs(3600), 32),
        // Polls must not be what holds the slots: each sample starts with the daemon idle.
        status: BucketConfig::new(100_000_000, Duration::from_secs(3600), 0),
        ..SimConfig::default()
    })
    .await?;
    let e = env(
        &sim.base_url(),
        "[limits.import]\nrequests = 100000\nconcurrent = 32\n\
         [limits.status]\nrequests = 100000000\n[poll]\nstatus_interval = \"20ms\"",
    )?;
    let store = Store::open_sqlite(&e.db).await?;
    store.close().await;
    let child = daemon(&e)?;
    let mut c = conn(&e.db).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut lat = Vec::new();
    for i in 0..100 {
        let url = format!("https://media.example.com/pickup/{i}.mp4");
        sqlx::query("INSERT INTO imports (url) VALUES (?)")
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
                if std::env::var_os("BENCH_VERBOSE").is_some() && i < 12 {
                    let ms = |t: SystemTime| {
                        t.duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis()
                    };
                    println!(
                        "pickup: row {i}: committed {} POST {}",
                        ms(committed),
                        ms(t)
                    );
                }
                lat.push(t.duration_since(committed).unwrap_or_default());
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("row {i} not picked up in 5 s").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Let the daemon go idle again between samples: the row's job done, then a pause
        // that is not a multiple of the queue tick.
        wait_done(&mut c, i as i64 + 1, Duration::from_secs(5)).await?;
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    stop(child)?;
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "pickup: 100 inserts into an idle daemon (queue_interval 250ms default, file watch on): p50 {:?}, p99 {:?}, max {:?}",
        p(0.5),
        p(0.99),
        lat[lat.len() - 1]
    );
    sim.shutdown().await;
    Ok(())
}

/// CPU of an idle daemon over 60 s.
async fn idle() -> R<()> {
    let sim = Sim::start(SimConfig {
        api_key: KEY.into(),
        ..SimConfig::default()
    })
    .await?;
    let e = env(&sim.base_url(), "")?;
    let store = Store::open_sqlite(&e.db).await?;
    store.close().await;
    let child = daemon(&e)?;
    let pid = child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_secs(pid)?;
    let secs = 60.0;
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let used = cpu_secs(pid)? - before;
    let (rss, _) = rss_mib(pid)?;
    stop(child)?;
    println!(
        "idle: {used:.2} CPU-s over {secs:.0}s = {:.2}% of one core (100 Hz tick resolution); RSS {rss:.1} MiB",
        used / secs * 100.0
    );
    sim.shutdown().await;
    Ok(())
}

/// Start-up and memory with 1,000,000 pending rows; RSS while 100,000 rows complete.
async fn scale() -> R<()> {
    let sim = Sim::start(SimConfig {
        api_key: KEY.into(),
        job_duration: Duration::from_millis(0),
        import: BucketConfig::new(100_000_000, Duration::from_secs(3600), 32),
        status: BucketConfig::new(100_000_000, Duration::from_secs(3600), 0),
        ..SimConfig::default()
    })
    .await?;
    let e = env(
        &sim.base_url(),
        "[limits.import]\nrequests = 100000000\nconcurrent = 32\n\
         [limits.status]\nrequests = 100000000\n[poll]\nstatus_interval = \"1ms\"",
    )?;
    let store = Store::open_sqlite(&e.db).await?;
    store.close().await;
    let mut c = conn(&e.db).await?;
    insert_rows(&mut c, 1_000_000, "scale").await?;
    let t = Instant::now();
    let child = daemon(&e)?;
    let pid = child.id();
    // Started = the first POST reached the simulator.
    while sim.stats().import_posts == 0 {
        if t.elapsed() > Duration::from_secs(30) {
            return Err("no POST within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let start_up = t.elapsed();
    let mut samples = Vec::new();
    loop {
        let done = count(&mut c, "completed").await?;
        let (rss, hwm) = rss_mib(pid)?;
        samples.push((done, rss, hwm));
        if done >= 100_000 || t.elapsed() > Duration::from_secs(600) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop(child)?;
    println!(
        "scale: 1,000,000 pending rows: first POST after {:.0} ms",
        start_up.as_secs_f64() * 1000.0
    );
    for (done, rss, hwm) in samples.iter().step_by((samples.len() / 8).max(1)) {
        println!("scale:   {done:>7} completed: RSS {rss:.1} MiB (peak {hwm:.1} MiB)");
    }
    if let Some((done, rss, hwm)) = samples.last() {
        println!("scale:   {done:>7} completed: RSS {rss:.1} MiB (peak {hwm:.1} MiB)");
    }
    sim.shutdown().await;
    Ok(())
}

/// INSERT rate of a separate writer while the daemon runs at full speed.
async fn ingest() -> R<()> {
    let sim = Sim::start(SimConfig {
        api_key: KEY.into(),
        job_duration: Duration::from_millis(0),
        import: BucketConfig::new(100_000_000, Duration::from_secs(3600), 32),
        status: BucketConfig::new(100_000_000, Duration::from_secs(3600), 0),
        ..SimConfig::default()
    })
    .await?;
    let e = env(
        &sim.base_url(),
        "[limits.import]\nrequests = 100000000\nconcurrent = 32\n\
         [limits.status]\nrequests = 100000000\n[poll]\nstatus_interval = \"1ms\"",
    )?;
    let store = Store::open_sqlite(&e.db).await?;
    store.close().await;
    let mut c = conn(&e.db).await?;
    insert_rows(&mut c, 2_000, "warm").await?;
    let child = daemon(&e)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The writer: its own pool, busy timeout 5 s, transactions of 1,000 rows.
    let opts = SqliteConnectOptions::from_str("sqlite://")?
        .filename(&e.db)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    let (mut rows, mut errors) = (0u64, 0u64);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let res = sqlx::query(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1000) \
             INSERT INTO imports (url) SELECT 'https://media.example.com/ingest/' || ?1 || '-' || i || '.mp4' FROM s",
        )
        .bind(rows as i64)
        .execute(&pool)
        .await;
        match res {
            Ok(_) => rows += 1000,
            Err(err) => {
                errors += 1;
                eprintln!("ingest error: {err}");
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let completed = count(&mut c, "completed").await?;
    stop(child)?;
    println!(
        "ingest: {rows} rows in {secs:.1}s = {:.0} rows/s while the daemon completed {completed}; {errors} insert errors",
        rows as f64 / secs
    );
    sim.shutdown().await;
    Ok(())
}

/// The admin API at 1,000,000 rows (600,000 completed, 200,000 failed, 200,000 pending; the
/// daemon paused, so what is timed is the answer, not the queue moving): `GET
/// /api/v1/status` (goal < 200 ms), a deep page of failed rows, a search.
async fn admin() -> R<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let e = env(
        "http://127.0.0.1:9",
        &format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"),
    )?;
    let store = Store::open_sqlite(&e.db).await?;
    store.close().await;
    let mut c = conn(&e.db).await?;
    let mut done: i64 = 0;
    while done < 1_000_000 {
        sqlx::query(
            "WITH RECURSIVE s(i) AS (SELECT ?1 + 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?1 + 1000) \
             INSERT INTO imports (url, state, attempts, credits_used, last_error, \
                                  importly_job_id, completed_at) \
             SELECT 'https://media.example.com/admin/' || i || '.mp4', \
                    CASE WHEN i % 10 < 6 THEN 'completed' WHEN i % 10 < 8 THEN 'failed' \
                         ELSE 'pending' END, \
                    1, CASE WHEN i % 10 < 6 THEN 3 END, \
                    CASE WHEN i % 10 IN (6, 7) THEN 'Unsupported media' END, 'job-' || i, \
                    CASE WHEN i % 10 < 6 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END \
             FROM s",
        )
        .bind(done)
        .execute(&mut c)
        .await?;
        done += 1000;
    }
    sqlx::query(
        "INSERT INTO pauses (scope, reason, http_status, since, next_probe) \
         VALUES ('all', 'bench', 402, '2026-01-01T00:00:00.000Z', '2099-01-01T00:00:00.000Z')",
    )
    .execute(&mut c)
    .await?;
    let child = daemon(&e)?;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        if t.elapsed() > Duration::from_secs(30) {
            return Err("admin listener not up within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (name, path) in [
        ("status", "/api/v1/status".to_owned()),
        (
            "rows, failed, page at id 900,000",
            "/api/v1/rows?state=failed&after=900000&limit=100".to_owned(),
        ),
        ("rows, all, first page", "/api/v1/rows?limit=100".to_owned()),
        (
            "rows, search q=999990",
            "/api/v1/rows?q=999990&limit=100".to_owned(),
        ),
    ] {
        let mut ms = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            let r = http.get(format!("{base}{path}")).send().await?;
            if !r.status().is_success() {
                return Err(format!("{path}: {}", r.status()).into());
            }
            r.bytes().await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "admin: {name}, 1,000,000 rows: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms[ms.len() / 2],
            ms[ms.len() * 99 / 100],
            ms[ms.len() - 1]
        );
    }
    stop(child)?;
    Ok(())
}

/// `[webhook]` on: the receiver on a free loopback port, reached directly by the simulator.
fn webhook_toml() -> R<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!(
        "[webhook]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}/importly\"\n"
    ))
}

fn mode(hooks: bool) -> &'static str {
    if hooks { "webhooks" } else { "polling" }
}

/// Issue 12: a server looser than the config (30 per 3 s against the default 240/h), 2
/// slots, 100 ms jobs, webhooks on: drain time over the ideal from the server's limits.
async fn looser() -> R<()> {
    let (limit, window, rows) = (30u64, Duration::from_secs(3), 150u64);
    let sim = Sim::start(SimConfig {
        api_key: KEY.into(),
        job_duration: Duration::from_millis(100),
        import: BucketConfig::new(limit, window, 2),
        status: BucketConfig::new(3000, window, 0),
        ..SimConfig::default()
    })
    .await?;
    let e = env(&sim.base_url(), &webhook_toml()?)?;
    let store = Store::open_sqlite(&e.db).await?;
    store.close().await;
    let mut c = conn(&e.db).await?;
    insert_rows(&mut c, rows, "looser").await?;
    let child = daemon(&e)?;
    let took = wait_done(&mut c, rows as i64, Duration::from_secs(300)).await?;
    stop(child)?;
    let stats = sim.stats();
    // 2 slots of 100 ms jobs could start 20 a second: the server's 10 a second rules.
    let ideal = window.as_secs_f64() * rows as f64 / limit as f64;
    println!(
        "looser: {rows} rows, server {limit}/{window:?}, config 240/1h (default), 2 slots, 100 ms jobs, webhooks: \
         drained in {:.2}s vs ideal {ideal:.2}s: ratio {:.3}; 429s {}; status calls {}",
        took.as_secs_f64(),
        took.as_secs_f64() / ideal,
        stats.rate_limited + stats.concurrency_limited,
        stats.status_requests
    );
    sim.shutdown().await;
    Ok(())
}

/// Issue 12: one of the account's two slots held by another program for the whole run;
/// concurrency 429s per 100 rows (0.5 s jobs, default config), polling and webhooks.
async fn held() -> R<()> {
    let rows = 100u64;
    for hooks in [false, true] {
        let sim = Sim::start(SimConfig {
            api_key: KEY.into(),
            job_duration: Duration::from_millis(500),
            import: BucketConfig::new(100_000, Duration::from_secs(3600), 2),
            status: BucketConfig::new(60, Duration::from_secs(60), 0),
            ..SimConfig::default()
        })
        .await?;
        sim.hold_slots(1);
        let extra = if hooks {
            webhook_toml()?
        } else {
            String::new()
        };
        let e = env(&sim.base_url(), &extra)?;
        let store = Store::open_sqlite(&e.db).await?;
        store.close().await;
        let mut c = conn(&e.db).await?;
        insert_rows(&mut c, rows, "held").await?;
        let child = daemon(&e)?;
        let took = wait_done(&mut c, rows as i64, Duration::from_secs(900)).await?;
        stop(child)?;
        let stats = sim.stats();
        println!(
            "held: {rows} rows of 0.5 s jobs, 1 of 2 slots held elsewhere, default config, {}: \
             {} concurrency 429s ({:.1} per 100 rows) in {:.1}s",
            mode(hooks),
            stats.concurrency_limited,
            stats.concurrency_limited as f64 * 100.0 / rows as f64,
            took.as_secs_f64()
        );
        sim.shutdown().await;
    }
    Ok(())
}

/// For each job end (in order), the first later start not yet paired with an earlier end:
/// how long a freed slot stayed empty while rows were queued. Ends after the last start
/// (the queue ran dry) have none.
fn slot_lags(jobs: &[JobTimes]) -> Vec<f64> {
    let mut ends: Vec<u64> = jobs.iter().map(|j| j.ends_ms).collect();
    let mut starts: Vec<u64> = jobs.iter().map(|j| j.accepted_ms).collect();
    ends.sort_unstable();
    starts.sort_unstable();
    let mut next = 0;
    let mut lags = Vec::new();
    for end in ends {
        while next < starts.len() && starts[next] < end {
            next += 1;
        }
        let Some(start) = starts.get(next) else { break };
        lags.push((start - end) as f64 / 1000.0);
        next += 1;
    }
    lags
}

/// Share of the slot time in use between the first and the last start (while rows were
/// queued), for `slots` slots.
fn occupancy(jobs: &[JobTimes], slots: u64) -> f64 {
    let first = jobs.iter().map(|j| j.accepted_ms).min().unwrap_or(0);
    let last = jobs.iter().map(|j| j.accepted_ms).max().unwrap_or(0);
    let busy: u64 = jobs
        .iter()
        .map(|j| j.ends_ms.min(last).saturating_sub(j.accepted_ms.max(first)))
        .sum();
    busy as f64 / ((last - first).max(1) * slots) as f64
}

/// Issue 12: completion-detect lag (a job's end at the simulator to our next submit into
/// its slot) and slot occupancy: 40 rows of 2-8 s jobs (random), 2 slots, default config
/// (status_interval 1 s; a status budget of 60 a minute), polling and webhooks.
async fn lag() -> R<()> {
    let rows = 40u64;
    for hooks in [false, true] {
        let sim = Sim::start(SimConfig {
            api_key: KEY.into(),
            job_duration: Duration::from_secs(2),
            job_duration_max: Some(Duration::from_secs(8)),
            import: BucketConfig::new(1000, Duration::from_secs(10), 2),
            status: BucketConfig::new(60, Duration::from_secs(60), 0),
            seed: 12,
            ..SimConfig::default()
        })
        .await?;
        let extra = if hooks {
            webhook_toml()?
        } else {
            String::new()
        };
        let e = env(&sim.base_url(), &extra)?;
        let store = Store::open_sqlite(&e.db).await?;
        store.close().await;
        let mut c = conn(&e.db).await?;
        insert_rows(&mut c, rows, "lag").await?;
        let child = daemon(&e)?;
        let took = wait_done(&mut c, rows as i64, Duration::from_secs(900)).await?;
        stop(child)?;
        let stats = sim.stats();
        let mut lags = slot_lags(&stats.import_jobs);
        lags.sort_by(f64::total_cmp);
        let mean = lags.iter().sum::<f64>() / lags.len().max(1) as f64;
        let q = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            let all: Vec<String> = lags.iter().map(|l| format!("{l:.3}")).collect();
            println!("lag: {}: {}", mode(hooks), all.join(" "));
        }
        println!(
            "lag: {rows} rows of 2-8 s jobs, 2 slots, default config, {}: completion-detect lag over {} slot hand-overs: \
             mean {:.3}s, p50 {:.3}s, p95 {:.3}s, max {:.3}s; occupancy {:.2}%; drained in {:.1}s; {} status calls; 429s {}",
            mode(hooks),
            lags.len(),
            mean,
            q(0.5),
            q(0.95),
            lags.last().copied().unwrap_or(0.0),
            occupancy(&stats.import_jobs, 2) * 100.0,
            took.as_secs_f64(),
            stats.status_requests,
            stats.rate_limited + stats.concurrency_limited
        );
        sim.shutdown().await;
    }
    Ok(())
}

/// Issue 15: `importlyd export` of 1,000,000 finished rows, CSV and JSON lines, to
/// /dev/null: rows per second and the exporting process's peak RSS (VmHWM, read every 20 ms
/// until it exits), which must not grow with the table.
async fn export() -> R<()> {
    let e = env("http://127.0.0.1:9", "")?;
    let store = Store::open_sqlite(&e.db).await?;
    store.close().await;
    let mut c = conn(&e.db).await?;
    let rows: i64 = 1_000_000;
    let mut done: i64 = 0;
    while done < rows {
        sqlx::query(
            "WITH RECURSIVE s(i) AS (SELECT ?1 + 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?1 + 1000) \
             INSERT INTO imports (url, external_id, state, attempts, importly_job_id, media_url, \
                                  credits_used, last_error, completed_at) \
             SELECT 'https://media.example.com/export/' || i || '.mp4', 'batch-1-' || i, \
                    CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'completed' END, 1, 'imp_' || i, \
                    CASE WHEN i % 10 = 0 THEN NULL ELSE 'https://cdn.example.com/m/' || i || '.mp4' END, \
                    CASE WHEN i % 10 = 0 THEN NULL ELSE 3 END, \
                    CASE WHEN i % 10 = 0 THEN 'rejected by Importly (HTTP 400): \"bad\", url' END, \
                    strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             FROM s",
        )
        .bind(done)
        .execute(&mut c)
        .await?;
        done += 1000;
    }
    for format in ["csv", "jsonl"] {
        let t = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_importlyd"))
            .arg("--config")
            .arg(&e.config)
            .args(["export", "--format", format])
            .stdout(Stdio::from(std::fs::File::create("/dev/null")?))
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = child.id();
        let mut peak = 0.0f64;
        let status = loop {
            if let Ok((_, hwm)) = rss_mib(pid) {
                peak = peak.max(hwm);
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = t.elapsed();
        if !status.success() {
            return Err(format!("export --format {format}: {status}").into());
        }
        println!(
            "export: {rows} rows as {format}: {:.1}s, {:.0} rows/s; peak RSS {peak:.1} MiB",
            took.as_secs_f64(),
            rows as f64 / took.as_secs_f64()
        );
    }
    Ok(())
}
