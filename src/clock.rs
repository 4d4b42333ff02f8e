//! Timestamps as the database keeps them: UTC ISO-8601 with milliseconds, e.g.
//! `2026-11-25T10:00:00.123Z`, the same text SQLite's
//! `strftime('%Y-%m-%dT%H:%M:%fZ', 'now')` writes, so Rust and SQL values compare as text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The latest instant taken from a server or a user (2100-01-01T00:00:00Z). Anything later
/// is a garbled value; clamping to it keeps `SystemTime` arithmetic and formatting free of
/// overflow panics whatever a response says.
pub const MAX_UNIX_SECS: u64 = 4_102_444_800;

/// The longest a server's answer may make us wait in one go (31 days): a `retryAfter` or a
/// reset beyond it is treated as this, so a garbled header delays a bucket, never wedges it
/// for centuries.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(31 * 24 * 3600);

/// The last instant [`iso`] shows as itself: 9999-12-31T23:59:59.999Z, the end of what
/// [`parse_iso`] reads.
const MAX_ISO_MS: u64 = 253_402_300_799_999;

/// `t` as ISO-8601 text; never panics (humantime refuses times before 1970 or after 9999,
/// so `t` is clamped into that range first). Within it the text is exact, so every time
/// [`parse_iso`] reads from canonical text prints back as that text (a row parked in 2999
/// shows as 2999); the clamp to [`MAX_UNIX_SECS`] of values taken from servers is theirs.
pub fn iso(t: SystemTime) -> String {
    let max = UNIX_EPOCH + Duration::from_millis(MAX_ISO_MS);
    let t = t.clamp(UNIX_EPOCH, max);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Unix seconds as a time, clamped to [`MAX_UNIX_SECS`].
pub fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.min(MAX_UNIX_SECS))
}

/// `now + secs`, the wait capped at [`MAX_SERVER_WAIT`].
pub fn after_server_wait(now: SystemTime, secs: u64) -> SystemTime {
    now + Duration::from_secs(secs.min(MAX_SERVER_WAIT.as_secs()))
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
    UNIX_EPOCH + Duration::from_millis((ms.max(0) as u64).min(MAX_UNIX_SECS * 1000))
}

/// The longest wait a due time is ever given (a year): a retry's delay is bounded by the
/// config (30 days at most) and a server's wait by [`MAX_SERVER_WAIT`]; this only keeps any
/// `now + wait` from overflowing.
pub const MAX_DUE_WAIT: Duration = Duration::from_secs(366 * 24 * 3600);

/// `now + wait`, the wait capped at [`MAX_DUE_WAIT`].
pub fn after(wait: Duration) -> SystemTime {
    SystemTime::now() + wait.min(MAX_DUE_WAIT)
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

    #[test]
    fn absurd_times_are_clamped_not_panics() {
        assert_eq!(iso(from_unix_secs(u64::MAX)), "2100-01-01T00:00:00.000Z");
        assert_eq!(iso(from_unix_ms(i64::MAX)), "2100-01-01T00:00:00.000Z");
        assert_eq!(
            iso(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            iso(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 1000)),
            "9999-12-31T23:59:59.999Z"
        );
        for text in ["2999-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z"] {
            assert_eq!(parse_iso(text).map(iso).as_deref(), Some(text));
        }
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(after_server_wait(now, u64::MAX), now + MAX_SERVER_WAIT);
        assert_eq!(after_server_wait(now, 3), now + Duration::from_secs(3));
    }
}
