//! The Importly API client. It owns HTTP and nothing else: every exchange comes back as an
//! [`Exchange`] carrying a classified [`Outcome`] and what a support ticket needs (request
//! body, timestamps, status, rate-limit headers, response body). It knows nothing of the
//! database or of rows.

mod bounds;
mod classify;
mod headers;
mod scrub;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

pub use bounds::{
    MAX_ANSWER, MAX_BODY, MAX_JOB_ID, MAX_LOG_FIELD, bounded, redact_url, valid_job_id,
};
pub use classify::{Call, classify, classify_over_cap};
pub use headers::RateHeaders;

use scrub::Secrets;

/// Which kind of job a call is about; picks the endpoints and the bucket. (Also a row's
/// `kind` at the store interface; see `store::state` for its text forms.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobKind {
    Import,
    Metadata,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Import => "import",
            JobKind::Metadata => "metadata",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "import" => Some(JobKind::Import),
            "metadata" => Some(JobKind::Metadata),
            _ => None,
        }
    }

    pub fn submit_path(self) -> &'static str {
        match self {
            JobKind::Import => "/import",
            JobKind::Metadata => "/metadata",
        }
    }

    pub fn status_path(self) -> &'static str {
        match self {
            JobKind::Import => "/import/status",
            JobKind::Metadata => "/metadata/status",
        }
    }
}

/// Where a job stands on Importly's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Processing,
    Completed,
    Failed,
}

/// What one HTTP exchange means for the queue. The scheduler decides what to do with it;
/// this type only says what happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// 2xx with a `data.jobId` from a submit.
    Accepted { job_id: String },
    /// 2xx from a status call.
    Job { state: JobState, data: Value },
    /// 429 "Rate limit exceeded": nothing may go to this bucket before `until`.
    RateLimited {
        until: SystemTime,
        retry_after: Option<Duration>,
    },
    /// 429 "Concurrent limit exceeded".
    ConcurrencyLimited {
        limit: Option<u32>,
        current: Option<u32>,
    },
    /// 400 (and other 4xx that retrying cannot fix).
    BadRequest { message: String },
    /// 404: on a submit the media URL is not reachable; on a status call the job is gone.
    NotFound { message: String },
    /// 401: the key is wrong for every request, not just this one.
    Unauthorized { message: String },
    /// 402: the account cannot cover a new job.
    InsufficientCredits { message: String },
    /// 5xx, timeout, connection error, garbled 2xx: worth retrying. `ambiguous` is true when
    /// a submit may have reached Importly anyway (the request went out, no answer came).
    Transient {
        reason: String,
        retry_after: Option<Duration>,
        ambiguous: bool,
    },
}

impl Outcome {
    /// A short stable name for logs, tickets and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Job { state, .. } => match state {
                JobState::Queued => "job_queued",
                JobState::Processing => "job_processing",
                JobState::Completed => "job_completed",
                JobState::Failed => "job_failed",
            },
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::ConcurrencyLimited { .. } => "concurrency_limited",
            Outcome::BadRequest { .. } => "bad_request",
            Outcome::NotFound { .. } => "not_found",
            Outcome::Unauthorized { .. } => "unauthorized",
            Outcome::InsufficientCredits { .. } => "insufficient_credits",
            Outcome::Transient {
                ambiguous: true, ..
            } => "ambiguous_submit",
            Outcome::Transient { .. } => "transient",
        }
    }
}

