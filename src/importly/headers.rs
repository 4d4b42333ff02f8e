//! The `X-RateLimit-*` and `Retry-After` headers, parsed leniently: a garbled header is
//! treated as absent, never as an error. Every time a server gives is clamped here, where it
//! is parsed (waits to [`clock::MAX_SERVER_WAIT`], instants to [`clock::MAX_UNIX_SECS`]), so
//! no header can overflow time arithmetic further on; texts are bounded, so none can bloat
//! a log line or a stored record.

use std::time::{Duration, SystemTime};

use crate::clock;

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateHeaders {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// Unix seconds when the window resets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<u64>,
    /// The raw `X-RateLimit-Window` text, e.g. "1 h".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// `Retry-After` in seconds (the HTTP-date form is converted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// The longest header text kept (`X-RateLimit-Window`, `X-RateLimit-Plan`); a longer one
/// is garbled and treated as absent.
pub const MAX_HEADER_TEXT: usize = 64;

impl RateHeaders {
    pub fn from_map(h: &HeaderMap) -> RateHeaders {
        let text = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|s| s.len() <= MAX_HEADER_TEXT)
                .map(str::to_owned)
        };
        let num = |name: &str| text(name).and_then(|s| parse_count(&s));
        RateHeaders {
            limit: num("x-ratelimit-limit"),
            remaining: num("x-ratelimit-remaining"),
            reset: num("x-ratelimit-reset").map(reset_secs),
            window: text("x-ratelimit-window"),
            plan: text("x-ratelimit-plan"),
            retry_after: text("retry-after").and_then(|s| parse_retry_after(&s)),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == RateHeaders::default()
    }

    /// When the window resets, clamped to at most [`clock::MAX_SERVER_WAIT`] after `now`: a
    /// garbled reset must not park a bucket for years.
    pub fn reset_at(&self, now: SystemTime) -> Option<SystemTime> {
        self.reset
            .map(|r| clock::from_unix_secs(r).min(now + clock::MAX_SERVER_WAIT))
    }

    /// The window length, if the header parses.
    pub fn window_len(&self) -> Option<Duration> {
        self.window.as_deref().and_then(parse_window)
    }
}

/// A whole number; digits beyond what `u64` holds saturate rather than make the header
/// vanish (the clamps downstream then apply).
fn parse_count(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

/// `X-RateLimit-Reset` is documented in unix seconds, but the 429 body's `reset` is in
/// milliseconds; a header in milliseconds (a value past the year 5000 in seconds) is read as
/// such rather than as a reset millennia away. Clamped to [`clock::MAX_UNIX_SECS`].
fn reset_secs(n: u64) -> u64 {
    let secs = if n > 100_000_000_000 { n / 1000 } else { n };
    secs.min(clock::MAX_UNIX_SECS)
}

/// `Retry-After` is either delta-seconds or an HTTP-date; either way at most
/// [`clock::MAX_SERVER_WAIT`].
fn parse_retry_after(s: &str) -> Option<u64> {
    let max = clock::MAX_SERVER_WAIT.as_secs();
    if let Some(n) = parse_count(s) {
        return Some(n.min(max));
    }
    let when = httpdate_to_systemtime(s)?;
    let secs = when
        .duration_since(std::time::SystemTime::now())
        .map(|d| d.as_secs_f64().ceil().min(max as f64) as u64)
        .unwrap_or(0);
    Some(secs.min(max))
}

fn httpdate_to_systemtime(s: &str) -> Option<std::time::SystemTime> {
    // humantime parses RFC 3339; HTTP-dates ("Sun, 06 Nov 1994 08:49:37 GMT") are rare
    // enough in Retry-After that an unparseable one is simply ignored.
    humantime::parse_rfc3339_weak(s).ok()
}

/// `X-RateLimit-Window` is `"<n> <unit>"` (e.g. "1 h", "10 s", "15 m"); units s, m, h, d
/// and their long forms. Spaces are optional ("1h").
pub fn parse_window(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.trim().parse().ok()?;
    let unit_secs = match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86400.0,
        _ => return None,
    };
    let secs = n * unit_secs;
    // Longer than any wait we accept from a server is garbled (and would overflow
    // `Duration::from_secs_f64` soon after).
    if secs.is_finite() && secs > 0.0 && secs <= clock::MAX_SERVER_WAIT.as_secs_f64() {
        Some(Duration::from_secs_f64(secs))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_generally() {
        assert_eq!(parse_window("1 h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_window("10 s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_window("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_window("2 hours"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_window("h"), None);
        assert_eq!(parse_window("0 s"), None);
        assert_eq!(parse_window("5 fortnights"), None);
        // Used to panic in Duration::from_secs_f64.
        assert_eq!(parse_window("99999999999999999999999 h"), None);
        assert_eq!(parse_window("1e400 s"), None);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> RateHeaders {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        RateHeaders::from_map(&h)
    }

    #[test]
    fn absurd_server_times_are_clamped_where_they_are_parsed() {
        let max = clock::MAX_SERVER_WAIT.as_secs();
        for huge in ["18446744073709551615", "99999999999999999999999999"] {
            let h = headers(&[
                ("retry-after", huge),
                ("x-ratelimit-reset", huge),
                ("x-ratelimit-window", "99999999999999999999 h"),
            ]);
            assert_eq!(h.retry_after, Some(max), "{huge}");
            assert_eq!(h.reset, Some(clock::MAX_UNIX_SECS), "{huge}");
            assert_eq!(h.window_len(), None);
        }
        let far = headers(&[("retry-after", "9999-12-31T23:59:59Z")]);
        assert_eq!(far.retry_after, Some(max));
        let ok = headers(&[("retry-after", "30"), ("x-ratelimit-reset", "1764064800")]);
        assert_eq!((ok.retry_after, ok.reset), (Some(30), Some(1_764_064_800)));
    }

    #[test]
    fn header_texts_are_bounded() {
        let long = "p".repeat(MAX_HEADER_TEXT + 1);
        let h = headers(&[("x-ratelimit-plan", &long), ("x-ratelimit-window", "1 h")]);
        assert_eq!(h.plan, None);
        assert_eq!(h.window.as_deref(), Some("1 h"));
        assert_eq!(headers(&[("retry-after", "-5")]).retry_after, None);
    }
}
