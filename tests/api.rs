//! The admin API (`/api/v1` on `admin.listen`) against the real `importlyd` binary and the
//! simulator: every route, the same JSON as the CLI's `--json`, the auth matrix, cross-site
//! changes refused, the bulk cap, the audit from both faces, the OpenAPI description, and the
//! token never in any answer.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use base64::Engine;
use common::*;
use importlyd::sim::Sim;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

const TOKEN: &str = "op-token-7f3c9a1e";

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

/// A daemon with the admin listener on, the simulator, the database and an HTTP client.
struct Admin {
    dir: TempDir,
    sim: Sim,
    db: Db,
    cfg_path: PathBuf,
    daemon: Proc,
    base: String,
    http: reqwest::Client,
    /// The auth every request of [`Admin::call`] sends unless told otherwise.
    auth: Auth<'static>,
}

/// What came back.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Starts the daemon: with `token`, the token file is configured. With `paused`, a pause is
/// stored first (next probe in a year), so rows stay where the test puts them.
async fn start(token: Option<&str>, paused: bool) -> Admin {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = start_sim(sim_config()).await;
    let mut cfg = daemon_config(dir.path(), &sim);
    let port = free_port();
    cfg.admin.listen = format!("127.0.0.1:{port}");
    if let Some(t) = token {
        let path = dir.path().join("admin-token");
        std::fs::write(&path, format!("{t}\n")).expect("token file");
        cfg.admin.token_file = path.display().to_string();
    }
    let cfg_path = write_config(dir.path(), &cfg);
    let db = Db::create(&cfg.database.path).await;
    if paused {
        sqlx::query(
            "INSERT INTO pauses (scope, reason, http_status, since, next_probe) \
             VALUES ('all', 'test pause', 402, '2026-01-01T00:00:00.000Z', '2099-01-01T00:00:00.000Z')",
        )
        .execute(&db.pool)
        .await
        .expect("store a pause");
    }
    let daemon = Proc::start(&cfg_path, Some(KEY), "daemon");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(secs(10))
        .build()
        .expect("client");
    let healthz = format!("{base}/healthz");
    let http2 = http.clone();
    wait_until("the admin listener answers", secs(20), || {
        let (http, url) = (http2.clone(), healthz.clone());
        async move { http.get(url).send().await.is_ok() }
    })
    .await;
    let auth = match token {
        Some(_) => Auth::Bearer(TOKEN),
        None => Auth::None,
    };
    Admin {
        dir,
        sim,
        db,
        cfg_path,
        daemon,
        base,
        http,
        auth,
    }
}

impl Admin {
    async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        req = match auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("body");
        // No answer, whatever it is, ever holds the token.
        assert!(!body.contains(TOKEN), "{path} rendered the token: {body}");
        for v in headers.values() {
            assert!(!v.to_str().unwrap_or("").contains(TOKEN), "{path} header");
        }
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, self.auth, &[]).await
    }

    async fn post(&self, path: &str) -> Answer {
        self.send(Method::POST, path, self.auth, &[]).await
    }

    /// GET, expecting 200 and JSON.
    async fn get_json(&self, path: &str) -> Value {
        let a = self.get(path).await;
        assert_eq!(a.status, StatusCode::OK, "GET {path}: {}", a.body);
        a.json()
    }

    async fn cli(&self, args: &[&str]) -> Out {
        cli(&self.cfg_path, args).await
    }

    async fn wait_state(&self, id: i64, state: &str) {
        let db = self.db.clone();
        wait_until(&format!("row {id} {state}"), secs(20), || {
            let db = db.clone();
            async move { db.row(id).await.state == state }
        })
        .await;
    }

    /// A pending row not due for a year (the daemon leaves it alone).
    async fn insert_not_due(&self, url: &str) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO imports (url, next_attempt_at) VALUES (?, '2099-01-01T00:00:00.000Z') \
             RETURNING id",
        )
        .bind(url)
        .fetch_one(&self.db.pool)
        .await
        .expect("insert")
    }

    async fn stop(mut self) {
        let status = self.daemon.terminate(secs(20)).await;
        assert!(status.success(), "daemon exit: {status:?}");
        let log = self.daemon.log_text();
        assert!(!log.contains(TOKEN), "the log holds the token:\n{log}");
        self.sim.shutdown().await;
        drop(self.dir);
    }
}

