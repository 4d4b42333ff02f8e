//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver +
//! fantoccini), against the real `importlyd` binary and the in-process simulator.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`; `CHROMIUM` and `CHROMEDRIVER` override the paths). Without them
//! the tests print a SKIP line and pass, except under `CI=true`, where they fail.
//!
//! `IMPORTLYD_UPDATE_SCREENSHOT=1` makes the overview test write `docs/dashboard.png` (the
//! README's picture); otherwise the screenshot goes to the test's temp dir.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use importlyd::sim::Sim;
use serde_json::{Value, json};

/// The operator token the tests configure (the dashboard logs in with it as Basic auth).
const TOKEN: &str = "dash-token-0123456789";

/// Everything one browser test runs against: simulator, daemon with the admin listener,
/// chromedriver and a Chromium session.
struct Rig {
    sim: Sim,
    dir: tempfile::TempDir,
    db: Db,
    daemon: Proc,
    admin: u16,
    browser: Browser,
}

struct Browser {
    client: Client,
    /// chromedriver, leader of its own process group (Chromium runs in that group too).
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed before `close` leaves chromedriver and Chromium behind: end the
        // group this test started (by its id, nothing else).
        if let Some(pid) = self.driver.id()
            && let Ok(pid) = i32::try_from(pid)
        {
            // SAFETY: kill(2) with a negative pid signals only that process group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

fn tool(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Chromium and chromedriver, or `None` (after a loud SKIP line) outside CI when missing.
fn browser_tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = tool("CHROMIUM", "/usr/bin/chromium");
    let driver = tool("CHROMEDRIVER", "/usr/bin/chromedriver");
    if chromium.exists() && driver.exists() {
        return Some((chromium, driver));
    }
    let what = format!(
        "{test}: needs {} and {} (apt-get install chromium chromium-driver)",
        chromium.display(),
        driver.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and the browser is missing: {what}"
    );
    eprintln!("\n======== SKIP {what} ========\n");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

async fn start_browser(chromium: &Path, driver_bin: &Path) -> Browser {
    let port = free_port();
    let mut cmd = tokio::process::Command::new(driver_bin);
    cmd.arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let driver = cmd.spawn().expect("chromedriver starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until("chromedriver to answer /status", secs(30), || {
        let req = http.get(format!("{base}/status")).send();
        async move { req.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    let profile = tempfile::tempdir().expect("profile dir");
    // No internet here: without the background-networking flags Chromium keeps dialling
    // out (component updates, sync, QUIC) and hangs on the refused connections.
    let args = vec![
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--window-size=1280,1000".to_owned(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    let caps = json!({
        "goog:chromeOptions": { "binary": chromium.display().to_string(), "args": args }
    });
    let Value::Object(caps) = caps else {
        unreachable!("a JSON object literal")
    };
    let client = tokio::time::timeout(
        secs(60),
        ClientBuilder::rustls()
            .expect("TLS roots")
            .capabilities(caps)
            .connect(&base),
    )
    .await
    .expect("a Chromium session within 60 s")
    .expect("a Chromium session");
    Browser {
        client,
        driver,
        _profile: profile,
    }
}

impl Rig {
    /// The simulator (`sim_key` its accepted key: another than the daemon's makes a 401),
    /// a daemon with the admin listener and a token, and a browser. `None`: skipped.
    async fn start(test: &str, sim_key: &str) -> Option<Rig> {
        let (chromium, driver) = browser_tools(test)?;
        let sim = start_sim(sim_config()).await;
        sim.set_api_key(sim_key);
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::create(&dir.path().join("importlyd.db")).await;
        let admin = free_port();
        let mut cfg = daemon_config(dir.path(), &sim);
        cfg.admin.listen = format!("127.0.0.1:{admin}");
        let token_file = dir.path().join("admin-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        cfg.admin.token_file = token_file.display().to_string();
        let config = write_config(dir.path(), &cfg);
        let daemon = Proc::start(&config, Some(KEY), test);
        let http = reqwest::Client::new();
        let healthz = format!("http://127.0.0.1:{admin}/healthz");
        // Any answer will do (a paused daemon's /healthz says 503): the listener is up.
        wait_until("the admin listener", secs(20), || {
            let req = http.get(&healthz).send();
            async move { req.await.is_ok() }
        })
        .await;
        let browser = start_browser(&chromium, &driver).await;
        Some(Rig {
            sim,
            dir,
            db,
            daemon,
            admin,
            browser,
        })
    }

    fn url(&self, name: &str) -> String {
        format!("https://media.example/{name}.mp4")
    }

    /// The dashboard, logged in with Basic auth (any user, the token as password).
    async fn open(&self, fragment: &str) {
        let url = format!("http://ops:{TOKEN}@127.0.0.1:{}/{fragment}", self.admin);
        self.browser
            .client
            .goto(&url)
            .await
            .expect("open dashboard");
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn js(&self, script: &str) -> Value {
        self.browser
            .client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed ({e}): {script}"))
    }

    /// Polls `script` until it returns `true`; panics naming `what` (and the page's live
    /// line) after `timeout`.
    async fn wait_js(&self, what: &str, timeout: Duration, script: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                let live = self
                    .js("return document.getElementById('live').textContent")
                    .await;
                panic!("timed out after {timeout:?} waiting for {what} (page says {live})");
            }
            tokio::time::sleep(ms(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.browser
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Answers the confirmation dialog an action opened with "Confirm".
    async fn confirm(&self) {
        self.wait_js(
            "the confirmation dialog",
            secs(5),
            "return document.getElementById('confirm').open",
        )
        .await;
        self.click("#confirm-yes").await;
    }

    /// The page and its assets: behind the token, with their content types and the CSP
    /// that forbids inline script and anything from elsewhere.
    async fn check_served_assets(&self) {
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{}", self.admin);
        let anonymous = http.get(format!("{base}/")).send().await.expect("GET /");
        assert_eq!(anonymous.status(), 401, "the dashboard needs the token");
        for (path, kind) in [
            ("/", "text/html"),
            ("/assets/app.js", "text/javascript"),
            ("/assets/app.css", "text/css"),
            ("/assets/favicon.svg", "image/svg+xml"),
            ("/ui/overview.json", "application/json"),
        ] {
            let r = http
                .get(format!("{base}{path}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("GET an asset");
            assert_eq!(r.status(), 200, "{path}");
            let header = |n: &str| {
                r.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            assert!(
                header("content-type").starts_with(kind),
                "{path}: {}",
                header("content-type")
            );
            let csp = header("content-security-policy");
            assert!(
                csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
                "{path}: CSP {csp:?}"
            );
            assert!(!csp.contains("unsafe-inline"), "{path}: CSP {csp:?}");
        }
    }

    async fn finish(mut self) {
        if let Err(e) = self.browser.client.clone().close().await {
            eprintln!("closing the browser session: {e}");
        }
        let status = self.daemon.terminate(secs(15)).await;
        assert!(status.success(), "daemon exit: {status:?}");
        self.sim.shutdown().await;
        drop(self.dir);
    }
}

/// The overview shows the counts per state and a failed row's URL and reason; Retry on that
/// row, confirmed in the dialog, makes the simulator see a second POST for its URL. The
/// page is also usable at 360 px (no horizontal scrolling) and a screenshot is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_shows_counts_and_a_failure_and_retry_reposts_it() {
    let Some(rig) = Rig::start("overview_retry", KEY).await else {
        return;
    };
    rig.check_served_assets().await;
    let good: Vec<String> = (1..=6).map(|i| rig.url(&format!("ok-{i}"))).collect();
    for u in &good {
        rig.db.insert(u).await;
    }
    let bad = rig.url("bad/broken-link");
    let bad_id = rig.db.insert(&bad).await;
    let missing = rig.url("notfound/gone");
    rig.db.insert(&missing).await;
    wait_until("6 completed and 2 failed", secs(30), || async {
        rig.db.count("completed").await == 6 && rig.db.count("failed").await == 2
    })
    .await;
    let reason = rig.db.row(bad_id).await.last_error.expect("a reason");
    assert_eq!(rig.sim.stats().import_posts_by_url.get(&bad), Some(&1));

    rig.open("").await;
    rig.wait_js(
        "the counts",
        secs(15),
        "return document.querySelector('#count-completed')?.dataset.count === '6' \
         && document.querySelector('#count-failed')?.dataset.count === '2'",
    )
    .await;
    let item = format!("#latest-failures li[data-row='{bad_id}']");
    rig.wait_js(
        "the failed row in the latest failures",
        secs(15),
        &format!("return !!document.querySelector(\"{item}\")"),
    )
    .await;
    let text = rig
        .js(&format!(
            "return document.querySelector(\"{item}\").textContent"
        ))
        .await;
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains(&bad), "URL shown: {text}");
    assert!(text.contains(&reason), "reason {reason:?} shown: {text}");

    // The screenshot (the README's picture), once the chart and budgets are drawn.
    rig.wait_js(
        "the chart and the budgets",
        secs(15),
        "return !!document.querySelector('#chart svg') \
         && document.querySelectorAll('#buckets tbody tr').length === 3",
    )
    .await;
    let png = rig.browser.client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    std::fs::write(rig.dir.path().join("dashboard.png"), &png).expect("save screenshot");
    if std::env::var("IMPORTLYD_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).expect("docs dir");
        std::fs::write(docs.join("dashboard.png"), &png).expect("write docs/dashboard.png");
    }

    // Retry on the failed row, confirmed: a second POST for its URL.
    rig.click(&format!("{item} button.retry")).await;
    rig.confirm().await;
    wait_until("a second POST of the retried URL", secs(20), || async {
        rig.sim.stats().import_posts_by_url.get(&bad).copied() == Some(2)
    })
    .await;
    assert_eq!(
        rig.sim.stats().import_posts_by_url.get(&missing),
        Some(&1),
        "the other failure was left alone"
    );

    // 360 px wide: nothing wider than the viewport.
    rig.browser
        .client
        .set_window_size(360, 800)
        .await
        .expect("resize");
    rig.wait_js(
        "no horizontal scrolling at 360 px",
        secs(5),
        "return document.documentElement.scrollWidth <= window.innerWidth",
    )
    .await;
    rig.finish().await;
}

/// A 401 pauses the daemon; the dashboard shows the pause with its reason; once the key is
/// fixed at the server, Resume (confirmed) lifts it and the row completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_lifts_a_401_pause_once_the_key_is_fixed() {
    let Some(rig) = Rig::start("resume", "another-key").await else {
        return;
    };
    let url = rig.url("after-pause");
    let id = rig.db.insert(&url).await;
    wait_until("the 401 pause", secs(20), || async {
        !rig.db.pauses().await.is_empty()
    })
    .await;
    rig.open("").await;
    rig.wait_js(
        "the pause banner",
        secs(15),
        "const b = document.getElementById('pause'); \
         return !b.hidden && document.getElementById('pause-reason').textContent.length > 0",
    )
    .await;
    // The probe interval is an hour: only Resume lifts this pause within the test.
    rig.sim.set_api_key(KEY);
    rig.click("#resume").await;
    rig.confirm().await;
    wait_until("the row to complete after Resume", secs(20), || async {
        rig.db.row(id).await.state == "completed"
    })
    .await;
    assert_eq!(rig.sim.stats().accepted_by_url.get(&url), Some(&1));
    rig.wait_js(
        "the pause banner to go",
        secs(15),
        "return document.getElementById('pause').hidden",
    )
    .await;
    rig.finish().await;
}

/// The budgets' reset countdown moves between polls: it ticks every second by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reset_countdown_moves() {
    let Some(rig) = Rig::start("countdown", KEY).await else {
        return;
    };
    rig.open("").await;
    rig.wait_js(
        "the import bucket's countdown",
        secs(15),
        "const c = document.getElementById('reset-import'); \
         return !!c && /\\d/.test(c.textContent)",
    )
    .await;
    // Between two polls (the live line names the last one), the text still changes: the
    // countdown ticks on its own, not only when fresh data is drawn.
    let read = "return [document.getElementById('live').textContent, \
                document.getElementById('reset-import').textContent]";
    let deadline = Instant::now() + secs(15);
    let mut last = rig.js(read).await;
    loop {
        tokio::time::sleep(ms(100)).await;
        let now = rig.js(read).await;
        if now[0] == last[0] && now[1] != last[1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the countdown did not move between polls: {last} then {now}"
        );
        last = now;
    }
    rig.finish().await;
}

/// The other views: rows filtered by state and searched; a row's fields, attempt timeline
/// and ticket; failures grouped by reason, "retry this group" (confirmed) re-posting exactly
/// that group; the audit log showing the dashboard's actions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_row_failures_and_audit_views() {
    let Some(rig) = Rig::start("views", KEY).await else {
        return;
    };
    for i in 1..=3 {
        rig.db.insert(&rig.url(&format!("fine-{i}"))).await;
    }
    let bad = [rig.url("bad/first"), rig.url("bad/second")];
    let bad_id = rig.db.insert(&bad[0]).await;
    rig.db.insert(&bad[1]).await;
    let missing = rig.url("notfound/elsewhere");
    rig.db.insert(&missing).await;
    wait_until("3 completed and 3 failed", secs(30), || async {
        rig.db.count("completed").await == 3 && rig.db.count("failed").await == 3
    })
    .await;
    let reason = rig.db.row(bad_id).await.last_error.expect("a reason");

    // Rows: pages of 50 by cursor (60 rows not due for years, so the daemon leaves them).
    let mut waiting = Vec::new();
    for i in 0..60 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO imports (url, next_attempt_at) VALUES (?, '2099-01-01T00:00:00.000Z') \
             RETURNING id",
        )
        .bind(rig.url(&format!("later-{i}")))
        .fetch_one(&rig.db.pool)
        .await
        .expect("insert a row not yet due");
        waiting.push(id);
    }
    let page_ids = "return [...document.querySelectorAll('#rows-table tbody tr[data-row]')]\
                    .map(r => Number(r.dataset.row))";
    rig.open("#rows?state=pending").await;
    rig.wait_js(
        "the first page",
        secs(15),
        "return document.querySelectorAll('#rows-table tbody tr[data-row]').length === 50",
    )
    .await;
    assert_eq!(rig.js(page_ids).await, json!(waiting[..50]));
    rig.click("#rows-next").await;
    rig.wait_js(
        "the second page",
        secs(15),
        "return document.querySelectorAll('#rows-table tbody tr[data-row]').length === 10",
    )
    .await;
    assert_eq!(rig.js(page_ids).await, json!(waiting[50..]));
    rig.click("#rows-prev").await;
    rig.wait_js(
        "the first page again",
        secs(15),
        "return document.querySelectorAll('#rows-table tbody tr[data-row]').length === 50",
    )
    .await;
    assert_eq!(rig.js(page_ids).await, json!(waiting[..50]));

    // Rows: by state, then by search text.
    rig.open("#rows?state=failed").await;
    rig.wait_js(
        "the 3 failed rows",
        secs(15),
        "return document.querySelectorAll('#rows-table tbody tr[data-row]').length === 3",
    )
    .await;
    rig.open("#rows?q=second").await;
    rig.wait_js(
        "the one row matching `second`",
        secs(15),
        "const r = document.querySelectorAll('#rows-table tbody tr[data-row]'); \
         return r.length === 1 && r[0].textContent.includes('bad/second')",
    )
    .await;

    // One row: its fields, its timeline, its ticket.
    rig.open(&format!("#row/{bad_id}")).await;
    rig.wait_js(
        "the row's url and a 400 in its timeline",
        secs(15),
        &format!(
            "const u = document.querySelector('#row-fields dd[data-field=url]'); \
             return !!u && u.textContent === {} \
               && document.getElementById('row-attempts').textContent.includes('HTTP 400')",
            json!(bad[0])
        ),
    )
    .await;
    rig.click("#row-ticket-md").await;
    rig.wait_js(
        "the markdown ticket",
        secs(15),
        &format!(
            "return document.getElementById('row-ticket').value.includes({})",
            json!(bad[0])
        ),
    )
    .await;

    // Failures by reason: retry the group of two 400s.
    rig.open("#failures").await;
    let group = format!("#failure-groups li[data-reason={}]", json!(reason));
    rig.wait_js(
        "the group of two",
        secs(15),
        &format!(
            "const g = document.querySelector({}); return !!g && g.textContent.startsWith('2')",
            json!(group)
        ),
    )
    .await;
    rig.click(&format!("{group} button.retry-group")).await;
    rig.confirm().await;
    wait_until(
        "a second POST of both rows of the group",
        secs(20),
        || async {
            let st = rig.sim.stats();
            bad.iter()
                .all(|u| st.import_posts_by_url.get(u).copied() == Some(2))
        },
    )
    .await;
    assert_eq!(
        rig.sim.stats().import_posts_by_url.get(&missing),
        Some(&1),
        "another reason's row was left alone"
    );

    // The audit log has the dashboard's action.
    rig.open("#audit").await;
    rig.wait_js(
        "the bulk retry in the audit log",
        secs(15),
        "return [...document.querySelectorAll('#audit-table tbody tr')].some(r => \
           r.textContent.includes('bulk_retry') && r.textContent.includes('api'))",
    )
    .await;
    rig.finish().await;
}

/// Polling stops while the tab is hidden (nothing new is drawn) and starts again, at once,
/// when it is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_stops_while_the_tab_is_hidden() {
    let Some(rig) = Rig::start("hidden", KEY).await else {
        return;
    };
    rig.open("").await;
    rig.wait_js(
        "the first overview",
        secs(15),
        "return document.querySelector('#count-completed')?.dataset.count === '0'",
    )
    .await;
    // Headless Chromium never hides its tab: say so the way the browser would.
    rig.js(
        "Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'}); \
         document.dispatchEvent(new Event('visibilitychange')); return true",
    )
    .await;
    let id = rig.db.insert(&rig.url("while-hidden")).await;
    wait_until("the row to complete", secs(20), || async {
        rig.db.row(id).await.state == "completed"
    })
    .await;
    // Longer than two polls: the page stays as it was.
    hold_for("the hidden page not refreshed", secs(7), || async {
        rig.js("return document.querySelector('#count-completed').dataset.count")
            .await
            == json!("0")
    })
    .await;
    rig.js(
        "Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'visible'}); \
         document.dispatchEvent(new Event('visibilitychange')); return true",
    )
    .await;
    rig.wait_js(
        "the count once visible again",
        secs(10),
        "return document.querySelector('#count-completed').dataset.count === '1'",
    )
    .await;
    rig.finish().await;
}
