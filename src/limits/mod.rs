//! Limits, budgets and pauses: everything that decides *whether a request may go now*.
//! Pure state and arithmetic with the time passed in; the scheduler persists snapshots
//! through the store and feeds every response back in.

mod pause;
mod slots;
mod window;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use pause::{Gate, Pause, Pauses, Scope};
pub use slots::Slots;
pub use window::{Window, aligned_end};

use crate::clock;
use crate::config::BucketLimit;
use crate::importly::RateHeaders;
use crate::store::StoredBucket;

/// One Importly bucket (import, status, metadata) as we see it: the configured ceiling and,
/// once any answer carried `X-RateLimit-*` headers, the server's own count. A request may go
/// only when both allow it.
#[derive(Clone, Debug)]
pub struct Budget {
    pub name: &'static str,
    local: Window,
    server: Option<Window>,
}

/// What `status` shows of a bucket.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BudgetView {
    pub limit: u64,
    pub remaining: u64,
    /// Unix seconds.
    pub reset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_until: Option<String>,
    /// `server` once Importly's headers are known, `config` before.
    pub source: &'static str,
}

impl Budget {
    pub fn new(name: &'static str, cfg: &BucketLimit, now: SystemTime) -> Budget {
        Budget {
            name,
            local: Window::fresh(cfg.requests, cfg.window, now),
            server: None,
        }
    }

    /// Applies a new config (SIGHUP) without forgetting what was spent.
    pub fn reconfigure(&mut self, cfg: &BucketLimit, now: SystemTime) {
        let spent = self.local.limit.saturating_sub(self.local.remaining);
        if self.local.len != Some(cfg.window) {
            self.local = Window::fresh(cfg.requests, cfg.window, now);
        }
        self.local.limit = cfg.requests;
        self.local.remaining = cfg.requests.saturating_sub(spent);
    }

    fn roll(&mut self, now: SystemTime) {
        self.local.roll(now);
        if let Some(s) = &mut self.server
            && !s.roll(now)
        {
            self.server = None;
        }
    }

    /// When the next request to this bucket may go.
    pub fn next_send_at(&mut self, now: SystemTime) -> SystemTime {
        self.roll(now);
        let mut t = self.local.next_send_at(now);
        if let Some(s) = &self.server {
            t = t.max(s.next_send_at(now));
        }
        t
    }

    /// How many requests may go right now (0 if none).
    pub fn burst(&mut self, now: SystemTime) -> u64 {
        self.roll(now);
        let mut n = self.local.burst(now);
        if let Some(s) = &self.server {
            n = n.min(s.burst(now));
        }
        n
    }

    /// Accounts for one request sent now.
    pub fn take(&mut self, now: SystemTime) {
        self.roll(now);
        self.local.take(now);
        if let Some(s) = &mut self.server {
            s.take(now);
        }
    }

    /// Learns from an answer's headers.
    pub fn observe(&mut self, h: &RateHeaders, now: SystemTime) {
        let (Some(limit), Some(remaining), Some(reset)) = (h.limit, h.remaining, h.reset) else {
            return;
        };
        // Clamped: a garbled reset must not park the bucket for years.
        let reset_at = clock::from_unix_secs(reset).min(now + clock::MAX_SERVER_WAIT);
        let len = h.window_len();
        match &mut self.server {
            Some(s) => {
                s.observe(limit, remaining, reset_at, now);
                if len.is_some() {
                    s.len = len;
                }
            }
            None if reset_at > now => {
                self.server = Some(Window {
                    limit,
                    remaining,
                    reset_at,
                    len,
                    next_allowed: now,
                    blocked_until: self.local.blocked_until,
                });
            }
            None => {}
        }
    }

    /// A rate-limit 429: nothing goes to this bucket before `until`.
    pub fn block_until(&mut self, until: SystemTime) {
        self.local.block_until(until);
        if let Some(s) = &mut self.server {
            s.block_until(until);
        }
    }

