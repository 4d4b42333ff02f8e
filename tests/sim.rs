//! The Importly API simulator, driven over HTTP as a client would drive the real API.
//!
//! Windows and job durations are short so the whole file runs in a few seconds. Waiting is
//! always "poll a condition until a deadline"; the only plain sleeps move a test into a fresh
//! rate-limit window or honour a `reset` the server announced.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use importlyd::sim::{BucketConfig, FaultMix, HostileMix, Sim, SimConfig};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

const KEY: &str = "sim-key";
const HOUR: Duration = Duration::from_secs(3600);
const RATE_HEADERS: [&str; 5] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-window",
    "x-ratelimit-plan",
];

fn bucket(requests: u64, window: Duration, concurrent: u32) -> BucketConfig {
    BucketConfig {
        requests,
        window,
        concurrent,
    }
}

/// Generous limits and short jobs; each test tightens what it checks.
fn cfg() -> SimConfig {
    SimConfig {
        import: bucket(1000, HOUR, 2),
        status: bucket(10_000, HOUR, 0),
        metadata: bucket(1000, HOUR, 5),
        job_duration: Duration::from_millis(300),
        metadata_duration: Duration::from_millis(200),
        ..SimConfig::default()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Moves into a fresh window when less than `margin` is left of the current one, so a burst of
/// requests lands in a single window.
async fn ensure_room_in_window(window: Duration, margin: Duration) {
    let len = window.as_millis() as u64;
    let left = len - unix_ms() % len;
    if left < margin.as_millis() as u64 {
        tokio::time::sleep(Duration::from_millis(left + 20)).await;
    }
}

/// Polls `probe` every 20 ms until it yields a value; fails the test after `timeout`.
async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    /// The JSON body, or the raw text as a JSON string when it is not JSON.
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("missing header {name}"))
            .to_owned()
    }

    fn header_u64(&self, name: &str) -> u64 {
        self.header(name)
            .parse()
            .unwrap_or_else(|e| panic!("header {name}: {e}"))
    }

    fn assert_rate_headers(&self) {
        for name in RATE_HEADERS {
            assert!(
                self.headers.contains_key(name),
                "{name} missing on a {} answer",
                self.status
            );
        }
    }

    fn job_id(&self) -> String {
        assert_eq!(self.status, StatusCode::OK, "not accepted: {}", self.body);
        self.body["data"]["jobId"]
            .as_str()
            .unwrap_or_else(|| panic!("no jobId in {}", self.body))
            .to_owned()
    }
}

/// A client of one simulator, with the key it presents (None: no Authorization header).
struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    fn new(sim: &Sim) -> Self {
        Self::with_key(sim, Some(KEY))
    }

    fn with_key(sim: &Sim, key: Option<&str>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: sim.base_url(),
            key: key.map(str::to_owned),
        }
    }

    async fn send(&self, rb: RequestBuilder) -> Resp {
        let rb = match &self.key {
            Some(key) => rb.bearer_auth(key),
            None => rb,
        };
        let resp = rb.send().await.expect("request reaches the simulator");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            headers,
            body,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn import_body(&self, body: Value) -> Resp {
        self.send(self.http.post(self.url("/import")).json(&body))
            .await
    }

    async fn import(&self, url: &str) -> Resp {
        self.import_body(json!({ "url": url })).await
    }

    async fn import_status(&self, id: &str) -> Resp {
        let rb = self
            .http
            .get(self.url("/import/status"))
            .query(&[("id", id)]);
        self.send(rb).await
    }

    async fn metadata_post(&self, url: &str) -> Resp {
        let rb = self
            .http
            .post(self.url("/metadata"))
            .json(&json!({ "url": url }));
        self.send(rb).await
    }

    async fn metadata_get(&self, url: &str) -> Resp {
        let rb = self.http.get(self.url("/metadata")).query(&[("url", url)]);
        self.send(rb).await
    }

    async fn metadata_status(&self, id: &str) -> Resp {
        let rb = self
            .http
            .get(self.url("/metadata/status"))
            .query(&[("id", id)]);
        self.send(rb).await
    }

    /// Polls an import job until its status is final; returns its `data`.
    async fn finished_import(&self, id: &str, timeout: Duration) -> Value {
        wait_until("the import job to finish", timeout, || async {
            let r = self.import_status(id).await;
            let data = r.body["data"].clone();
            matches!(data["status"].as_str(), Some("completed" | "failed")).then_some(data)
        })
        .await
    }
}