/// One request and its answer, as a ticket shows it.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub method: &'static str,
    /// Path and query, e.g. `/import/status?id=abc`.
    pub endpoint: String,
    pub request_body: Option<String>,
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
    pub http_status: Option<u16>,
    /// The transport error when there was no HTTP answer.
    pub error: Option<String>,
    pub headers: RateHeaders,
    /// The body, cut at [`MAX_BODY`] bytes (an answer over [`MAX_ANSWER`] is not read
    /// further).
    pub response_body: Option<String>,
    pub body_truncated: bool,
    pub outcome: Outcome,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    /// The key in use and the ones used before it in this process, for scrubbing.
    secrets: Arc<RwLock<Secrets>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &redact_url(self.base.as_str()))
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl Client {
    pub fn new(base_url: &str, key: SecretString, timeout: Duration) -> anyhow::Result<Client> {
        let base = reqwest::Url::parse(base_url)?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("importlyd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        // A password in the base URL is a secret too: scrubbed like the key.
        let password = base.password().map(|p| SecretString::from(p.to_owned()));
        Ok(Client {
            http,
            base,
            secrets: Arc::new(RwLock::new(Secrets::new(key, password))),
        })
    }

    /// Swaps the key in place (SIGHUP); calls already under way keep the old one. The old
    /// key is still scrubbed from what answers echo (see [`Secrets`]).
    pub fn set_key(&self, key: SecretString) {
        let mut guard = self.secrets.write().unwrap_or_else(|p| p.into_inner());
        guard.set_key(key);
    }

    /// The Authorization value, marked sensitive so that no HTTP-layer debug output shows
    /// it. `None` for a key that is not a valid header value (the request then goes without
    /// one and Importly answers 401, which pauses the queue with a clear reason).
    fn bearer(&self) -> Option<reqwest::header::HeaderValue> {
        let guard = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        let mut v = reqwest::header::HeaderValue::from_str(&format!(
            "Bearer {}",
            guard.key().expose_secret()
        ))
        .ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// `text` with every key this client has used (and the base URL's password), in every
    /// form an answer may echo it, replaced by `[REDACTED]`: whatever a server or a proxy
    /// echoes back is stored, logged and put in tickets, and no key may reach any of those.
    fn scrub(&self, text: &str) -> String {
        let guard = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        guard.scrub(text)
    }

    /// How many bytes past [`MAX_BODY`] to read so that a secret straddling the cut is
    /// still whole when scrubbed.
    fn scrub_margin(&self) -> usize {
        let guard = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        guard.longest_form()
    }

    /// `POST /import` or `POST /metadata` with `body` exactly as given.
    pub async fn submit(&self, kind: JobKind, body: &Value) -> Exchange {
        let path = kind.submit_path();
        let text = body.to_string();
        let url = self.url(path, None);
        let req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(text.clone());
        self.send(req, "POST", path.to_owned(), Some(text), Call::Submit)
            .await
    }

    /// `GET /import/status?id=` or `GET /metadata/status?id=`.
    pub async fn status(&self, kind: JobKind, job_id: &str) -> Exchange {
        let path = kind.status_path();
        let url = self.url(path, Some(job_id));
        let endpoint = match url.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let req = self.http.get(url);
        self.send(req, "GET", endpoint, None, Call::Status).await
    }

    fn url(&self, path: &str, id: Option<&str>) -> reqwest::Url {
        let mut url = self.base.clone();
        // Keep a base path prefix if the base URL has one (e.g. behind a proxy).
        let prefix = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{prefix}{path}"));
        if let Some(id) = id {
            url.query_pairs_mut().clear().append_pair("id", id);
        }
        url
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        method: &'static str,
        endpoint: String,
        request_body: Option<String>,
        call: Call,
    ) -> Exchange {
        let is_submit = call == Call::Submit;
        let started_at = SystemTime::now();
        let req = match self.bearer() {
            Some(auth) => req.header(reqwest::header::AUTHORIZATION, auth),
            None => req,
        };
        let result = req
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        let mut ex = Exchange {
            method,
            endpoint,
            request_body,
            started_at,
            finished_at: started_at,
            http_status: None,
            error: None,
            headers: RateHeaders::default(),
            response_body: None,
            body_truncated: false,
            outcome: Outcome::Transient {
                reason: String::new(),
                retry_after: None,
                ambiguous: false,
            },
        };
        match result {
            Err(e) => {
                ex.finished_at = SystemTime::now();
                // A request that may have been written to the wire before failing could
                // have created a job: Importly has no idempotency key.
                let ambiguous = is_submit && !e.is_connect() && !e.is_builder();
                let reason = bounded(&self.scrub(&transport_reason(e)), MAX_LOG_FIELD);
                ex.error = Some(reason.clone());
                ex.outcome = Outcome::Transient {
                    reason,
                    retry_after: None,
                    ambiguous,
                };
            }
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                ex.http_status = Some(status);
                ex.headers = RateHeaders::from_map(resp.headers());
                // Header texts are stored with the record too.
                ex.headers.window = ex.headers.window.as_deref().map(|w| self.scrub(w));
                ex.headers.plan = ex.headers.plan.as_deref().map(|p| self.scrub(p));
                let body = read_capped(&mut resp, MAX_ANSWER + self.scrub_margin()).await;
                // An answer over the cap is dropped here unread: the connection closes.
                drop(resp);
                ex.finished_at = SystemTime::now();
                match body {
                    Ok(bytes) => {
                        // Stored as text, so it is read as text (invalid UTF-8 replaced)
                        // and scrubbed before anything looks at it.
                        let over_cap = bytes.len() > MAX_ANSWER;
                        let body = self.scrub(&String::from_utf8_lossy(&bytes));
                        let (text, cut) = truncate_body(&body);
                        ex.outcome = if over_cap {
                            classify_over_cap(
                                call,
                                status,
                                &ex.headers,
                                text.as_bytes(),
                                ex.finished_at,
                            )
                        } else {
                            classify(call, status, &ex.headers, body.as_bytes(), ex.finished_at)
                        };
                        ex.response_body = Some(text);
                        ex.body_truncated = cut || over_cap;
                    }
                    Err(e) => {
                        let reason = self.scrub(&format!("reading body: {}", transport_reason(e)));
                        let reason = bounded(&reason, MAX_LOG_FIELD);
                        ex.error = Some(reason.clone());
                        ex.outcome = Outcome::Transient {
                            reason,
                            retry_after: None,
                            ambiguous: is_submit && (200..300).contains(&status),
                        };
                    }
                }
            }
        }
        ex
    }
}

/// A short human reason for a transport error, without the URL (it may carry a query id
/// but never the key; still, the reason reads better without it).
fn transport_reason(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else if e.is_request() {
        "request error"
    } else {
        "transport error"
    };
    let e = e.without_url();
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    format!("{kind}: {detail}")
}

/// Reads the body a chunk at a time and keeps at most `keep` bytes: an answer longer than
/// that is not read further (a server may send gigabytes; we hold one chunk past the cap at
/// most). A body that trickles is ended by the client's request timeout, which covers the
/// whole exchange, body included.
async fn read_capped(resp: &mut reqwest::Response, keep: usize) -> reqwest::Result<Vec<u8>> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = keep.saturating_sub(buf.len());
        if chunk.len() > room {
            // One byte past `keep` is enough to know the answer is over the cap.
            let take = chunk.len().min(room + 1);
            buf.extend_from_slice(&chunk[..take]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Keeps at most [`MAX_BODY`] bytes, cut on a character boundary.
fn truncate_body(text: &str) -> (String, bool) {
    if text.len() <= MAX_BODY {
        return (text.to_owned(), false);
    }
    let end = bounds::floor_char_boundary(text, MAX_BODY);
    (text[..end].to_owned(), true)
}

/// Option keys that are ours, never sent to Importly.
pub const LOCAL_OPTION_KEYS: [&str; 2] = ["preflight", "max_credits"];

/// The submit body: the row's `options` object with `url` set and our own keys removed.
/// Unknown keys pass through untouched.
pub fn submit_body(url: &str, options: &str) -> Result<Value, String> {
    let parsed: Value =
        serde_json::from_str(options).map_err(|e| format!("options is not valid JSON: {e}"))?;
    let Value::Object(mut map) = parsed else {
        return Err("options is not a JSON object".into());
    };
    for k in LOCAL_OPTION_KEYS {
        map.remove(k);
    }
    map.insert("url".into(), Value::String(url.to_owned()));
    Ok(Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(key: &str) -> Client {
        Client::new(
            "http://127.0.0.1:9",
            SecretString::from(key.to_owned()),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn the_key_is_scrubbed_from_echoed_bodies_and_absent_from_debug() {
        let c = client("sk_live_secret42");
        let echoed = r#"{"error":"bad key sk_live_secret42 (sk_live_secret42)"}"#;
        let out = c.scrub(echoed);
        assert_eq!(out, r#"{"error":"bad key [REDACTED] ([REDACTED])"}"#);
        assert!(!format!("{c:?}").contains("sk_live_secret42"));
        assert!(c.bearer().unwrap().is_sensitive());
        // A tiny key is not scrubbed out of ordinary text.
        assert_eq!(client("ab").scrub("abc"), "abc");
    }

    #[test]
    fn an_old_key_is_still_scrubbed_after_a_key_change() {
        let c = client("sk_live_old_one");
        c.set_key(SecretString::from("sk_live_new_one".to_owned()));
        let echoed = r#"{"error":"revoked: sk_live_old_one","url":"x?key=sk_live_new_one"}"#;
        assert_eq!(
            c.scrub(echoed),
            r#"{"error":"revoked: [REDACTED]","url":"x?key=[REDACTED]"}"#
        );
        let encoded = client("sk/live key");
        assert_eq!(
            encoded.scrub(r#"a=sk%2Flive%20key b="sk\/live key""#),
            r#"a=[REDACTED] b="[REDACTED]""#
        );
    }

    #[test]
    fn the_base_urls_userinfo_is_absent_from_debug_and_its_password_scrubbed() {
        let c = Client::new(
            "https://ops:hunter2pass@proxy.example/importly",
            SecretString::from("sk_live_secret42".to_owned()),
            Duration::from_secs(1),
        )
        .unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2pass") && !debug.contains("ops:"),
            "{debug}"
        );
        assert!(debug.contains("proxy.example/importly"), "{debug}");
        assert_eq!(c.scrub("echo hunter2pass"), "echo [REDACTED]");
    }

    #[test]
    fn body_merges_options_and_drops_ours() {
        let b = submit_body(
            "https://e.com/a.mp4",
            r#"{"videoQuality":"720p","preflight":true,"max_credits":3,"url":"x","custom":1}"#,
        )
        .unwrap();
        assert_eq!(
            b,
            serde_json::json!({"url":"https://e.com/a.mp4","videoQuality":"720p","custom":1})
        );
        assert!(submit_body("https://e.com", "[1]").is_err());
    }
}
