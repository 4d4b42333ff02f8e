//! The simulator's whole state and the order of checks every API request goes through.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::bucket::{Bucket, RateInfo, format_window};
use super::config::{FaultMix, HostileMix, SimConfig};
use super::duration_ms;
use super::jobs::{Job, Kind};
use super::reply::{Payload, Reply, oversized_parts};
use super::rules::{UrlRules, parse_media_url};
use super::stats::SimStats;
use super::webhook::{Delivery, Sender};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    ImportStart,
    ImportStatus,
    MetadataStart,
    MetadataStatus,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Self::ImportStart => "/import",
            Self::ImportStatus => "/import/status",
            Self::MetadataStart => "/metadata",
            Self::MetadataStatus => "/metadata/status",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Self::ImportStart | Self::ImportStatus => Kind::Import,
            Self::MetadataStart | Self::MetadataStatus => Kind::Metadata,
        }
    }

    fn is_start(self) -> bool {
        matches!(self, Self::ImportStart | Self::MetadataStart)
    }
}

/// What the request carried, as far as the API cares.
#[derive(Debug)]
pub(crate) enum Input {
    /// A JSON body (`POST /import`, `POST /metadata`).
    Body(Bytes),
    /// The one query parameter the endpoint reads (`url` or `id`), if present and decodable.
    Param(Option<String>),
}

#[derive(Debug)]
pub(crate) struct Request {
    pub endpoint: Endpoint,
    /// The raw `Authorization` header.
    pub auth: Option<String>,
    pub input: Input,
}

/// A start request's url and body, or the 400 message when they are unusable.
type StartParams = Result<(String, Option<Value>), String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    ServerError,
    Timeout,
    Garbage,
    HugeRetry,
    Oversized,
    LongId,
    Trickle,
}

/// A job still holding a concurrency slot (and, for imports, reserved credits). Kept apart from
/// the job table because the slot outlives the job's readable status (TTL).
#[derive(Debug)]
struct Active {
    kind: Kind,
    finish_ms: u64,
    /// Credits reserved for it (imports only).
    reserved: i64,
    /// Whether finishing charges `reserved`: it completes, and before its status expires (a
    /// failed or expired job costs nothing).
    charge: bool,
}

pub(crate) struct State {
    cfg: SimConfig,
    credits: i64,
    reserved: i64,
    held_slots: u32,
    import_bucket: Bucket,
    status_bucket: Bucket,
    metadata_bucket: Bucket,
    jobs: HashMap<String, Job>,
    active: Vec<Active>,
    flaky_seen: HashMap<(Kind, String), u64>,
    rng: StdRng,
    /// Draws import durations when `job_duration_max` is set (apart from `rng`, so a seed's
    /// fault sequence does not depend on it).
    durations: StdRng,
    /// Makes job ids of two simulator runs differ, so a restarted sim never answers for a job
    /// id of its previous life.
    id_prefix: String,
    next_seq: u64,
    stats: SimStats,
    /// Webhook deliveries of jobs accepted since the server last took them.
    deliveries: Vec<Delivery>,
    hooks: Sender,
}

/// Milliseconds since the unix epoch now.
pub(crate) fn now_ms() -> u64 {
    super::stats::unix_ms(SystemTime::now())
}

impl State {
    pub fn new(cfg: SimConfig) -> Self {
        Self {
            credits: cfg.credits,
            reserved: 0,
            held_slots: 0,
            import_bucket: Bucket::new(&cfg.import),
            status_bucket: Bucket::new(&cfg.status),
            metadata_bucket: Bucket::new(&cfg.metadata),
            jobs: HashMap::new(),
            active: Vec::new(),
            flaky_seen: HashMap::new(),
            rng: StdRng::seed_from_u64(cfg.seed),
            durations: StdRng::seed_from_u64(cfg.seed ^ 0x5eed_d0a7),
            id_prefix: format!("{:x}", now_ms() % 0x1_0000_0000),
            next_seq: 0,
            stats: SimStats::default(),
            deliveries: Vec::new(),
            hooks: Sender {
                cfg: cfg.webhooks.clone(),
                ..Sender::default()
            },
            cfg,
        }
    }

    // ---- control surface (used by `Sim`) ----

    pub fn stats(&mut self, now: u64) -> SimStats {
        self.settle(now);
        let mut s = self.stats.clone();
        s.credits = self.credits;
        s
    }