    pub fn view(&mut self, now: SystemTime) -> BudgetView {
        self.roll(now);
        let (w, source) = match &self.server {
            Some(s) => (s, "server"),
            None => (&self.local, "config"),
        };
        let remaining = match &self.server {
            Some(s) => s.remaining.min(self.local.remaining),
            None => self.local.remaining,
        };
        let blocked = self
            .local
            .blocked_until
            .filter(|b| *b > now)
            .map(clock::iso);
        BudgetView {
            limit: w.limit.min(self.local.limit),
            remaining,
            reset: w
                .reset_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            blocked_until: blocked,
            source,
        }
    }

    /// Rows for the `buckets` table: `<name>.local` and, when known, `<name>`.
    pub fn snapshot(&self) -> Vec<StoredBucket> {
        let row = |name: String, w: &Window| StoredBucket {
            name,
            lim: w.limit as i64,
            remaining: w.remaining as i64,
            reset_at: clock::unix_ms(w.reset_at),
            window_ms: w.len.map(|d| d.as_millis() as i64).unwrap_or(0),
            blocked_until: w.blocked_until.map(clock::unix_ms),
            updated_at: String::new(),
        };
        let mut out = vec![row(format!("{}.local", self.name), &self.local)];
        if let Some(s) = &self.server {
            out.push(row(self.name.to_owned(), s));
        }
        out
    }

    /// Restores what a previous run saved, if its windows are still current, so that a
    /// restart does not grant a second burst.
    pub fn restore(&mut self, rows: &[StoredBucket], now: SystemTime) {
        for r in rows {
            let reset_at = clock::from_unix_ms(r.reset_at);
            let blocked = r
                .blocked_until
                .map(clock::from_unix_ms)
                .filter(|b| *b > now);
            let current = reset_at > now;
            if r.name == format!("{}.local", self.name) {
                if current && Some(Duration::from_millis(r.window_ms as u64)) == self.local.len {
                    self.local.remaining = self.local.remaining.min(r.remaining.max(0) as u64);
                }
                if let Some(b) = blocked {
                    self.local.block_until(b);
                }
            } else if r.name == self.name && current {
                let len = (r.window_ms > 0).then(|| Duration::from_millis(r.window_ms as u64));
                self.server = Some(Window {
                    limit: r.lim.max(0) as u64,
                    remaining: r.remaining.max(0) as u64,
                    reset_at,
                    len,
                    next_allowed: now,
                    blocked_until: blocked,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn cfg(requests: u64, window_s: u64) -> BucketLimit {
        BucketLimit {
            requests,
            window: Duration::from_secs(window_s),
            concurrent: 2,
        }
    }

    #[test]
    fn stricter_server_headers_win() {
        let now = t(1000);
        let mut b = Budget::new("import", &cfg(100, 10), now);
        let h = RateHeaders {
            limit: Some(2),
            remaining: Some(0),
            reset: Some(1010),
            window: Some("10 s".into()),
            ..Default::default()
        };
        b.observe(&h, now);
        assert_eq!(b.next_send_at(now), t(1010));
        // After the reset the server window refills to its own limit (2), paced over 10 s.
        assert_eq!(b.next_send_at(t(1010)), t(1010));
        b.take(t(1010));
        assert_eq!(b.next_send_at(t(1010)), t(1015));
    }

    #[test]
    fn looser_server_headers_do_not_lift_the_ceiling() {
        let now = t(1000);
        let mut b = Budget::new("import", &cfg(1, 10), now);
        b.take(now);
        let h = RateHeaders {
            limit: Some(1000),
            remaining: Some(999),
            reset: Some(1010),
            window: Some("10 s".into()),
            ..Default::default()
        };
        b.observe(&h, now);
        assert_eq!(b.next_send_at(now), t(1010));
    }

    #[test]
    fn a_restart_keeps_the_spent_budget() {
        let now = t(1000);
        let mut b = Budget::new("import", &cfg(3, 3600), now);
        b.take(now);
        b.take(now);
        b.take(now);
        let saved = b.snapshot();
        let mut fresh = Budget::new("import", &cfg(3, 3600), now);
        fresh.restore(&saved, now);
        assert_eq!(
            fresh.next_send_at(now),
            aligned_end(now, Duration::from_secs(3600))
        );
    }
}
