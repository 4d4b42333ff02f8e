//! The drain estimate: when will the rows ahead be done, and which limit decides it.
//!
//! A pure function of what is known about the queue and the account (rows ahead, the rate
//! window as the server or the config states it, the concurrency, the mean job duration),
//! so `status`, `wait` and the dashboard all show the same figure and it can be unit-tested.
//!
//! The model: a lane (imports or metadata) cannot finish faster than either bound allows.
//! - *rate*: `remaining` requests are left in the window that ends at `reset`; after it,
//!   `limit - reserve` per window, paced evenly across each window (as the daemon sends).
//!   The last row is sent once enough windows have passed, and finishes one job later.
//! - *concurrency*: `slots` jobs at once, each taking `mean_job` (when known): the rows ahead
//!   plus the jobs in progress take `ceil((ahead + running) / slots)` job durations.
//!
//! The larger bound decides, and it is named: "limited by the import rate (240/h)".

use std::time::{Duration, SystemTime};

use crate::importly::JobKind;

/// What is known of one lane (import or metadata).
#[derive(Clone, Debug, PartialEq)]
pub struct LaneInput {
    /// "import" or "metadata".
    pub kind: &'static str,
    /// Rows not yet submitted: `pending` and `submitting`.
    pub ahead: u64,
    /// Jobs in progress at Importly (`running` rows).
    pub running: u64,
    /// Requests per window, as the server said or else as configured.
    pub limit: u64,
    /// Requests left in the current window.
    pub remaining: u64,
    /// When the current window ends.
    pub reset: SystemTime,
    /// The window length.
    pub window: Duration,
    /// Requests per window left to other programs (`limits.*.reserve`).
    pub reserve: u64,
    /// Jobs in progress at once we may hold.
    pub slots: u32,
    /// The mean duration of recently completed jobs (submit to completion), if any ended.
    pub mean_job: Option<Duration>,
}

/// Which limit binds the estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// Nothing is ahead.
    Nothing,
    /// The rate window.
    Rate,
    /// The concurrency slots and the job duration.
    Concurrency,
}

/// The estimate for one lane.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LaneEstimate {
    pub kind: &'static str,
    pub ahead: u64,
    /// How long from now until the last of `ahead` is done.
    #[serde(serialize_with = "secs")]
    pub remaining: Duration,
    pub binding: Binding,
    /// A phrase naming the binding limit: "the import rate (240/h)".
    pub limited_by: String,
}

/// The estimate for the whole queue: the slowest lane decides.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// Rows not yet submitted, all lanes.
    pub ahead: u64,
    /// Unix seconds when everything ahead should be done (`None` when nothing is ahead or it
    /// cannot be told, e.g. while paused).
    pub done_at: Option<u64>,
    #[serde(serialize_with = "secs")]
    pub remaining: Duration,
    pub limited_by: String,
    /// Why there is no estimate, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    pub lanes: Vec<LaneEstimate>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// The longest estimate we state (a year); beyond it the numbers say nothing useful and
/// `SystemTime` arithmetic must stay far from overflow.
const MAX_ESTIMATE: Duration = Duration::from_secs(365 * 24 * 3600);

/// "240/h", "6/3s": a rate in the units its window is stated in.
pub fn rate_text(limit: u64, window: Duration) -> String {
    let s = window.as_secs();
    let unit = if s == 0 {
        format!("{}ms", window.as_millis())
    } else if s.is_multiple_of(3600) {
        if s == 3600 {
            "h".into()
        } else {
            format!("{}h", s / 3600)
        }
    } else if s.is_multiple_of(60) {
        if s == 60 {
            "min".into()
        } else {
            format!("{}min", s / 60)
        }
    } else if s == 1 {
        "s".into()
    } else {
        format!("{s}s")
    };
    format!("{limit}/{unit}")
}

/// The time one lane needs, from `now`.
pub fn lane(input: &LaneInput, now: SystemTime) -> LaneEstimate {
    let mut out = LaneEstimate {
        kind: input.kind,
        ahead: input.ahead,
        remaining: Duration::ZERO,
        binding: Binding::Nothing,
        limited_by: "nothing: no rows ahead".into(),
    };
    if input.ahead == 0 && input.running == 0 {
        return out;
    }
    let job = input.mean_job.unwrap_or(Duration::ZERO);

    // Rate: when the last row ahead can be sent, then one job for it to finish.
    let per_window = input.limit.saturating_sub(input.reserve).max(1);
    let window = input.window.max(Duration::from_millis(1));
    let to_reset = input.reset.duration_since(now).unwrap_or(Duration::ZERO);
    let now_left = input.remaining;
    let send_last = if input.ahead == 0 {
        Duration::ZERO
    } else if input.ahead <= now_left {
        // Paced over what is left of this window.
        to_reset.mul_f64(input.ahead as f64 / now_left.max(1) as f64)
    } else {
        let later = (input.ahead - now_left) as f64 / per_window as f64;
        to_reset + mul_capped(window, later)
    };
    let by_rate = send_last.saturating_add(job).min(MAX_ESTIMATE);

    // Concurrency: every row ahead and every job in progress passes through the slots.
    let by_slots = match input.mean_job {
        Some(d) if input.slots > 0 => {
            let rounds = (input.ahead + input.running).div_ceil(u64::from(input.slots));
            mul_capped(d, rounds as f64).min(MAX_ESTIMATE)
        }
        _ => Duration::ZERO,
    };

    if by_slots > by_rate {
        out.remaining = by_slots;
        out.binding = Binding::Concurrency;
        out.limited_by = format!(
            "{} concurrent {} jobs of about {}",
            input.slots,
            input.kind,
            human(job)
        );
    } else {
        out.remaining = by_rate;
        out.binding = Binding::Rate;
        out.limited_by = format!(
            "the {} rate ({})",
            input.kind,
            rate_text(per_window, input.window)
        );
    }
    out
}