    pub fn set_credits(&mut self, credits: i64) {
        self.credits = credits;
    }

    pub fn set_api_key(&mut self, key: &str) {
        key.clone_into(&mut self.cfg.api_key);
    }

    pub fn set_faults(&mut self, faults: FaultMix) {
        self.cfg.faults = faults;
    }

    pub fn set_hostile(&mut self, hostile: HostileMix) {
        self.cfg.hostile = hostile;
    }

    pub fn hold_slots(&mut self, n: u32, now: u64) {
        self.settle(now);
        self.held_slots = n;
        self.note_concurrency(Kind::Import);
    }

    // ---- the request pipeline ----

    /// Runs one API request through auth, rate limit, counting, faults, validation, URL rules,
    /// credits and concurrency, in that order.
    pub fn handle(&mut self, req: &Request, now: u64) -> Reply {
        self.settle(now);
        let ep = req.endpoint;
        let start = ep.is_start().then(|| start_params(ep, &req.input));
        self.record_received(ep, start.as_ref(), now);

        if !self.authorized(req.auth.as_deref()) {
            let rate = self.bucket(ep).peek(now);
            return self.finish(self.error(401, "Invalid or missing API key", rate));
        }
        let rate = match self.bucket(ep).try_take(now) {
            Ok(rate) => rate,
            Err(rate) => return self.rate_limited(ep, rate, now),
        };
        let fault = self.draw_fault();
        let mut reply = match fault {
            Some(Fault::ServerError) => self.error(500, "Internal server error", rate),
            Some(Fault::Garbage) => self.garbage(rate),
            Some(Fault::HugeRetry) => self.huge_retry(rate),
            _ => match start {
                Some(params) => self.start_job(ep.kind(), params, rate, now),
                None => self.job_status(ep.kind(), &req.input, rate, now),
            },
        };
        match fault {
            Some(Fault::Timeout) => {
                self.stats.timeouts += 1;
                reply.delay = Some(self.cfg.faults.timeout_delay);
            }
            Some(Fault::Oversized) => self.oversize(&mut reply, ep.is_start()),
            Some(Fault::LongId) => self.long_id(&mut reply),
            Some(Fault::Trickle) => {
                self.stats.trickles += 1;
                reply.trickle = Some(self.cfg.hostile.trickle_duration);
            }
            _ => {}
        }
        self.finish(reply)
    }

    fn authorized(&self, auth: Option<&str>) -> bool {
        auth.and_then(|h| h.trim().strip_prefix("Bearer "))
            .is_some_and(|key| key.trim() == self.cfg.api_key)
    }

    fn bucket(&mut self, ep: Endpoint) -> &mut Bucket {
        match ep {
            Endpoint::ImportStart => &mut self.import_bucket,
            Endpoint::MetadataStart => &mut self.metadata_bucket,
            Endpoint::ImportStatus | Endpoint::MetadataStatus => &mut self.status_bucket,
        }
    }

    fn record_received(&mut self, ep: Endpoint, start: Option<&StartParams>, now: u64) {
        let s = &mut self.stats;
        match ep {
            Endpoint::ImportStart => {
                s.import_posts += 1;
                let (url, body) = match start {
                    Some(Ok((url, body))) => (url.clone(), body.clone()),
                    _ => (String::new(), None),
                };
                let when = UNIX_EPOCH + Duration::from_millis(now);
                s.post_times.push((url.clone(), when));
                if !url.is_empty() {
                    *s.import_posts_by_url.entry(url.clone()).or_default() += 1;
                    if let Some(body) = body {
                        s.last_import_body_by_url.insert(url, body);
                    }
                }
            }
            Endpoint::ImportStatus => s.status_requests += 1,
            Endpoint::MetadataStart => s.metadata_posts += 1,
            Endpoint::MetadataStatus => s.metadata_status_requests += 1,
        }
    }

    /// Tallies the answer's status in the stats.
    fn finish(&mut self, reply: Reply) -> Reply {
        let s = &mut self.stats;
        match reply.status {
            400 => s.bad_requests += 1,
            401 => s.unauthorized += 1,
            402 => s.payment_required += 1,
            404 => s.not_found += 1,
            500 => s.server_errors += 1,
            _ => {}
        }
        if matches!(reply.payload, Payload::Garbage) {
            s.garbage += 1;
        }
        reply
    }