async fn start(cfg: SimConfig) -> (Sim, Api) {
    let sim = Sim::start(cfg).await.expect("simulator starts");
    let api = Api::new(&sim);
    (sim, api)
}

#[tokio::test]
async fn unauthorized_requests_are_refused_and_not_counted() {
    let (sim, api) = start(SimConfig {
        import: bucket(5, HOUR, 2),
        ..cfg()
    })
    .await;
    ensure_room_in_window(HOUR, Duration::from_secs(3)).await;
    let url = "https://example.com/a.mp4";

    for key in [None, Some("wrong-key")] {
        let r = Api::with_key(&sim, key).import(url).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.body["success"], false);
        assert!(r.body["error"].is_string());
        r.assert_rate_headers();
        assert_eq!(
            r.header_u64("x-ratelimit-remaining"),
            5,
            "a 401 is not counted"
        );
    }
    let r = api.import(url).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 4);

    // A rotated key: the old one stops working at once.
    sim.set_api_key("rotated");
    assert_eq!(api.import(url).await.status, StatusCode::UNAUTHORIZED);
    let r = Api::with_key(&sim, Some("rotated")).import(url).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 3);

    let s = sim.stats();
    assert_eq!(s.unauthorized, 3);
    assert_eq!(
        s.import_posts, 5,
        "every POST is received, whatever its answer"
    );
    assert_eq!(s.accepted_imports, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn every_response_carries_the_headers_of_its_bucket() {
    let (sim, api) = start(SimConfig {
        credits: 1,
        import: bucket(100, Duration::from_secs(300), 2),
        status: bucket(200, HOUR, 0),
        metadata: bucket(50, Duration::from_secs(90), 5),
        plan: "free".into(),
        ..cfg()
    })
    .await;
    ensure_room_in_window(Duration::from_secs(300), Duration::from_secs(3)).await;

    let mut answers = vec![
        api.import("https://example.com/ok.mp4").await, // 200
        api.import("https://example.com/second.mp4").await, // 402: the first reserved the credit
        api.import_body(json!({"no": "url"})).await,    // 400
        api.import("https://unreachable.example/a.mp4").await, // 404
        api.import("https://example.com/flaky500-1.mp4").await, // 500
        Api::with_key(&sim, None)
            .import("https://example.com/x.mp4")
            .await, // 401
    ];
    sim.set_credits(100);
    sim.hold_slots(2);
    answers.push(api.import("https://example.com/busy.mp4").await); // 429 concurrency
    let statuses: Vec<u16> = answers.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 402, 400, 404, 500, 401, 429]);
    for r in &answers {
        r.assert_rate_headers();
        assert_eq!(r.header("x-ratelimit-limit"), "100");
        assert_eq!(r.header("x-ratelimit-window"), "5 m");
        assert_eq!(r.header("x-ratelimit-plan"), "free");
        assert_eq!(
            r.header_u64("x-ratelimit-reset") % 300,
            0,
            "aligned windows"
        );
    }
    // Counted answers (all but the 401) each took one request.
    assert_eq!(answers[6].header_u64("x-ratelimit-remaining"), 94);

    let status = api.import_status("no-such-job").await;
    status.assert_rate_headers();
    assert_eq!(status.header("x-ratelimit-limit"), "200");
    assert_eq!(status.header("x-ratelimit-window"), "1 h");

    let meta = api.metadata_get("https://example.com/ok.mp4").await;
    meta.assert_rate_headers();
    assert_eq!(meta.header("x-ratelimit-limit"), "50");
    assert_eq!(meta.header("x-ratelimit-window"), "90 s");
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_429_has_the_documented_body_and_the_window_resets() {
    let window = Duration::from_secs(2);
    let (sim, api) = start(SimConfig {
        import: bucket(3, window, 2),
        ..cfg()
    })
    .await;
    ensure_room_in_window(window, Duration::from_millis(1200)).await;

    // 404 answers count against the bucket like any other.
    for i in 0..3 {
        let r = api
            .import(&format!("https://example.com/notfound/{i}"))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.header_u64("x-ratelimit-remaining"), 2 - i);
    }
    let limited = api.import("https://example.com/a.mp4").await;
    let again = api.import("https://example.com/a.mp4").await;
    for r in [&limited, &again] {
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        r.assert_rate_headers();
        assert_eq!(r.header_u64("x-ratelimit-remaining"), 0);
    }
    let body = &limited.body;
    let keys: BTreeSet<&str> = body
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let expected: BTreeSet<&str> = [
        "success",
        "error",
        "limit",
        "remaining",
        "reset",
        "retryAfter",
        "endpoint",
    ]
    .into();
    assert_eq!(keys, expected);
    assert_eq!(body["success"], false);
    assert_eq!(
        body["error"],
        "Rate limit exceeded. Limit: 3 requests per 2 s"
    );
    assert_eq!(body["limit"], 3);
    assert_eq!(body["remaining"], 0);
    assert_eq!(body["endpoint"], "/import");
    let reset_ms = body["reset"].as_u64().expect("reset in ms");
    assert_eq!(reset_ms % 2000, 0, "windows are aligned to their length");
    assert_eq!(reset_ms, limited.header_u64("x-ratelimit-reset") * 1000);
    let retry_after = body["retryAfter"].as_u64().expect("retryAfter in s");
    assert!((1..=2).contains(&retry_after), "retryAfter {retry_after}");
    assert_eq!(limited.header_u64("retry-after"), retry_after);

    // Another bucket is untouched.
    assert_eq!(
        api.import_status("nope").await.status,
        StatusCode::NOT_FOUND
    );

    let s = sim.stats();
    assert_eq!(s.rate_limited, 2);
    assert_eq!(s.not_found, 4);
    assert_eq!(s.import_posts, 5);

    // Honour the announced reset, then the new window has its full budget.
    let wait = reset_ms.saturating_sub(unix_ms()) + 10;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let r = api.import("https://example.com/notfound/after").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 2);
    assert!(r.header_u64("x-ratelimit-reset") * 1000 > reset_ms);
    sim.shutdown().await;
}

