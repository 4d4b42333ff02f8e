//! Timestamps as the database keeps them: UTC ISO-8601 with milliseconds, e.g.
//! `2026-11-25T10:00:00.123Z`, the same text SQLite's
//! `strftime('%Y-%m-%dT%H:%M:%fZ', 'now')` writes, so Rust and SQL values compare as text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn now_iso() -> String {
    iso(SystemTime::now())
}

/// Parses what [`iso`] writes, and the other RFC 3339 forms SQLite users tend to write.
pub fn parse_iso(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()
}

pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// How long until `t`, zero when it has passed.
pub fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trips_to_the_millisecond() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_064_800_123);
        let s = iso(t);
        assert_eq!(s, "2025-11-25T10:00:00.123Z");
        assert_eq!(parse_iso(&s), Some(t));
        assert_eq!(
            parse_iso("2025-11-25 10:00:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1_764_064_800))
        );
    }
}
