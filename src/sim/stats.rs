//! Counters the simulator keeps so tests and tools can check what a client did.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// A snapshot of the simulator's counters. "Received" counters count every request of that
/// kind, whatever its answer (401 and 429 included).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SimStats {
    /// `POST /import` requests received (any outcome).
    pub import_posts: u64,
    pub accepted_imports: u64,
    /// Every `POST /import` whose body had a string `url`, by that url, any outcome.
    pub import_posts_by_url: BTreeMap<String, u64>,
    pub accepted_by_url: BTreeMap<String, u64>,
    /// `GET /import/status` requests received.
    pub status_requests: u64,
    /// `POST /metadata` and `GET /metadata` requests received.
    pub metadata_posts: u64,
    /// `GET /metadata/status` requests received.
    pub metadata_status_requests: u64,
    /// Highest number of import jobs in progress at once, ours plus held slots.
    pub max_concurrent_imports: u32,
    pub max_concurrent_metadata: u32,
    /// Rate-limit 429s sent, all buckets.
    pub rate_limited: u64,
    /// Concurrency 429s sent.
    pub concurrency_limited: u64,
    pub unauthorized: u64,
    pub payment_required: u64,
    pub bad_requests: u64,
    pub not_found: u64,
    /// 500s sent, injected or from a `/flaky500-N` URL.
    pub server_errors: u64,
    /// Answers delayed by an injected timeout.
    pub timeouts: u64,
    /// Non-JSON 200s sent.
    pub garbage: u64,
    /// 500s sent with `Retry-After: 18446744073709551615` (hostile).
    pub huge_retries: u64,
    /// Answers sent with one string grown to `oversized_bytes` (hostile).
    pub oversized: u64,
    /// 2xx answers sent with a `long_id_len`-character job id (hostile).
    pub long_ids: u64,
    /// Answers sent a byte at a time over `trickle_duration` (hostile).
    pub trickles: u64,
    /// `(url, when)` of every `POST /import`, in order (url empty when the body had none);
    /// serialized as `[url, unix_ms]` pairs.
    #[serde(serialize_with = "unix_ms_pairs")]
    pub post_times: Vec<(String, SystemTime)>,
    /// Credit balance now (completed imports charged).
    pub credits: i64,
    /// Every accepted import: when it was accepted and when it ends (unix ms), in order.
    pub import_jobs: Vec<JobTimes>,
    /// The last `POST /import` JSON body seen per url, so a test can check which options a
    /// client passed through (and which it kept to itself).
    pub last_import_body_by_url: BTreeMap<String, serde_json::Value>,
}

/// An accepted import's life, for measuring how soon a client notices its end.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobTimes {
    pub job_id: String,
    pub url: String,
    pub accepted_ms: u64,
    pub ends_ms: u64,
}

/// Milliseconds since the unix epoch, 0 for times before it.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn unix_ms_pairs<S: Serializer>(v: &[(String, SystemTime)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|(url, t)| (url, unix_ms(*t))))
}
