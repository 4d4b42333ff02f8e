//! The `X-RateLimit-*` and `Retry-After` headers, parsed leniently: a garbled header is
//! treated as absent, never as an error.

use std::time::Duration;

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

impl RateHeaders {
    pub fn from_map(h: &HeaderMap) -> RateHeaders {
        let text = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_owned())
        };
        let num = |name: &str| text(name).and_then(|s| s.parse::<u64>().ok());
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

    /// The window length, if the header parses.
    pub fn window_len(&self) -> Option<Duration> {
        self.window.as_deref().and_then(parse_window)
    }
}

/// `X-RateLimit-Reset` is documented in unix seconds, but the 429 body's `reset` is in
/// milliseconds; a header in milliseconds (a value past the year 5000 in seconds) is read as
/// such rather than as a reset millennia away.
fn reset_secs(n: u64) -> u64 {
    if n > 100_000_000_000 { n / 1000 } else { n }
}

/// `Retry-After` is either delta-seconds or an HTTP-date.
fn parse_retry_after(s: &str) -> Option<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let when = httpdate_to_systemtime(s)?;
    let secs = when
        .duration_since(std::time::SystemTime::now())
        .map(|d| d.as_secs_f64().ceil() as u64)
        .unwrap_or(0);
    Some(secs)
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
    if secs.is_finite() && secs > 0.0 {
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
    }
}
