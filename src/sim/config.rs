//! Configuration of the simulator: limits, durations, credits and fault mix.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the simulator can be told. Every field has a default (`SimConfig::default()`),
/// so a TOML file or a test only names what it changes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct SimConfig {
    /// The only key the server accepts as `Authorization: Bearer <api_key>`.
    pub api_key: String,
    /// Starting credit balance.
    pub credits: i64,
    /// Credits charged per completed import (a `cost-N` path segment overrides it).
    pub import_cost: i64,
    /// `POST /import` bucket and import concurrency.
    pub import: BucketConfig,
    /// Bucket shared by `/import/status` and `/metadata/status` (concurrency unused).
    pub status: BucketConfig,
    /// `/metadata` bucket and metadata concurrency.
    pub metadata: BucketConfig,
    /// Lifetime of an import job: queued for the first third, processing after, done at the end.
    #[serde(with = "humantime_serde")]
    pub job_duration: Duration,
    /// When set, each import lasts a duration drawn uniformly from `job_duration` to this
    /// (its own seeded RNG, so the fault sequence of a seed is unchanged).
    #[serde(with = "humantime_serde")]
    pub job_duration_max: Option<Duration>,
    /// Lifetime of a metadata job, same phases as an import.
    #[serde(with = "humantime_serde")]
    pub metadata_duration: Duration,
    /// How long after its creation a job's status can be read; 404 after.
    #[serde(with = "humantime_serde")]
    pub job_ttl: Duration,
    /// Sent as `X-RateLimit-Plan`.
    pub plan: String,
    /// Probabilities of injected faults, drawn per counted request.
    pub faults: FaultMix,
    /// Probabilities of hostile answers (absurd sizes, headers and pace), drawn from the
    /// same per-request draw after `faults`.
    pub hostile: HostileMix,
    /// How completion callbacks (`webhookUrl`) are retried.
    pub webhooks: WebhookConfig,
    /// Seed of the fault RNG, so a fault run can be replayed.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_key: "sim-key".to_owned(),
            credits: 1_000_000,
            import_cost: 1,
            import: BucketConfig::new(240, HOUR, 2),
            status: BucketConfig::new(3600, HOUR, 0),
            metadata: BucketConfig::new(1000, HOUR, 5),
            job_duration: Duration::from_secs(3),
            job_duration_max: None,
            metadata_duration: Duration::from_secs(1),
            job_ttl: Duration::from_secs(7 * 24 * 3600),
            plan: "paid".to_owned(),
            faults: FaultMix::default(),
            hostile: HostileMix::default(),
            webhooks: WebhookConfig::default(),
            seed: 1,
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// One rate-limit bucket: `requests` per fixed `window`, plus a concurrency cap where the
/// endpoint has one.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct BucketConfig {
    pub requests: u64,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub concurrent: u32,
}

impl BucketConfig {
    pub fn new(requests: u64, window: Duration, concurrent: u32) -> Self {
        Self {
            requests,
            window,
            concurrent,
        }
    }
}

/// Share of counted requests that get an injected fault instead of (or, for a timeout, on top
/// of) their normal answer. The three probabilities are cumulative slices of one draw.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct FaultMix {
    /// Answer 500 `Internal server error`; nothing else happens.
    pub p500: f64,
    /// Handle the request normally (a job may be created) but sleep `timeout_delay` before
    /// answering, as a server whose reply got stuck: the ambiguous submit of the docs.
    pub ptimeout: f64,
    /// Answer 200 with a body that is not JSON; nothing else happens.
    pub pgarbage: f64,
    #[serde(with = "humantime_serde")]
    pub timeout_delay: Duration,
}

impl Default for FaultMix {
    fn default() -> Self {
        Self {
            p500: 0.0,
            ptimeout: 0.0,
            pgarbage: 0.0,
            timeout_delay: Duration::from_secs(60),
        }
    }
}

/// Answers a broken server or proxy might send, which the daemon must survive without
/// crashing, wedging or growing (issue 11). Their probabilities are further slices of the
/// same draw as [`FaultMix`], after its own: with both mixes, a draw past the sum of all of
/// them is a normal answer.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct HostileMix {
    /// Answer 500 with `Retry-After: 18446744073709551615` (u64::MAX), and that number as
    /// the body's `retryAfter` and `reset`; nothing else happens.
    pub phuge_retry: f64,
    /// Handle the request normally (a job may be created), then send its answer with one
    /// string grown to `oversized_bytes`: a 2xx submit's `data.jobId`, a status answer's
    /// `data.message`, an error's `error`. Streamed, so the simulator never holds it whole.
    pub poversized: f64,
    /// Handle the request normally, then send a 2xx answer's `data.jobId` as `long_id_len`
    /// characters (the answer stays small: this is the job-id check, not the size cap).
    pub plong_id: f64,
    /// Handle the request normally, then send its answer a byte at a time, spread over
    /// `trickle_duration`: a body that trickles past any sane request timeout.
    pub ptrickle: f64,
    pub oversized_bytes: u64,
    pub long_id_len: usize,
    #[serde(with = "humantime_serde")]
    pub trickle_duration: Duration,
}

impl Default for HostileMix {
    fn default() -> Self {
        Self {
            phuge_retry: 0.0,
            poversized: 0.0,
            plong_id: 0.0,
            ptrickle: 0.0,
            oversized_bytes: 8 * 1024 * 1024,
            long_id_len: 4096,
            trickle_duration: Duration::from_secs(60),
        }
    }
}

/// Webhook deliveries: a job started with `webhookUrl` is POSTed there when it ends; a
/// non-2xx answer or none is retried, `attempts` in all, `interval` apart (Importly: about
/// 3, a minute apart).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct WebhookConfig {
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            interval: Duration::from_secs(60),
        }
    }
}