    fn draw_fault(&mut self) -> Option<Fault> {
        let (f, h) = (&self.cfg.faults, &self.cfg.hostile);
        // Always draw, so the fault sequence depends only on the seed and the request count.
        let r: f64 = self.rng.random();
        // Cumulative slices of the one draw, in this order (the first three as before the
        // hostile modes existed, so old seeds replay the same).
        let slices = [
            (f.p500, Fault::ServerError),
            (f.ptimeout, Fault::Timeout),
            (f.pgarbage, Fault::Garbage),
            (h.phuge_retry, Fault::HugeRetry),
            (h.poversized, Fault::Oversized),
            (h.plong_id, Fault::LongId),
            (h.ptrickle, Fault::Trickle),
        ];
        let mut edge = 0.0;
        for (p, fault) in slices {
            edge += p;
            if r < edge {
                return Some(fault);
            }
        }
        None
    }

    /// A 500 whose every wait hint is u64::MAX: the answer that once overflowed the
    /// daemon's time arithmetic.
    fn huge_retry(&mut self, rate: RateInfo) -> Reply {
        self.stats.huge_retries += 1;
        let body = json!({
            "success": false,
            "error": "Internal server error",
            "retryAfter": u64::MAX,
            "reset": u64::MAX,
        });
        let mut reply = Reply::new(500, body, rate, &self.cfg.plan);
        reply.retry_after = Some(u64::MAX);
        reply
    }

    /// Grows one string of a JSON answer to `oversized_bytes` (see [`oversized_parts`]).
    fn oversize(&mut self, reply: &mut Reply, start: bool) {
        let Payload::Json(body) = &reply.payload else {
            return;
        };
        let start = start && (200..300).contains(&reply.status);
        let (head, tail) = oversized_parts(body, start);
        reply.payload = Payload::Oversized {
            head,
            pad: self.cfg.hostile.oversized_bytes,
            tail,
        };
        self.stats.oversized += 1;
    }

    /// Replaces a 2xx answer's `data.jobId` by `long_id_len` characters; other answers
    /// go out as they are.
    fn long_id(&mut self, reply: &mut Reply) {
        if !(200..300).contains(&reply.status) {
            return;
        }
        let Payload::Json(body) = &mut reply.payload else {
            return;
        };
        if let Some(data) = body.get_mut("data").and_then(Value::as_object_mut) {
            let id = "i".repeat(self.cfg.hostile.long_id_len);
            data.insert("jobId".into(), Value::String(id));
            self.stats.long_ids += 1;
        }
    }

    fn error(&self, status: u16, message: &str, rate: RateInfo) -> Reply {
        Reply::error(status, message, rate, &self.cfg.plan)
    }

    fn garbage(&self, rate: RateInfo) -> Reply {
        let mut reply = Reply::new(200, Value::Null, rate, &self.cfg.plan);
        reply.payload = Payload::Garbage;
        reply
    }

    fn rate_limited(&mut self, ep: Endpoint, rate: RateInfo, now: u64) -> Reply {
        self.stats.rate_limited += 1;
        let retry_after = rate.retry_after(now);
        let body = json!({
            "success": false,
            "error": format!(
                "Rate limit exceeded. Limit: {} requests per {}",
                rate.limit,
                format_window(rate.window_ms)
            ),
            "limit": rate.limit,
            "remaining": 0,
            "reset": rate.reset_ms,
            "retryAfter": retry_after,
            "endpoint": ep.path(),
        });
        let mut reply = Reply::new(429, body, rate, &self.cfg.plan);
        reply.retry_after = Some(retry_after);
        reply
    }

    // ---- start endpoints ----