fn mul_capped(d: Duration, by: f64) -> Duration {
    let secs = d.as_secs_f64() * by;
    if !secs.is_finite() || secs >= MAX_ESTIMATE.as_secs_f64() {
        MAX_ESTIMATE
    } else {
        Duration::from_secs_f64(secs.max(0.0))
    }
}

/// The estimate for all lanes. `paused` names a pause in force (no estimate then: nothing
/// moves until it is lifted).
pub fn estimate(lanes: &[LaneInput], paused: Option<&str>, now: SystemTime) -> Estimate {
    let per_lane: Vec<LaneEstimate> = lanes.iter().map(|l| lane(l, now)).collect();
    let ahead = lanes.iter().map(|l| l.ahead).sum();
    let slowest = per_lane
        .iter()
        .filter(|l| l.binding != Binding::Nothing)
        .max_by_key(|l| l.remaining);
    let mut out = Estimate {
        ahead,
        done_at: None,
        remaining: Duration::ZERO,
        limited_by: "nothing: no rows ahead".into(),
        unknown: None,
        lanes: per_lane.clone(),
    };
    if let Some(reason) = paused {
        out.unknown = Some(format!(
            "paused ({reason}): nothing moves until it is lifted"
        ));
        out.limited_by = "the pause".into();
        return out;
    }
    if let Some(s) = slowest {
        out.remaining = s.remaining;
        out.limited_by = s.limited_by.clone();
        out.done_at = now
            .checked_add(s.remaining)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
    }
    out
}

/// The lanes' inputs from what `status` knows: the queue's shape, each bucket's view (the
/// server's window once known, else the config's), and the configured concurrency.
pub fn inputs(
    shape: &crate::store::QueueShape,
    views: &std::collections::BTreeMap<&str, crate::limits::BudgetView>,
    cfg: &crate::config::Config,
) -> Vec<LaneInput> {
    let mut lanes = Vec::new();
    for (kind, limit) in [
        (JobKind::Import, &cfg.limits.import),
        (JobKind::Metadata, &cfg.limits.metadata),
    ] {
        let Some(view) = views.get(kind.as_str()) else {
            continue;
        };
        let get = |m: &std::collections::BTreeMap<JobKind, u64>| m.get(&kind).copied().unwrap_or(0);
        let window = view
            .window_secs
            .map(Duration::from_secs)
            .unwrap_or(limit.window);
        lanes.push(LaneInput {
            kind: kind.as_str(),
            ahead: get(&shape.ahead),
            running: get(&shape.running),
            limit: view.limit,
            remaining: view.remaining.saturating_sub(view.reserve),
            reset: SystemTime::UNIX_EPOCH + Duration::from_secs(view.reset),
            window,
            reserve: view.reserve,
            slots: limit.concurrent,
            mean_job: shape
                .mean_job_ms
                .get(&kind)
                .map(|ms| Duration::from_secs_f64((ms / 1000.0).min(MAX_ESTIMATE.as_secs_f64()))),
        });
    }
    lanes
}