#[tokio::test]
async fn concurrency_429_counts_held_slots_and_frees_when_jobs_finish() {
    let (sim, api) = start(cfg()).await;
    ensure_room_in_window(HOUR, Duration::from_secs(3)).await;

    sim.hold_slots(2);
    let r = api.import("https://example.com/a.mp4").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.body,
        json!({
            "success": false,
            "error": "Concurrent limit exceeded. Max 2 concurrent import jobs allowed.",
            "concurrentLimit": 2,
            "currentConcurrent": 2,
            "endpoint": "/import",
        })
    );
    assert!(r.headers.get("retry-after").is_none());
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 999, "counted");

    sim.hold_slots(1);
    api.import("https://example.com/a.mp4").await.job_id();
    let r = api.import("https://example.com/b.mp4").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body["currentConcurrent"], 2);

    // Nobody polls: the slot frees when the job's time is up all the same.
    sim.release_slots();
    api.import("https://example.com/b.mp4").await.job_id();
    let third = wait_until("a free slot", Duration::from_secs(3), || async {
        let r = api.import("https://example.com/c.mp4").await;
        (r.status == StatusCode::OK).then_some(r)
    })
    .await;
    third.job_id();

    let s = sim.stats();
    assert!(s.concurrency_limited >= 2);
    assert_eq!(s.max_concurrent_imports, 2);
    assert_eq!(s.accepted_imports, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn import_job_goes_queued_processing_completed_and_is_charged() {
    let (sim, api) = start(SimConfig {
        credits: 10,
        import_cost: 1,
        job_duration: Duration::from_millis(900),
        ..cfg()
    })
    .await;
    let r = api.import("https://example.com/video.mp4").await;
    let id = r.job_id();
    assert_eq!(
        r.body["data"],
        json!({"jobId": id, "status": "queued", "message": "Import queued."})
    );
    assert_eq!(sim.stats().credits, 10, "reserved, not yet charged");

    // Polled by hand rather than with `wait_until`: the loop records every state it passes.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen: Vec<String> = Vec::new();
    let data = loop {
        let r = api.import_status(&id).await;
        assert_eq!(r.status, StatusCode::OK);
        r.assert_rate_headers();
        let status = r.body["data"]["status"].as_str().unwrap_or("?").to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "completed" {
            break r.body["data"].clone();
        }
        assert!(Instant::now() < deadline, "no completion; seen {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(seen.last().map(String::as_str), Some("completed"));
    assert!(seen.contains(&"processing".to_owned()), "seen {seen:?}");
    let order = ["queued", "processing", "completed"];
    let ranks: Vec<usize> = seen
        .iter()
        .map(|s| order.iter().position(|o| o == s).expect("known state"))
        .collect();
    assert!(ranks.is_sorted(), "states went backwards: {seen:?}");

    assert_eq!(data["status"], "completed");
    assert_eq!(
        data["mediaUrl"],
        format!("https://media.sim.importly.local/{id}.mp4")
    );
    assert_eq!(data["creditsUsed"], 1);
    assert_eq!(data["message"], "Import completed.");
    assert_eq!(sim.stats().credits, 9);
    sim.shutdown().await;
}

#[tokio::test]
async fn out_of_credits_gives_402_until_topped_up() {
    let (sim, api) = start(SimConfig {
        credits: 2,
        import: bucket(1000, HOUR, 10),
        job_duration: Duration::from_secs(30),
        ..cfg()
    })
    .await;
    api.import("https://example.com/1.mp4").await.job_id();
    api.import("https://example.com/2.mp4").await.job_id();
    let r = api.import("https://example.com/3.mp4").await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(r.body["success"], false);
    assert!(r.body["error"].as_str().unwrap_or("").contains("credits"));

    sim.set_credits(3);
    api.import("https://example.com/3.mp4").await.job_id();
    let r = api.import("https://example.com/cost-5/4.mp4").await;
    assert_eq!(
        r.status,
        StatusCode::PAYMENT_REQUIRED,
        "cost-5 needs 5 free"
    );
    sim.set_credits(8);
    api.import("https://example.com/cost-5/4.mp4")
        .await
        .job_id();

    // Credits are checked before concurrency.
    sim.set_credits(0);
    sim.hold_slots(10);
    let r = api.import("https://example.com/5.mp4").await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);

    let s = sim.stats();
    assert_eq!(s.payment_required, 3);
    assert_eq!(s.accepted_imports, 4);
    assert_eq!(s.credits, 0, "nothing charged while the jobs run");
    sim.shutdown().await;
}

#[tokio::test]
async fn url_rules_and_validation_give_404_and_400() {
    let (sim, api) = start(cfg()).await;
    let not_public = json!({"success": false, "error": "Media URL is not publicly accessible"});
    for url in [
        "https://unreachable.example/a.mp4",
        "https://example.com/x/notfound/a.mp4",
    ] {
        let r = api.import(url).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{url}");
        assert_eq!(r.body, not_public);
    }
    let r = api.metadata_post("https://unreachable.example/a.mp4").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let bad_bodies = [
        json!({"url": "https://example.com/bad/a.mp4"}),
        json!({"url": "ftp://example.com/a.mp4"}),
        json!({"url": "not a url"}),
        json!({"url": 42}),
        json!({"videoQuality": "720p"}),
        json!({"url": "https://example.com/a.mp4", "videoQuality": "999p"}),
        json!({"url": "https://example.com/a.mp4", "includeAudio": "yes"}),
        json!(["https://example.com/a.mp4"]),
    ];
    for body in bad_bodies {
        let r = api.import_body(body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body["success"], false);
        assert!(r.body["error"].is_string());
        r.assert_rate_headers();
    }
    let malformed = api
        .send(api.http.post(api.url("/import")).body("{\"url\": "))
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    let r = api.import_status("no-such-job").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body, json!({"success": false, "error": "Job not found"}));
    let r = api.send(api.http.get(api.url("/import/status"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "missing id");

    // Unknown fields are the client's business: accepted, and seen by the server as sent.
    let body =
        json!({"url": "https://example.com/ok.mp4", "custom": {"a": 1}, "videoQuality": "720p"});
    api.import_body(body.clone()).await.job_id();

    let s = sim.stats();
    assert_eq!(s.not_found, 4);
    assert_eq!(s.bad_requests, 10);
    assert_eq!(
        s.last_import_body_by_url.get("https://example.com/ok.mp4"),
        Some(&body)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn fail_url_job_ends_failed_and_costs_nothing() {
    let (sim, api) = start(SimConfig {
        credits: 5,
        ..cfg()
    })
    .await;
    let id = api.import("https://example.com/fail/a.mp4").await.job_id();
    let data = api.finished_import(&id, Duration::from_secs(3)).await;
    assert_eq!(data["status"], "failed");
    assert_eq!(data["error"], "Unsupported media");
    assert_eq!(sim.stats().credits, 5);
    sim.shutdown().await;
}

#[tokio::test]
async fn flaky500_url_fails_its_first_n_posts() {
    let (sim, api) = start(cfg()).await;
    let url = "https://example.com/flaky500-2/a.mp4";
    for _ in 0..2 {
        let r = api.import(url).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            r.body,
            json!({"success": false, "error": "Internal server error"})
        );
        r.assert_rate_headers();
    }
    let id = api.import(url).await.job_id();
    assert_eq!(
        api.finished_import(&id, Duration::from_secs(3)).await["status"],
        "completed"
    );

    let s = sim.stats();
    assert_eq!(s.server_errors, 2);
    assert_eq!(s.import_posts_by_url.get(url), Some(&3));
    assert_eq!(s.accepted_by_url.get(url), Some(&1));
    let times: Vec<SystemTime> = s.post_times.iter().map(|(_, t)| *t).collect();
    assert!(s.post_times.iter().all(|(u, _)| u == url));
    assert_eq!(times.len(), 3);
    assert!(times.is_sorted());
    sim.shutdown().await;
}

#[tokio::test]
async fn slow_url_takes_three_times_as_long() {
    let (sim, api) = start(SimConfig {
        job_duration: Duration::from_millis(200),
        ..cfg()
    })
    .await;
    let started = Instant::now();
    let id = api.import("https://example.com/slow/a.mp4").await.job_id();
    let data = api.finished_import(&id, Duration::from_secs(3)).await;
    assert_eq!(data["status"], "completed");
    assert!(started.elapsed() >= Duration::from_millis(600));
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_job_answers_404_but_keeps_its_slot_until_done() {
    let (sim, api) = start(SimConfig {
        credits: 5,
        import: bucket(1000, HOUR, 1),
        job_duration: Duration::from_millis(1200),
        job_ttl: Duration::from_millis(200),
        ..cfg()
    })
    .await;
    let id = api.import("https://example.com/a.mp4").await.job_id();
    wait_until("the job to expire", Duration::from_secs(2), || async {
        (api.import_status(&id).await.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let r = api.import("https://example.com/b.mp4").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "slot still held");
    assert_eq!(r.body["currentConcurrent"], 1);
    wait_until("the slot to free", Duration::from_secs(3), || async {
        (api.import("https://example.com/b.mp4").await.status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(sim.stats().credits, 5, "an expired job costs nothing");
    sim.shutdown().await;
}

#[tokio::test]
async fn metadata_jobs_have_their_own_lifecycle_and_bucket() {
    let (sim, api) = start(SimConfig {
        credits: 7,
        metadata: bucket(2, HOUR, 5),
        status: bucket(500, HOUR, 0),
        ..cfg()
    })
    .await;
    ensure_room_in_window(HOUR, Duration::from_secs(3)).await;
    let url = "https://example.com/cost-3/clip.mp4";

    let first = api.metadata_post(url).await;
    assert_eq!(first.body["data"]["status"], "queued");
    assert_eq!(first.header("x-ratelimit-limit"), "2");
    assert_eq!(first.header_u64("x-ratelimit-remaining"), 1);
    let id = first.job_id();
    let second = api.metadata_get(url).await;
    second.job_id();
    assert_eq!(second.header_u64("x-ratelimit-remaining"), 0);
    let third = api.metadata_get(url).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.body["endpoint"], "/metadata");
    // The import bucket is separate.
    let imp = api.import("https://example.com/a.mp4").await;
    assert_eq!(imp.header("x-ratelimit-limit"), "1000");
    imp.job_id();

    let data = wait_until("metadata", Duration::from_secs(3), || async {
        let r = api.metadata_status(&id).await;
        assert_eq!(r.header("x-ratelimit-limit"), "500", "status bucket");
        (r.body["data"]["status"] == "completed").then(|| r.body["data"].clone())
    })
    .await;
    let result = &data["result"];
    assert!(result["title"].is_string());
    assert!(result["duration"].as_u64().is_some());
    let formats = result["availableFormats"].as_array().expect("formats");
    let hd = formats
        .iter()
        .find(|f| f["quality"] == "720p")
        .expect("a 720p format");
    assert_eq!(hd["costInCredits"], 6, "base cost 2 times cost-3");
    assert_eq!(hd["height"], 720);
    assert_eq!(hd["isAudioOnly"], false);
    assert_eq!(hd["codec"], json!({"video": "avc1", "audio": "mp4a"}));
    for key in ["formatId", "selector", "ext", "description"] {
        assert!(hd[key].is_string(), "{key}");
    }
    // An import id is not a metadata id.
    assert_eq!(
        api.metadata_status(&imp.job_id()).await.status,
        StatusCode::NOT_FOUND
    );

    let s = sim.stats();
    assert_eq!(s.metadata_posts, 3);
    assert!(s.metadata_status_requests >= 2);
    assert_eq!(s.max_concurrent_metadata, 2);
    assert_eq!(s.rate_limited, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn metadata_concurrency_limit_has_its_own_body() {
    let (sim, api) = start(SimConfig {
        metadata: bucket(100, HOUR, 1),
        metadata_duration: Duration::from_secs(30),
        ..cfg()
    })
    .await;
    api.metadata_post("https://example.com/a.mp4")
        .await
        .job_id();
    let r = api.metadata_post("https://example.com/b.mp4").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.body,
        json!({
            "success": false,
            "error": "Concurrent limit exceeded. Max 1 concurrent metadata jobs allowed.",
            "concurrentLimit": 1,
            "currentConcurrent": 1,
            "endpoint": "/metadata",
        })
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn injected_faults_500_garbage_and_timeout() {
    let (sim, api) = start(SimConfig {
        faults: FaultMix {
            p500: 1.0,
            ..FaultMix::default()
        },
        ..cfg()
    })
    .await;
    let r = api.import("https://example.com/a.mp4").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        r.body,
        json!({"success": false, "error": "Internal server error"})
    );
    assert_eq!(
        api.import_status("x").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    sim.set_faults(FaultMix {
        pgarbage: 1.0,
        ..FaultMix::default()
    });
    let r = api.import("https://example.com/a.mp4").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_string(), "not JSON: {}", r.body);
    r.assert_rate_headers();

    // A timed-out submit may still have created a job.
    sim.set_faults(FaultMix {
        ptimeout: 1.0,
        timeout_delay: Duration::from_secs(2),
        ..FaultMix::default()
    });
    let err = api
        .http
        .post(api.url("/import"))
        .bearer_auth(KEY)
        .json(&json!({"url": "https://example.com/a.mp4"}))
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .expect_err("the answer is late");
    assert!(err.is_timeout(), "{err}");

    sim.set_faults(FaultMix::default());
    api.import("https://example.com/b.mp4").await.job_id();

    let s = sim.stats();
    assert_eq!(s.server_errors, 2);
    assert_eq!(s.garbage, 1);
    assert_eq!(s.timeouts, 1);
    assert_eq!(s.accepted_imports, 2, "the timed-out submit created a job");
    sim.shutdown().await;
}

/// The hostile answers of issue 11, each forced in turn: a 500 whose wait hints are
/// u64::MAX, an answer grown far past any sane size (streamed), a 2xx with a job id far past
/// any sane length, and an answer that trickles past a client's timeout.
#[tokio::test]
async fn hostile_answers_huge_retry_oversized_long_id_and_trickle() {
    let (sim, api) = start(SimConfig {
        import: bucket(1000, HOUR, 10),
        ..cfg()
    })
    .await;
    let only = |h: HostileMix| HostileMix {
        oversized_bytes: 1024 * 1024,
        long_id_len: 300,
        trickle_duration: Duration::from_secs(5),
        ..h
    };

    sim.set_hostile(only(HostileMix {
        phuge_retry: 1.0,
        ..HostileMix::default()
    }));
    let r = api.import("https://example.com/a.mp4").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.header("retry-after"), "18446744073709551615");
    assert_eq!(r.body["retryAfter"], json!(u64::MAX));
    assert_eq!(r.body["reset"], json!(u64::MAX));
    r.assert_rate_headers();

    sim.set_hostile(only(HostileMix {
        poversized: 1.0,
        ..HostileMix::default()
    }));
    let r = api.import("https://example.com/a.mp4").await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r.body["data"]["jobId"].as_str().expect("a grown job id");
    assert_eq!(id.len(), 1024 * 1024);
    assert!(id.bytes().all(|b| b == b'x'));
    assert_eq!(r.body["data"]["status"], "queued");
    let r = api.import_status("nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"].as_str().map(str::len), Some(1024 * 1024));

    sim.set_hostile(only(HostileMix {
        plong_id: 1.0,
        ..HostileMix::default()
    }));
    let r = api.import("https://example.com/b.mp4").await;
    assert_eq!(r.job_id(), "i".repeat(300));

    sim.set_hostile(only(HostileMix {
        ptrickle: 1.0,
        ..HostileMix::default()
    }));
    let err = async {
        let resp = api
            .http
            .post(api.url("/import"))
            .bearer_auth(KEY)
            .json(&json!({"url": "https://example.com/c.mp4"}))
            .timeout(Duration::from_millis(300))
            .send()
            .await?;
        resp.bytes().await
    }
    .await
    .expect_err("the body trickles past the timeout");
    assert!(err.is_timeout(), "{err}");

    sim.set_hostile(HostileMix::default());
    api.import("https://example.com/d.mp4").await.job_id();
    let s = sim.stats();
    assert_eq!(
        (s.huge_retries, s.oversized, s.long_ids, s.trickles),
        (1, 2, 1, 1)
    );
    // The oversized, long-id and trickled submits were handled normally underneath.
    assert_eq!(s.accepted_imports, 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_are_reproducible_from_the_seed() {
    async fn outcomes() -> Vec<u16> {
        let (sim, api) = start(SimConfig {
            seed: 42,
            faults: FaultMix {
                p500: 0.5,
                ..FaultMix::default()
            },
            ..cfg()
        })
        .await;
        let mut out = Vec::new();
        for _ in 0..20 {
            out.push(api.import_status("x").await.status.as_u16());
        }
        sim.shutdown().await;
        out
    }
    let first = outcomes().await;
    assert!(first.contains(&500) && first.contains(&404), "{first:?}");
    assert_eq!(first, outcomes().await);
}

#[tokio::test]
async fn sim_stats_endpoint_serves_the_counters_without_using_a_bucket() {
    let (sim, api) = start(SimConfig {
        credits: 42,
        ..cfg()
    })
    .await;
    ensure_room_in_window(HOUR, Duration::from_secs(3)).await;
    let url = "https://example.com/a.mp4";
    let before = api.import(url).await;
    let before_ms = unix_ms();

    let stats_url = api.url("/_sim/stats");
    for _ in 0..3 {
        let r = reqwest::get(&stats_url).await.expect("stats");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let stats: Value = reqwest::get(&stats_url)
        .await
        .expect("stats")
        .json()
        .await
        .expect("JSON stats");
    assert_eq!(stats["import_posts"], 1);
    assert_eq!(stats["accepted_imports"], 1);
    assert_eq!(stats["accepted_by_url"][url], 1);
    assert_eq!(stats["credits"], 42);
    let (post_url, post_ms) = (&stats["post_times"][0][0], &stats["post_times"][0][1]);
    assert_eq!(post_url, url);
    let post_ms = post_ms.as_u64().expect("unix ms");
    assert!(post_ms <= before_ms && before_ms - post_ms < 5000);

    let after = api.import("https://example.com/b.mp4").await;
    assert_eq!(
        after.header_u64("x-ratelimit-remaining"),
        before.header_u64("x-ratelimit-remaining") - 1,
        "stats requests use no bucket"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let (sim, api) = start(cfg()).await;
    assert_eq!(api.import_status("x").await.status, StatusCode::NOT_FOUND);
    let clone = sim.clone();
    sim.shutdown().await;
    let res = reqwest::Client::new()
        .get(format!("{}/import/status?id=x", clone.base_url()))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(res.is_err(), "still answering after shutdown");
}

/// The standalone binary: flags over a partial config file, the announced address, the stats
/// endpoint, and a clean exit on SIGTERM.
#[tokio::test]
async fn standalone_binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("sim.toml");
    std::fs::write(&conf, "credits = 9\n[import]\nrequests = 7\n").expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_importly-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            "k2",
            "--import-window",
            "10m",
        ])
        .arg("--config")
        .arg(&conf)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn importly-sim");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("read the first line");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/import"))
        .bearer_auth("k2")
        .json(&json!({"url": "https://example.com/a.mp4"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::OK);
    let header = |name: &str| r.headers()[name].to_str().unwrap_or("").to_owned();
    assert_eq!(header("x-ratelimit-limit"), "7", "from the file");
    assert_eq!(header("x-ratelimit-window"), "10 m", "from the flag");
    let stats: Value = http
        .get(format!("{base}/_sim/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stats["credits"], 9);
    assert_eq!(stats["accepted_imports"], 1);

    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(killed.is_ok_and(|s| s.success()));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
}

/// `importly-sim --help` names the key a client must send and every flag's default.
#[test]
fn help_names_the_api_key_and_the_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_importly-sim"))
        .arg("--help")
        .output()
        .expect("run importly-sim --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Authorization: Bearer <key>",
        "`sim-key`",
        "[default: sim-key]",
        "[default: 127.0.0.1:8787]",
        "[default: 240]",
        "[default: 1h]",
        "[default: 3s]",
        "[default: 1000000]",
        "--phuge-retry",
        "--ptrickle",
    ] {
        assert!(
            help.contains(needle),
            "`{needle}` missing from --help:\n{help}"
        );
    }
}

type Bodies = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;
type Code = std::sync::Arc<std::sync::atomic::AtomicU16>;

/// A tiny webhook receiver: records every POST body and answers `status` (settable).
#[derive(Clone)]
struct Receiver {
    bodies: Bodies,
    status: Code,
    url: String,
}

impl Receiver {
    async fn start(status: u16) -> Receiver {
        use axum::extract::State;
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let code = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(status));
        let app = axum::Router::new()
            .route(
                "/hook/{token}",
                axum::routing::post(
                    |State((bodies, code)): State<(Bodies, Code)>,
                     axum::Json(v): axum::Json<Value>| async move {
                        bodies.lock().expect("bodies").push(v);
                        let c = code.load(std::sync::atomic::Ordering::Relaxed);
                        axum::http::StatusCode::from_u16(c).expect("status")
                    },
                ),
            )
            .with_state((bodies.clone(), code.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            bodies,
            status: code,
            url,
        }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().expect("bodies").clone()
    }
}

#[tokio::test]
async fn a_job_started_with_a_webhook_url_is_delivered_when_it_ends() {
    let (sim, api) = start(SimConfig {
        job_duration: Duration::from_millis(400),
        ..cfg()
    })
    .await;
    let hook = Receiver::start(200).await;
    let started = Instant::now();
    let r = api
        .import_body(json!({
            "url": "https://example.com/hooked.mp4",
            "webhookUrl": format!("{}/tok1", hook.url),
        }))
        .await;
    let id = r.job_id();
    let body = wait_until("the webhook delivery", Duration::from_secs(5), || async {
        hook.bodies().first().cloned()
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "delivered only once the job ended"
    );
    assert_eq!(body["jobId"], json!(id));
    assert_eq!(body["status"], "completed");
    assert!(body["mediaUrl"].is_string(), "{body}");
    // Its status already says what the delivery said.
    let status = api.import_status(&id).await;
    assert_eq!(status.body["data"]["status"], "completed");
    assert_eq!(sim.webhook_counts().delivered(), 1);
    // A job without a webhookUrl is not delivered anywhere.
    api.import("https://example.com/plain.mp4").await.job_id();
    assert_eq!(hook.bodies().len(), 1);
}

#[tokio::test]
async fn a_refused_webhook_is_retried_then_abandoned() {
    let (sim, api) = start(SimConfig {
        job_duration: Duration::from_millis(100),
        webhooks: importlyd::sim::WebhookConfig {
            attempts: 3,
            interval: Duration::from_millis(100),
        },
        ..cfg()
    })
    .await;
    let hook = Receiver::start(500).await;
    api.import_body(json!({
        "url": "https://example.com/refused.mp4",
        "webhookUrl": format!("{}/tok2", hook.url),
    }))
    .await
    .job_id();
    let counts = sim.webhook_counts();
    wait_until(
        "the delivery to be abandoned",
        Duration::from_secs(5),
        || async { (counts.abandoned() == 1).then_some(()) },
    )
    .await;
    assert_eq!(hook.bodies().len(), 3, "the first delivery and two retries");
    assert_eq!(counts.refused(), 3);
    assert_eq!(counts.delivered(), 0);

    // A receiver that comes back in time gets the delivery.
    let ok = Receiver::start(500).await;
    api.import_body(json!({
        "url": "https://example.com/comes-back.mp4",
        "webhookUrl": format!("{}/tok3", ok.url),
    }))
    .await
    .job_id();
    wait_until("the first refusal", Duration::from_secs(5), || async {
        (!ok.bodies().is_empty()).then_some(())
    })
    .await;
    ok.status.store(200, std::sync::atomic::Ordering::Relaxed);
    wait_until("the retried delivery", Duration::from_secs(5), || async {
        (counts.delivered() == 1).then_some(())
    })
    .await;
}

/// `job_duration_max`: each import lasts a random time between the two bounds, and the
/// stats keep when each was accepted and when it ends (the benchmarks' lag and occupancy).
#[tokio::test]
async fn random_job_durations_stay_within_their_bounds_and_are_recorded() {
    let (sim, api) = start(SimConfig {
        import: bucket(1000, HOUR, 20),
        job_duration: Duration::from_secs(2),
        job_duration_max: Some(Duration::from_secs(8)),
        ..cfg()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            api.import(&format!("https://example.com/r{i}.mp4"))
                .await
                .job_id(),
        );
    }
    let jobs = sim.stats().import_jobs;
    assert_eq!(
        jobs.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>(),
        ids
    );
    let lengths: Vec<u64> = jobs.iter().map(|j| j.ends_ms - j.accepted_ms).collect();
    assert!(
        lengths.iter().all(|l| (2000..=8000).contains(l)),
        "{lengths:?}"
    );
    let (min, max) = (lengths.iter().min(), lengths.iter().max());
    assert!(
        max.zip(min).is_some_and(|(a, b)| a - b > 1000),
        "not random: {lengths:?}"
    );
}