/// Submits of `url` the simulator has seen.
fn posts(sim: &Sim, url: &str) -> u64 {
    sim.stats()
        .import_posts_by_url
        .get(url)
        .copied()
        .unwrap_or(0)
}

/// A completed and a failed row, through the simulator.
async fn one_completed_one_failed(a: &Admin) -> (i64, i64) {
    let ok =
        a.db.insert(&format!("{}/media/ok.mp4", a.sim.base_url()))
            .await;
    let bad =
        a.db.insert(&format!("{}/media/fail.mp4", a.sim.base_url()))
            .await;
    a.wait_state(ok, "completed").await;
    a.wait_state(bad, "failed").await;
    (ok, bad)
}

/// Every GET route answers what the CLI's `--json` prints; pages, search and errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_routes_answer_the_cli_json_shapes() {
    let a = start(None, false).await;
    let (ok, bad) = one_completed_one_failed(&a).await;

    let status = a.get_json("/api/v1/status").await;
    let cli_status = a.cli(&["status", "--json"]).await.ok().json();
    assert_eq!(status["counts"], cli_status["counts"]);
    assert_eq!(status["counts"]["completed"], 1);
    assert_eq!(status["counts"]["failed"], 1);
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object().expect("object").keys().cloned().collect()
    };
    assert_eq!(keys(&status), keys(&cli_status));
    assert!(status["estimate"].is_object(), "{status}");
    assert_eq!(
        status["daemons"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );

    // Rows: a state's rows = `list --state --json`; pages by cursor; search.
    let failed = a.get_json("/api/v1/rows?state=failed").await;
    let cli_failed = a
        .cli(&["list", "--state", "failed", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(failed["rows"], cli_failed);
    assert_eq!(failed["next_after"], Value::Null);
    let first = a.get_json("/api/v1/rows?limit=1").await;
    assert_eq!(first["rows"][0]["id"], ok);
    assert_eq!(first["next_after"], ok);
    let second = a
        .get_json(&format!("/api/v1/rows?limit=1&after={ok}"))
        .await;
    assert_eq!(second["rows"][0]["id"], bad);
    let rest = a
        .get_json(&format!("/api/v1/rows?limit=1&after={bad}"))
        .await;
    assert_eq!(rest["rows"], Value::Array(vec![]));
    assert_eq!(rest["next_after"], Value::Null);
    for q in ["fail.mp4", "Unsupported"] {
        let found = a.get_json(&format!("/api/v1/rows?q={q}")).await;
        let ids: Vec<&Value> = found["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| &r["id"])
            .collect();
        assert_eq!(ids, vec![&Value::from(bad)], "q={q}");
    }
    let none = a.get_json("/api/v1/rows?q=%25").await;
    assert_eq!(none["rows"], Value::Array(vec![]), "% is literal");

    // One row = `show --json`; the ticket = `ticket` in each format.
    let row = a.get_json(&format!("/api/v1/rows/{bad}")).await;
    let cli_row = a
        .cli(&["show", &bad.to_string(), "--json"])
        .await
        .ok()
        .json();
    assert_eq!(row, cli_row);
    for format in ["text", "markdown", "json"] {
        let t = a
            .get(&format!("/api/v1/rows/{bad}/ticket?format={format}"))
            .await;
        assert_eq!(t.status, StatusCode::OK);
        let cli_t = a
            .cli(&["ticket", &bad.to_string(), "--format", format])
            .await
            .ok();
        // The same ticket, but for the moment it was generated.
        let strip = |s: &str| -> Vec<String> {
            s.trim_end()
                .lines()
                .filter(|l| !l.to_lowercase().contains("generated"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(strip(&t.body), strip(&cli_t.stdout), "{format}");
    }
    let text = a.get(&format!("/api/v1/rows/{bad}/ticket")).await;
    assert!(
        text.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "text is the default"
    );

    // A caller's mistakes: 400 and 404, with a reason.
    for (path, want) in [
        ("/api/v1/rows?state=bogus", StatusCode::BAD_REQUEST),
        ("/api/v1/rows?limit=0", StatusCode::BAD_REQUEST),
        ("/api/v1/rows?limit=100000", StatusCode::BAD_REQUEST),
        ("/api/v1/rows/999999", StatusCode::NOT_FOUND),
        ("/api/v1/rows/999999/ticket", StatusCode::NOT_FOUND),
        (
            &format!("/api/v1/rows/{bad}/ticket?format=pdf"),
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/audit?limit=0", StatusCode::BAD_REQUEST),
    ] {
        let r = a.get(path).await;
        assert_eq!(r.status, want, "{path}: {}", r.body);
        assert!(r.json()["error"].is_string(), "{path}: {}", r.body);
    }
    assert_eq!(a.get_json("/api/v1/audit").await, Value::Array(vec![]));
    a.stop().await;
}

/// The OpenAPI document lists exactly the router's routes, and each answers on its method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route() {
    let a = start(Some(TOKEN), true).await;
    let id = a.insert_not_due("https://media.example/a.mp4").await;
    let doc = a.get_json("/api/v1/openapi.json").await;
    let mut described = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            described.insert((method.clone(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = importlyd::admin::api::routes()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(described, served);
    for (method, path) in &described {
        let path = format!("{}?state=failed", path.replace("{id}", &id.to_string()));
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let r = a.send(m, &path, a.auth, &[]).await;
        assert!(
            r.status.is_success() || r.status == StatusCode::CONFLICT,
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
    }
    a.stop().await;
}

/// Retry, cancel, bulk retry and resume over the API (Bearer and Basic), and retry, cancel,
/// resume and purge from the CLI: each acts and lands in the audit, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_act_and_are_audited_from_both_faces() {
    let a = start(Some(TOKEN), false).await;
    let (_ok, bad) = one_completed_one_failed(&a).await;
    let fail_url = format!("{}/media/fail.mp4", a.sim.base_url());
    assert_eq!(posts(&a.sim, &fail_url), 1);

    // Retry the failed row: the simulator sees a second submit of it.
    let r = a.post(&format!("/api/v1/rows/{bad}/retry")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["done"], serde_json::json!([bad]));
    let sim = &a.sim;
    wait_until("a second submit", secs(20), || async {
        posts(sim, &fail_url) == 2
    })
    .await;
    a.wait_state(bad, "failed").await;

    // Cancel with Basic (any user name); the same again is a conflict; a missing row 404.
    let pending = a.insert_not_due("https://media.example/later.mp4").await;
    let basic = Auth::Basic("anyone", TOKEN);
    let r = a
        .send(
            Method::POST,
            &format!("/api/v1/rows/{pending}/cancel"),
            basic,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(a.db.row(pending).await.state, "cancelled");
    let again = a.post(&format!("/api/v1/rows/{pending}/cancel")).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(
        again.json()["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("cancelled")
    );
    assert_eq!(
        a.post("/api/v1/rows/999999/retry").await.status,
        StatusCode::NOT_FOUND
    );

    // Bulk retry needs state=failed; it answers the count.
    assert_eq!(
        a.post("/api/v1/retry").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        a.post("/api/v1/retry?state=pending").await.status,
        StatusCode::BAD_REQUEST
    );
    let r = a.post("/api/v1/retry?state=failed&q=nothing-matches").await;
    assert_eq!(r.json()["retried"], 0);
    let r = a.post("/api/v1/retry?state=failed&q=fail.mp4").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["retried"], 1);
    a.wait_state(bad, "failed").await;

    let r = a.post("/api/v1/resume").await;
    assert_eq!(r.json()["lifted"], 0);

    // The same verbs from the command line.
    a.cli(&["retry", &bad.to_string()]).await.ok();
    a.wait_state(bad, "failed").await;
    let later = a.insert_not_due("https://media.example/later2.mp4").await;
    a.cli(&["cancel", &later.to_string()]).await.ok();
    a.cli(&["resume"]).await.ok();
    a.cli(&["purge", "--older-than", "30d"]).await.ok();

    let audit = a.get_json("/api/v1/audit").await;
    let got: Vec<(String, String, bool)> = audit
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["source"].as_str().unwrap().to_owned(),
                e["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, String, bool)> = [
        ("purge", "cli", true),
        ("resume", "cli", true),
        ("cancel", "cli", true),
        ("retry", "cli", true),
        ("resume", "api", true),
        ("bulk_retry", "api", true),
        ("bulk_retry", "api", true),
        ("retry", "api", false),
        ("cancel", "api", false),
        ("cancel", "api", true),
        ("retry", "api", true),
    ]
    .iter()
    .map(|(a, s, o)| (a.to_string(), s.to_string(), *o))
    .collect();
    assert_eq!(got, want, "{audit:#}");
    assert_eq!(audit[10]["target"], format!("row {bad}"));
    assert!(audit[0]["at"].as_str().unwrap().ends_with('Z'));
    a.stop().await;
}

/// No token: reads open, every change 403. A token: everything but /healthz and /metrics
/// needs it, as Basic (any user) or Bearer; missing or wrong is 401 with WWW-Authenticate.
/// SIGHUP re-reads the token file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix_and_token_reload() {
    let open = start(None, true).await;
    assert_eq!(open.get("/api/v1/status").await.status, StatusCode::OK);
    for path in [
        "/api/v1/resume",
        "/api/v1/retry?state=failed",
        "/api/v1/rows/1/retry",
    ] {
        let r = open.post(path).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert!(r.body.contains("read-only"), "{}", r.body);
        // Even with a made-up token.
        let r = open
            .send(Method::POST, path, Auth::Bearer(TOKEN), &[])
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(open.db.pauses().await.len(), 1, "nothing was resumed");
    // A page elsewhere whose name points at 127.0.0.1 cannot read.
    let r = open
        .send(
            Method::GET,
            "/api/v1/status",
            Auth::None,
            &[("host", "rebound.example:80")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    open.stop().await;

    let a = start(Some(TOKEN), true).await;
    for path in ["/healthz", "/metrics"] {
        let r = a.send(Method::GET, path, Auth::None, &[]).await;
        assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{path} stays open");
    }
    for auth in [
        Auth::None,
        Auth::Bearer("wrong"),
        Auth::Bearer(""),
        Auth::Basic("admin", "wrong"),
        Auth::Basic(TOKEN, ""),
    ] {
        for (m, path) in [
            (Method::GET, "/api/v1/status"),
            (Method::GET, "/api/v1/openapi.json"),
            (Method::POST, "/api/v1/resume"),
        ] {
            let r = a.send(m, path, auth, &[]).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
            let challenge = r.headers["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Basic"), "{challenge}");
        }
    }
    assert_eq!(a.db.pauses().await.len(), 1, "nothing was resumed");
    let raw = base64::engine::general_purpose::STANDARD.encode(format!("x:{TOKEN}"));
    let header = format!("Basic {raw}");
    for auth in [
        Auth::Bearer(TOKEN),
        Auth::Basic("", TOKEN),
        Auth::Basic("ops", TOKEN),
    ] {
        assert_eq!(
            a.send(Method::GET, "/api/v1/status", auth, &[])
                .await
                .status,
            StatusCode::OK
        );
    }
    let r = a
        .send(
            Method::GET,
            "/api/v1/status",
            Auth::None,
            &[("authorization", &header)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = a
        .send(Method::POST, "/api/v1/resume", Auth::Basic("u", TOKEN), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["lifted"], 1);

    // A new token in the file, SIGHUP: the old one stops working, the new one works.
    let new = "op-token-second-5d2b";
    std::fs::write(a.dir.path().join("admin-token"), new).expect("new token");
    a.daemon.signal("HUP");
    wait_until("the new token is in force", secs(20), || async {
        a.send(Method::GET, "/api/v1/status", Auth::Bearer(new), &[])
            .await
            .status
            == StatusCode::OK
    })
    .await;
    let r = a
        .send(Method::GET, "/api/v1/status", Auth::Bearer(TOKEN), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let log = a.daemon.log_text();
    assert!(!log.contains(new), "the log holds the new token");
    a.stop().await;
}

/// A change from another site is refused, token or not; from the listener's own origin,
/// and from tools that send no Origin, it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_are_refused() {
    let a = start(Some(TOKEN), true).await;
    let own = a.base.clone();
    for headers in [
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("origin", own.as_str()), ("sec-fetch-site", "cross-site")],
    ] {
        let r = a
            .send(Method::POST, "/api/v1/resume", a.auth, &headers)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}");
        let r = a
            .send(Method::POST, "/api/v1/resume", Auth::None, &headers)
            .await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{headers:?} without a token"
        );
    }
    assert_eq!(a.db.pauses().await.len(), 1, "nothing was resumed");
    let r = a
        .send(
            Method::POST,
            "/api/v1/resume",
            a.auth,
            &[("origin", own.as_str()), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["lifted"], 1);
    // A read from anywhere is no change: it only needs the token.
    let r = a
        .send(
            Method::GET,
            "/api/v1/status",
            a.auth,
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    a.stop().await;
}

/// A bulk retry touches at most 10,000 rows per call and says how many; the next call
/// takes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_retry_is_capped_at_ten_thousand() {
    let a = start(Some(TOKEN), true).await;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10005) \
         INSERT INTO imports (url, state, attempts, last_error) \
         SELECT 'https://media.example/bulk-' || i || '.mp4', 'failed', 8, 'Unsupported media' \
         FROM n",
    )
    .execute(&a.db.pool)
    .await
    .expect("failed rows");
    let r = a.post("/api/v1/retry?state=failed&q=bulk-").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["retried"], 10_000);
    assert_eq!(r.json()["cap"], 10_000);
    assert_eq!(a.db.count("failed").await, 5);
    let r = a.post("/api/v1/retry?state=failed&q=bulk-").await;
    assert_eq!(r.json()["retried"], 5);
    assert_eq!(a.db.count("failed").await, 0);
    let status = a.get_json("/api/v1/status").await;
    assert_eq!(status["counts"]["failed"], 0, "the counts follow");
    a.stop().await;
}

/// `admin.listen` off loopback without a token is a config error naming the key (exit 2);
/// with a token it serves, and asks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_listen_needs_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = start_sim(sim_config()).await;
    let mut cfg = daemon_config(dir.path(), &sim);
    let port = free_port();
    cfg.admin.listen = format!("0.0.0.0:{port}");
    let cfg_path = write_config(dir.path(), &cfg);
    let mut d = Proc::start(&cfg_path, Some(KEY), "open");
    let status = d.wait_exit(secs(20)).await;
    assert_eq!(status.code(), Some(2), "{}", d.log_text());
    assert!(d.log_text().contains("admin.listen"), "{}", d.log_text());

    let token = dir.path().join("admin-token");
    std::fs::write(&token, TOKEN).expect("token");
    cfg.admin.token_file = token.display().to_string();
    let cfg_path = write_config(dir.path(), &cfg);
    let mut d = Proc::start(&cfg_path, Some(KEY), "with-token");
    let url = format!("http://127.0.0.1:{port}/api/v1/status");
    let http = reqwest::Client::new();
    let got = wait_for("the listener", secs(20), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(url).send().await.ok().map(|r| r.status()) }
    })
    .await;
    assert_eq!(got, StatusCode::UNAUTHORIZED);
    let ok = http.get(&url).bearer_auth(TOKEN).send().await.expect("GET");
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(d.terminate(secs(20)).await.success());
    sim.shutdown().await;
}