/// A short duration for people: "45s", "12m", "3h 20m", "2d 4h".
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => match (s % 3600) / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h {m}m", s / 3600),
        },
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Thousands separated: 1240 -> "1,240".
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Estimate {
    /// One line: "1,240 rows ahead; limited by the import rate (240/h): done around 19:40
    /// (in 5h 10m)". `at` formats the finishing time (local or UTC, the caller's choice).
    pub fn line(&self, at: impl Fn(u64) -> String) -> String {
        if let Some(why) = &self.unknown {
            return format!("{} rows ahead; no estimate: {why}", count(self.ahead));
        }
        match self.done_at {
            None => "nothing ahead".into(),
            Some(t) => format!(
                "{} rows ahead; limited by {}: done around {} (in {})",
                count(self.ahead),
                self.limited_by,
                at(t),
                human(self.remaining)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn import(ahead: u64) -> LaneInput {
        LaneInput {
            kind: "import",
            ahead,
            running: 0,
            limit: 240,
            remaining: 240,
            reset: at(3600),
            window: Duration::from_secs(3600),
            reserve: 0,
            slots: 2,
            mean_job: Some(Duration::from_secs(10)),
        }
    }

    #[test]
    fn nothing_ahead_is_no_estimate() {
        let e = estimate(&[import(0)], None, at(0));
        assert_eq!(e.done_at, None);
        assert_eq!(e.line(|t| t.to_string()), "nothing ahead");
    }

    #[test]
    fn many_rows_are_bound_by_the_rate() {
        // 1,240 rows, 240 left in a window ending in an hour, 240/h after: the last is sent
        // 1000/240 windows after this one ends, then takes one job.
        let e = estimate(&[import(1240)], None, at(0));
        let expected = 3600.0 + 1000.0 / 240.0 * 3600.0 + 10.0;
        assert!((e.remaining.as_secs_f64() - expected).abs() < 1.0, "{e:?}");
        assert_eq!(e.lanes[0].binding, Binding::Rate);
        assert!(
            e.line(|_| "19:40".into()).starts_with(
                "1,240 rows ahead; limited by the import rate (240/h): done around 19:40"
            ),
            "{}",
            e.line(|_| "19:40".into())
        );
    }

    #[test]
    fn long_jobs_are_bound_by_the_slots() {
        // 10 rows of 10-minute jobs on 2 slots: 5 rounds of 10 minutes, far beyond the rate.
        let mut l = import(10);
        l.mean_job = Some(Duration::from_secs(600));
        let e = estimate(&[l], None, at(0));
        assert_eq!(e.remaining, Duration::from_secs(3000));
        assert_eq!(e.lanes[0].binding, Binding::Concurrency);
        assert!(
            e.limited_by.contains("2 concurrent import jobs"),
            "{}",
            e.limited_by
        );
    }

    #[test]
    fn running_jobs_take_slot_rounds_too() {
        let mut l = import(1);
        l.running = 3;
        l.mean_job = Some(Duration::from_secs(600));
        let e = estimate(&[l], None, at(0));
        assert_eq!(e.remaining, Duration::from_secs(1200));
    }

    #[test]
    fn reserve_slows_the_rate() {
        let mut l = import(500);
        l.remaining = 0;
        l.reserve = 40;
        l.mean_job = None;
        let e = estimate(&[l], None, at(0));
        // Nothing left now; 200 per window after the reset at 3600.
        let expected = 3600.0 + 500.0 / 200.0 * 3600.0;
        assert!((e.remaining.as_secs_f64() - expected).abs() < 1.0, "{e:?}");
        assert!(e.limited_by.contains("200/h"), "{}", e.limited_by);
    }

    #[test]
    fn a_server_window_is_named_in_its_units() {
        let mut l = import(60);
        l.limit = 6;
        l.remaining = 6;
        l.window = Duration::from_secs(3);
        l.reset = at(3);
        l.mean_job = None;
        let e = estimate(&[l], None, at(0));
        // 6 now, then 54 at 6 per 3 s: 3 + 27 s.
        assert!((e.remaining.as_secs_f64() - 30.0).abs() < 0.01, "{e:?}");
        assert!(e.limited_by.contains("6/3s"), "{}", e.limited_by);
    }

    #[test]
    fn the_slowest_lane_decides() {
        let mut meta = import(100);
        meta.kind = "metadata";
        meta.limit = 1000;
        meta.remaining = 1000;
        let e = estimate(&[import(1), meta], None, at(0));
        assert_eq!(e.ahead, 101);
        assert!(e.limited_by.contains("metadata"), "{}", e.limited_by);
    }

    #[test]
    fn a_pause_means_no_estimate() {
        let e = estimate(&[import(5)], Some("401"), at(0));
        assert_eq!(e.done_at, None);
        assert!(e.line(|t| t.to_string()).contains("no estimate: paused"));
    }

    #[test]
    fn absurd_inputs_stay_bounded() {
        let mut l = import(u64::MAX);
        l.limit = 1;
        l.remaining = 0;
        l.reset = at(u64::from(u32::MAX));
        l.window = Duration::from_secs(u64::MAX / 4);
        l.mean_job = Some(Duration::from_secs(u64::MAX / 4));
        let e = estimate(&[l], None, at(0));
        assert!(e.remaining <= MAX_ESTIMATE);
        assert!(e.done_at.is_some());
    }

    #[test]
    fn counts_and_durations_read_well() {
        assert_eq!(count(1240), "1,240");
        assert_eq!(count(1_000_000), "1,000,000");
        assert_eq!(count(12), "12");
        assert_eq!(human(Duration::from_secs(45)), "45s");
        assert_eq!(human(Duration::from_secs(12 * 60)), "12m");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 20 * 60)), "3h 20m");
        assert_eq!(rate_text(7200, Duration::from_secs(3600)), "7200/h");
        assert_eq!(rate_text(20, Duration::from_secs(4)), "20/4s");
    }
}
