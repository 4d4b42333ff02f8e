//! A local, faithful simulator of the Importly API (see `shared/importly-api.md`), for tests,
//! benchmarks and the demo. Start it in-process with [`Sim::start`], or standalone with the
//! `importly-sim` binary.
//!
//! # Behaviour
//! Every API request goes through these checks, in order:
//! 1. `Authorization: Bearer <api_key>`; missing or wrong: 401, not counted in any bucket.
//! 2. The endpoint's rate-limit bucket (fixed windows aligned to multiples of the window
//!    length in unix time); exhausted: 429 with `retryAfter` and `Retry-After`, not counted.
//!    `POST /import` uses `import`, `/metadata` uses `metadata`, both status calls use `status`.
//! 3. The request is counted.
//! 4. Fault injection from [`FaultMix`] (one seeded draw per counted request): a 500, a 200
//!    with a non-JSON body, or a normal answer delivered only after `timeout_delay` (the job is
//!    created even if the client gave up: an ambiguous submit). The same draw picks the
//!    hostile answers of [`HostileMix`]: a 500 with `Retry-After: 18446744073709551615`; or
//!    the normal answer (a job may be created) sent oversized (one string grown to
//!    `oversized_bytes`, streamed), with a `long_id_len`-character `data.jobId`, or a byte at
//!    a time over `trickle_duration`.
//! 5. Validation: malformed JSON, a missing or non-http(s) `url`, a bad documented option
//!    (`includeVideo`/`includeAudio` not boolean, `videoQuality`/`audioQuality` not one of the
//!    documented values), a missing `id`: 400. Unknown body fields are ignored.
//! 6. URL rules (below): 400, 500 or 404.
//! 7. Credits (imports only): 402 when `credits - reserved < cost`.
//! 8. Concurrency: 429 without `retryAfter` when the jobs in progress (plus held slots, for
//!    imports) reach the limit; counted.
//! 9. Accept: 200 with `data.status = "queued"`.
//!
//! Every answer to an API endpoint carries the `X-RateLimit-*` headers of its bucket.
//!
//! A job is `queued` for the first third of its duration, `processing` after, and `completed`
//! (or `failed`) at the end, whether polled or not. Its concurrency slot is held until then,
//! even if its status already answers 404 because it is older than `job_ttl`. An import's
//! cost is reserved when accepted and charged when it completes; a failed job, or one whose
//! status expired before it finished (`job_ttl` shorter than its duration), costs nothing.
//!
//! A start request whose body carries an http(s) `webhookUrl` gets a completion callback:
//! when its job ends, its final `data` object is POSTed there, retried on a non-2xx answer
//! or none ([`WebhookConfig`]: `attempts` in all, `interval` apart; counters in
//! [`Sim::webhook_counts`]).
//!
//! # URL rules
//! The media URL of a start request (`POST /import`, `POST /metadata`, `GET /metadata?url=`)
//! steers the outcome, so tests and the demo can ask for each case:
//!
//! | URL | outcome |
//! |---|---|
//! | path containing `/bad` | 400 `Invalid media URL` |
//! | path containing `/flaky500-N` (N a number) | the first N start requests of that exact URL (counted per endpoint kind: import, metadata) that reach this check get 500 `Internal server error`; later ones go on normally |
//! | host `unreachable.example`, or path containing `/notfound` | 404 `Media URL is not publicly accessible` |
//! | path containing `/fail` | accepted; the job ends `failed` with `data.error = "Unsupported media"` and costs nothing |
//! | path containing `/slow` | the job takes 3x `job_duration` (or `metadata_duration`) |
//! | a path segment exactly `cost-N` | the import costs N credits instead of `import_cost`; metadata format costs are their base costs (360p 1, 720p 2, 1080p 4, audio 1) times N (times `import_cost` without the segment) |
//!
//! The rules look at the path only (not the query), and apply in the order of the table.

mod bucket;
mod config;
mod jobs;
mod reply;
mod rules;
mod server;
mod state;
mod stats;
mod webhook;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{BucketConfig, FaultMix, HostileMix, SimConfig, WebhookConfig};
pub use stats::{JobTimes, SimStats};
pub use webhook::WebhookCounts;

use server::{Shared, lock};
use state::{State, now_ms};

/// A running simulator. Clones share the same server; [`Sim::shutdown`] stops it for all.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    state: Shared,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// How long `shutdown` lets in-flight requests finish before cutting them off (a request held
/// by an injected timeout would otherwise keep it waiting for `timeout_delay`).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl Sim {
    /// Starts a simulator on `127.0.0.1` with a port of the system's choosing.
    pub async fn start(cfg: SimConfig) -> anyhow::Result<Sim> {
        Self::start_on(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a simulator listening on `addr`; returns once it accepts connections.
    pub async fn start_on(cfg: SimConfig, addr: SocketAddr) -> anyhow::Result<Sim> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the simulator to {addr}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let state: Shared = Arc::new(Mutex::new(State::new(cfg)));
        let app = server::router(state.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async {
                // A dropped sender stops the server too.
                let _ = stop_rx.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %e, "importly simulator stopped");
            }
        });
        Ok(Sim {
            inner: Arc::new(Inner {
                addr,
                state,
                stop: Mutex::new(Some(stop_tx)),
                task: Mutex::new(Some(task)),
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://IP:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A snapshot of the counters, with jobs finished by now already charged.
    pub fn stats(&self) -> SimStats {
        lock(&self.inner.state).stats(now_ms())
    }

    /// Sets the credit balance (an operator topping up, or the account running dry).
    pub fn set_credits(&self, credits: i64) {
        lock(&self.inner.state).set_credits(credits);
    }

    /// Rotates the key: from now on only `key` is accepted.
    pub fn set_api_key(&self, key: &str) {
        lock(&self.inner.state).set_api_key(key);
    }

    /// Another client of the same account holds `n` import concurrency slots (replacing any
    /// earlier hold) until [`Sim::release_slots`].
    pub fn hold_slots(&self, n: u32) {
        lock(&self.inner.state).hold_slots(n, now_ms());
    }

    pub fn release_slots(&self) {
        lock(&self.inner.state).hold_slots(0, now_ms());
    }

    /// Replaces the fault mix; the RNG keeps its sequence.
    pub fn set_faults(&self, f: FaultMix) {
        lock(&self.inner.state).set_faults(f);
    }

    /// Replaces the hostile mix; the RNG keeps its sequence.
    pub fn set_hostile(&self, h: HostileMix) {
        lock(&self.inner.state).set_hostile(h);
    }

    /// What the webhook deliveries of jobs started with `webhookUrl` did so far.
    pub fn webhook_counts(&self) -> std::sync::Arc<WebhookCounts> {
        lock(&self.inner.state).hooks().counts.clone()
    }

    /// Stops accepting connections and ends the server, giving in-flight requests a short grace.
    pub async fn shutdown(self) {
        let stop = self
            .inner
            .stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

/// A duration in whole milliseconds, saturating (the simulator's internal clock unit).
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