    fn start_job(&mut self, kind: Kind, params: StartParams, rate: RateInfo, now: u64) -> Reply {
        let (url, body) = match params {
            Ok(p) => p,
            Err(msg) => return self.error(400, &msg, rate),
        };
        let options = body.as_ref().filter(|_| kind == Kind::Import);
        if let Some(msg) = options.and_then(invalid_option) {
            return self.error(400, &msg, rate);
        }
        let Some(media) = parse_media_url(&url) else {
            return self.error(400, "Invalid url: must be an absolute http(s) URL", rate);
        };
        let rules = UrlRules::of(&media);
        if rules.bad {
            return self.error(400, "Invalid media URL", rate);
        }
        if self.flaky_hit(kind, &url, rules.flaky500) {
            return self.error(500, "Internal server error", rate);
        }
        if rules.not_found {
            return self.error(404, "Media URL is not publicly accessible", rate);
        }
        let cost = rules.cost.unwrap_or(self.cfg.import_cost);
        if kind == Kind::Import && self.credits.saturating_sub(self.reserved) < cost {
            let msg = format!(
                "Insufficient credits. This import needs {cost} credits; {} available.",
                self.credits.saturating_sub(self.reserved).max(0)
            );
            return self.error(402, &msg, rate);
        }
        let (current, limit) = (self.in_progress(kind), self.concurrency_limit(kind));
        if current >= limit {
            return self.concurrency_limited(kind, current, limit, rate);
        }
        // A start request may ask for a completion callback (POST /import and POST
        // /metadata bodies; GET /metadata has none).
        let hook = body
            .as_ref()
            .and_then(|b| b.get("webhookUrl"))
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .map(str::to_owned);
        let seq = self.next_seq;
        let reply = self.accept(kind, url, &rules, cost, rate, now);
        if let Some(url) = hook
            && self.next_seq != seq
            && let Some(job) = self.jobs.get(&self.job_id(kind))
        {
            let job = job.clone();
            self.deliveries.push(Delivery { url, job });
        }
        reply
    }

    /// Counts a start request for a `/flaky500-N` URL; true while it is one of the first N.
    fn flaky_hit(&mut self, kind: Kind, url: &str, flaky: Option<u64>) -> bool {
        let Some(n) = flaky else { return false };
        let seen = self.flaky_seen.entry((kind, url.to_owned())).or_default();
        *seen += 1;
        *seen <= n
    }

    fn in_progress(&self, kind: Kind) -> u32 {
        let ours = self.active.iter().filter(|a| a.kind == kind).count();
        let held = if kind == Kind::Import {
            self.held_slots
        } else {
            0
        };
        u32::try_from(ours).unwrap_or(u32::MAX).saturating_add(held)
    }

    fn concurrency_limit(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Import => self.cfg.import.concurrent,
            Kind::Metadata => self.cfg.metadata.concurrent,
        }
    }

    fn concurrency_limited(
        &mut self,
        kind: Kind,
        current: u32,
        limit: u32,
        rate: RateInfo,
    ) -> Reply {
        self.stats.concurrency_limited += 1;
        let (noun, endpoint) = match kind {
            Kind::Import => ("import", "/import"),
            Kind::Metadata => ("metadata", "/metadata"),
        };
        let body = json!({
            "success": false,
            "error": format!("Concurrent limit exceeded. Max {limit} concurrent {noun} jobs allowed."),
            "concurrentLimit": limit,
            "currentConcurrent": current,
            "endpoint": endpoint,
        });
        Reply::new(429, body, rate, &self.cfg.plan)
    }

    fn accept(
        &mut self,
        kind: Kind,
        url: String,
        rules: &UrlRules,
        cost: i64,
        rate: RateInfo,
        now: u64,
    ) -> Reply {
        let base = match (kind, self.cfg.job_duration_max) {
            (Kind::Import, Some(max)) if max > self.cfg.job_duration => {
                let min = self.cfg.job_duration;
                min + (max - min).mul_f64(self.durations.random::<f64>())
            }
            (Kind::Import, _) => self.cfg.job_duration,
            (Kind::Metadata, _) => self.cfg.metadata_duration,
        };
        let duration = duration_ms(base).saturating_mul(if rules.slow { 3 } else { 1 });
        self.next_seq += 1;
        let id = self.job_id(kind);
        let job = Job {
            id: id.clone(),
            kind,
            url: url.clone(),
            created_ms: now,
            finish_ms: now.saturating_add(duration),
            fails: rules.fail,
            cost,
        };
        let data = job.data(now);
        let reserved = if kind == Kind::Import { cost } else { 0 };
        self.active.push(Active {
            kind,
            finish_ms: job.finish_ms,
            reserved,
            charge: !job.fails && duration < duration_ms(self.cfg.job_ttl),
        });
        self.jobs.insert(id, job);
        if kind == Kind::Import {
            self.reserved = self.reserved.saturating_add(reserved);
            self.stats.accepted_imports += 1;
            self.stats.import_jobs.push(super::stats::JobTimes {
                job_id: self.job_id(kind),
                url: url.clone(),
                accepted_ms: now,
                ends_ms: now.saturating_add(duration),
            });
            *self.stats.accepted_by_url.entry(url).or_default() += 1;
        }
        self.note_concurrency(kind);
        Reply::success(data, rate, &self.cfg.plan)
    }

    fn note_concurrency(&mut self, kind: Kind) {
        let now = self.in_progress(kind);
        let max = match kind {
            Kind::Import => &mut self.stats.max_concurrent_imports,
            Kind::Metadata => &mut self.stats.max_concurrent_metadata,
        };
        *max = (*max).max(now);
    }

    /// The id of the latest job of `kind` (`next_seq` numbers them).
    fn job_id(&self, kind: Kind) -> String {
        let prefix = if kind == Kind::Import { "imp" } else { "meta" };
        format!("{prefix}_{}_{}", self.id_prefix, self.next_seq)
    }

    /// Webhook deliveries of jobs accepted since the last call, for the server to make.
    pub fn take_deliveries(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.deliveries)
    }

    /// How deliveries are made, and their counters.
    pub fn hooks(&self) -> &Sender {
        &self.hooks
    }

    // ---- status endpoints ----

    fn job_status(&mut self, kind: Kind, input: &Input, rate: RateInfo, now: u64) -> Reply {
        let id = match input {
            Input::Param(Some(id)) if !id.is_empty() => id,
            _ => return self.error(400, "Missing required parameter: id", rate),
        };
        let expired = |j: &Job| now >= j.created_ms.saturating_add(duration_ms(self.cfg.job_ttl));
        match self.jobs.get(id).filter(|j| j.kind == kind) {
            Some(job) if !expired(job) => Reply::success(job.data(now), rate, &self.cfg.plan),
            Some(_) => {
                // Its concurrency slot, if still running, lives on in `active`.
                self.jobs.remove(id);
                self.error(404, "Job not found", rate)
            }
            None => self.error(404, "Job not found", rate),
        }
    }

    /// Releases the slots of jobs that have finished and charges completed imports. Called
    /// before anything looks at credits or concurrency, so the effect is as if it happened at
    /// the job's finish time.
    fn settle(&mut self, now: u64) {
        let (credits, reserved) = (&mut self.credits, &mut self.reserved);
        self.active.retain(|a| {
            if now < a.finish_ms {
                return true;
            }
            *reserved = reserved.saturating_sub(a.reserved);
            if a.charge {
                *credits = credits.saturating_sub(a.reserved);
            }
            false
        });
    }
}

/// Reads the url (and, for a JSON body, the whole body) of a start request.
fn start_params(ep: Endpoint, input: &Input) -> StartParams {
    let noun = if ep == Endpoint::ImportStart {
        "import"
    } else {
        "metadata"
    };
    match input {
        Input::Param(Some(url)) if !url.is_empty() => Ok((url.clone(), None)),
        Input::Param(_) => Err("Missing required parameter: url".to_owned()),
        Input::Body(bytes) => {
            let body: Value = serde_json::from_slice(bytes)
                .map_err(|e| format!("Malformed JSON in {noun} request body: {e}"))?;
            if !body.is_object() {
                return Err("Request body must be a JSON object".to_owned());
            }
            match body.get("url") {
                Some(Value::String(url)) if !url.is_empty() => Ok((url.clone(), Some(body))),
                Some(Value::String(_)) | None | Some(Value::Null) => {
                    Err("Missing required parameter: url".to_owned())
                }
                Some(_) => Err("Invalid parameter: url must be a string".to_owned()),
            }
        }
    }
}

const VIDEO_QUALITIES: [&str; 10] = [
    "lowest", "144p", "240p", "360p", "480p", "720p", "1080p", "1440p", "2160p", "best",
];
const AUDIO_QUALITIES: [&str; 5] = ["lowest", "low", "medium", "high", "best"];

/// The 400 message for a documented option with a wrong type or value; unknown fields pass.
fn invalid_option(body: &Value) -> Option<String> {
    for key in ["includeVideo", "includeAudio"] {
        if body
            .get(key)
            .is_some_and(|v| !v.is_boolean() && !v.is_null())
        {
            return Some(format!("Invalid parameter: {key} must be a boolean"));
        }
    }
    let enums: [(&str, &[&str]); 2] = [
        ("videoQuality", &VIDEO_QUALITIES),
        ("audioQuality", &AUDIO_QUALITIES),
    ];
    for (key, allowed) in enums {
        match body.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => {}
            Some(_) => {
                return Some(format!(
                    "Invalid parameter: {key} must be one of {}",
                    allowed.join(", ")
                ));
            }
        }
    }
    None
}
