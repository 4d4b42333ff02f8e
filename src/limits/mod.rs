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

/// How long the other requests of a bucket wait for the answer to its first one (see
/// [`Budget`]) before going on by the config anyway: an answer lost to a failed task must
/// not stop the bucket for good. Longer than any sensible `api.request_timeout` is not
/// needed: a timed-out request is an answer too.
const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// One Importly bucket (import, status, metadata) as we see it.
///
/// The configured `requests`/`window` are an assumption, used until Importly has answered
/// once with `X-RateLimit-*` headers; from then on the server's window rules alone, looser
/// or stricter than the config. The learned window is rolled forward on its own when the
/// headers stop coming (and survives a restart through [`Budget::snapshot`]); only a
/// learned window of unknown length, once it has ended, gives the rule back to the config.
/// Until the first answer, a bucket sends one request and waits for it, so a server
/// stricter than the config costs no 429 at start.
#[derive(Clone, Debug)]
pub struct Budget {
    pub name: &'static str,
    /// The configured window; it counts only while it rules.
    config: Window,
    /// The server's window, from the headers (or a previous run).
    server: Option<Window>,
    /// `reserve` of the config: requests of each window left to other programs.
    reserve: u64,
    /// Set by a rate-limit 429: nothing goes before this, whichever window rules.
    blocked_until: Option<SystemTime>,
    /// When the first request of this run went, while no answer has come back.
    first_sent: Option<SystemTime>,
    answered: bool,
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
    /// The ruling window's length in seconds, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    /// Requests of each window left to other programs (`limits.*.reserve`).
    pub reserve: u64,
}

impl Budget {
    pub fn new(name: &'static str, cfg: &BucketLimit, now: SystemTime) -> Budget {
        let mut config = Window::fresh(cfg.requests, cfg.window, now);
        config.reserve = cfg.reserve;
        Budget {
            name,
            config,
            server: None,
            reserve: cfg.reserve,
            blocked_until: None,
            first_sent: None,
            answered: false,
        }
    }

    /// Applies a new config (SIGHUP) without forgetting what was spent or a 429's block.
    /// A learned server window stays in force: the config does not overrule the server.
    pub fn reconfigure(&mut self, cfg: &BucketLimit, now: SystemTime) {
        let spent = self.config.limit.saturating_sub(self.config.remaining);
        if self.config.len != Some(cfg.window) {
            self.config = Window::fresh(cfg.requests, cfg.window, now);
        }
        self.config.limit = cfg.requests;
        self.config.remaining = cfg.requests.saturating_sub(spent);
        self.reserve = cfg.reserve;
        self.config.reserve = cfg.reserve;
        if let Some(s) = &mut self.server {
            s.reserve = cfg.reserve;
        }
    }

    fn roll(&mut self, now: SystemTime) {
        if self.blocked_until.is_some_and(|b| b <= now) {
            self.blocked_until = None;
        }
        if let Some(s) = &mut self.server
            && !s.roll(now)
        {
            // A learned window of unknown length has ended and no header renewed it: back
            // to the config, starting afresh (paced, so no burst).
            self.server = None;
            self.config = Window::fresh(
                self.config.limit,
                self.config.len.unwrap_or(Duration::from_secs(3600)),
                now,
            );
            self.config.reserve = self.reserve;
        }
        self.config.roll(now);
    }

    /// The window that rules: the server's once known, else the config's.
    fn ruling(&self) -> &Window {
        self.server.as_ref().unwrap_or(&self.config)
    }

    /// Until Importly has answered once (and no learned window is known), the first
    /// request's answer is awaited before any other goes.
    fn first_answer_due(&self, now: SystemTime) -> Option<SystemTime> {
        if self.answered || self.server.is_some() {
            return None;
        }
        self.first_sent
            .map(|t| t + FIRST_ANSWER_WAIT)
            .filter(|t| *t > now)
    }

    /// When the next request to this bucket may go.
    pub fn next_send_at(&mut self, now: SystemTime) -> SystemTime {
        self.roll(now);
        let mut t = self.ruling().next_send_at(now);
        if let Some(b) = self.blocked_until {
            t = t.max(b);
        }
        if let Some(f) = self.first_answer_due(now) {
            t = t.max(f);
        }
        t
    }

    /// How many requests may go right now (0 if none).
    pub fn burst(&mut self, now: SystemTime) -> u64 {
        if self.next_send_at(now) > now {
            return 0;
        }
        if !self.answered && self.server.is_none() {
            return 1;
        }
        self.ruling().burst(now)
    }

    /// Whether one request may go now out of its pacing turn: the window has a usable
    /// request left, no 429 block holds, and no first answer is awaited. For a request that
    /// should not wait (a webhook's confirming poll); its [`Budget::take`] pushes the pacing
    /// of the later ones back, so the window's total and pace are kept.
    pub fn may_jump(&mut self, now: SystemTime) -> bool {
        self.roll(now);
        if self.blocked_until.is_some_and(|b| b > now) || self.first_answer_due(now).is_some() {
            return false;
        }
        self.ruling().usable() > 0
    }

    /// Accounts for one request sent now.
    pub fn take(&mut self, now: SystemTime) {
        self.roll(now);
        if self.first_sent.is_none() {
            self.first_sent = Some(now);
        }
        match &mut self.server {
            Some(s) => s.take(now),
            None => self.config.take(now),
        }
    }

    /// Learns from an answer's headers (every answer comes here, with headers or not).
    pub fn observe(&mut self, h: &RateHeaders, now: SystemTime) {
        self.answered = true;
        let (Some(limit), Some(remaining), Some(reset_at)) =
            (h.limit, h.remaining, h.reset_at(now))
        else {
            return;
        };
        let len = h.window_len();
        let fresh = |reserve| Window {
            limit,
            remaining,
            reset_at,
            len,
            next_allowed: now,
            reserve,
        };
        match &mut self.server {
            // Another window length (a plan change, or a window restored from an older
            // run): the new window replaces ours, even though it ends sooner.
            Some(s) if reset_at > now && len.is_some() && s.len.is_some() && len != s.len => {
                *s = fresh(self.reserve);
            }
            Some(s) => {
                s.observe(limit, remaining, reset_at, now);
                if len.is_some() {
                    s.len = len;
                }
            }
            None if reset_at > now => {
                // What the config window spent of this window is already in `remaining`.
                self.server = Some(fresh(self.reserve));
            }
            None => {}
        }
    }

    /// A rate-limit 429: nothing goes to this bucket before `until`.
    pub fn block_until(&mut self, until: SystemTime) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
    }

    pub fn view(&mut self, now: SystemTime) -> BudgetView {
        self.roll(now);
        let source = if self.server.is_some() {
            "server"
        } else {
            "config"
        };
        let w = self.ruling();
        BudgetView {
            limit: w.limit,
            remaining: w.remaining,
            reset: w
                .reset_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            blocked_until: self.blocked_until.filter(|b| *b > now).map(clock::iso),
            source,
            window_secs: w.len.map(|d| d.as_secs()),
            reserve: w.reserve,
        }
    }

    /// Rows for the `buckets` table: `<name>.local` (the config window) and, when known,
    /// `<name>` (the server's). A 429's block is stored on both.
    pub fn snapshot(&self) -> Vec<StoredBucket> {
        let row = |name: String, w: &Window| StoredBucket {
            name,
            lim: w.limit as i64,
            remaining: w.remaining as i64,
            reset_at: clock::unix_ms(w.reset_at),
            window_ms: w.len.map(|d| d.as_millis() as i64).unwrap_or(0),
            blocked_until: self.blocked_until.map(clock::unix_ms),
            // Not saved: `save_buckets` stamps the store's own time.
            updated_at: UNIX_EPOCH,
        };
        let mut out = vec![row(format!("{}.local", self.name), &self.config)];
        if let Some(s) = &self.server {
            out.push(row(self.name.to_owned(), s));
        }
        out
    }

    /// Restores what a previous run saved, so that a restart neither grants a second burst
    /// nor forgets what the server told us: a learned window is restored and rules (rolled
    /// forward to the current window if it has ended and its length is known).
    pub fn restore(&mut self, rows: &[StoredBucket], now: SystemTime) {
        for r in rows {
            let reset_at = clock::from_unix_ms(r.reset_at);
            if let Some(b) = r
                .blocked_until
                .map(clock::from_unix_ms)
                .filter(|b| *b > now)
            {
                self.block_until(b);
            }
            let current = reset_at > now;
            let len = (r.window_ms > 0).then(|| Duration::from_millis(r.window_ms as u64));
            if r.name == format!("{}.local", self.name) {
                if current && len == self.config.len {
                    self.config.remaining = self.config.remaining.min(r.remaining.max(0) as u64);
                }
            } else if r.name == self.name && (current || len.is_some()) {
                let mut w = Window {
                    limit: r.lim.max(0) as u64,
                    remaining: r.remaining.max(0) as u64,
                    reset_at,
                    len,
                    next_allowed: now,
                    reserve: self.reserve,
                };
                if w.roll(now) {
                    self.server = Some(w);
                }
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
            reserve: 0,
        }
    }

    fn headers(limit: u64, remaining: u64, reset: u64, window: Option<&str>) -> RateHeaders {
        RateHeaders {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: Some(reset),
            window: window.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn a_jump_skips_the_pacing_but_never_the_window() {
        let now = t(1000);
        let mut b = Budget::new("status", &cfg(100, 10), now);
        b.observe(&headers(3, 3, 1010, Some("10 s")), now);
        b.take(now);
        assert!(b.next_send_at(now) > now, "paced");
        assert!(b.may_jump(now));
        b.take(now);
        // The jump pushed the pacing back: 3 requests still take the whole window.
        assert!(b.next_send_at(now) >= t(1005));
        b.take(now);
        assert!(!b.may_jump(now), "the window is spent");
        assert!(b.may_jump(t(1010)), "a new window");
        b.block_until(t(1020));
        assert!(!b.may_jump(t(1011)), "a 429's block holds");
    }

    #[test]
    fn stricter_server_headers_win() {
        let now = t(1000);
        let mut b = Budget::new("import", &cfg(100, 10), now);
        b.observe(&headers(2, 0, 1010, Some("10 s")), now);
        assert_eq!(b.next_send_at(now), t(1010));
        // After the reset the server window refills to its own limit (2), paced over 10 s.
        assert_eq!(b.next_send_at(t(1010)), t(1010));
        b.take(t(1010));
        assert_eq!(b.next_send_at(t(1010)), t(1015));
    }

    #[test]
    fn looser_server_headers_rule_over_the_config() {
        let now = t(1000);
        let mut b = Budget::new("import", &cfg(1, 10), now);
        b.take(now);
        b.observe(&headers(1000, 999, 1010, Some("10 s")), now);
        assert_eq!(b.next_send_at(now), now);
        assert_eq!(b.view(now).source, "server");
        // Paced over the server's window, not the config's.
        b.take(now);
        assert!(b.next_send_at(now) < now + Duration::from_millis(20));
    }

    #[test]
    fn the_first_request_waits_for_its_answer() {
        let now = t(1000);
        let mut b = Budget::new("import", &cfg(10_000, 60), now);
        assert_eq!(b.burst(now), 1);
        b.take(now);
        assert_eq!(b.burst(now + Duration::from_secs(1)), 0);
        assert_eq!(b.next_send_at(now), now + FIRST_ANSWER_WAIT);
        // Any answer ends the wait, headers or not; without headers the config rules.
        b.observe(&RateHeaders::default(), now + Duration::from_millis(5));
        assert!(b.burst(now + Duration::from_millis(10)) >= 1);
        assert_eq!(b.view(now).source, "config");
    }

    #[test]
    fn a_learned_window_rolls_forward_when_the_headers_stop() {
        let now = t(999);
        let mut b = Budget::new("import", &cfg(240, 3600), now);
        b.take(now);
        b.observe(&headers(6, 0, 1002, Some("3 s")), now);
        assert_eq!(b.next_send_at(now), t(1002));
        // No more headers: the learned 6 per 3 s goes on, window after window.
        for w in 0..3 {
            let start = t(1002 + 3 * w);
            let mut sent = 0;
            let mut clock = start;
            while clock < start + Duration::from_secs(3) {
                clock = b.next_send_at(clock);
                if clock >= start + Duration::from_secs(3) {
                    break;
                }
                b.take(clock);
                b.observe(&RateHeaders::default(), clock);
                sent += 1;
            }
            assert_eq!(sent, 6, "window {w}");
        }
        assert_eq!(b.view(t(1011)).source, "server");
    }

    #[test]
    fn a_learned_window_of_unknown_length_falls_back_to_the_config() {
        let now = t(1000);
        let mut b = Budget::new("import", &cfg(240, 3600), now);
        b.observe(&headers(6, 5, 1003, None), now);
        assert_eq!(b.view(now).source, "server");
        assert_eq!(b.view(t(1003)).source, "config");
        assert_eq!(b.view(t(1003)).limit, 240);
    }

    #[test]
    fn the_reserve_applies_to_whichever_window_rules() {
        let now = t(1000);
        let mut limit = cfg(10, 10);
        limit.reserve = 3;
        let mut b = Budget::new("import", &limit, now);
        // The config window: 7 of 10 usable.
        let mut sent = 0;
        let mut clock = now;
        while b.next_send_at(clock) < t(1010) {
            clock = b.next_send_at(clock);
            b.take(clock);
            b.observe(&RateHeaders::default(), clock);
            sent += 1;
        }
        assert_eq!(sent, 7);
        // The server's window: 6 allowed, 5 left: 2 for us, 3 reserved.
        b.observe(&headers(6, 5, 1011, Some("3 s")), t(1010));
        b.take(t(1010));
        let second = b.next_send_at(t(1010));
        assert!(second < t(1011));
        b.take(second);
        assert_eq!(b.next_send_at(second), t(1011));
    }

    #[test]
    fn a_429_block_survives_a_window_length_change() {
        let now = t(1000);
        let mut b = Budget::new("import", &cfg(100, 60), now);
        b.block_until(t(1100));
        b.reconfigure(&cfg(100, 3600), now);
        assert_eq!(b.next_send_at(now), t(1100));
        let mut server = Budget::new("import", &cfg(100, 60), now);
        server.observe(&headers(50, 40, 1060, Some("1 m")), now);
        server.block_until(t(1100));
        server.reconfigure(&cfg(100, 3600), now);
        assert_eq!(server.next_send_at(now), t(1100));
        assert_eq!(
            server.view(now).source,
            "server",
            "SIGHUP keeps the learned window"
        );
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

    #[test]
    fn a_restored_server_window_rules_and_rolls_forward() {
        let now = t(1000);
        let mut b = Budget::new("import", &cfg(240, 3600), now);
        b.take(now);
        b.observe(&headers(6, 0, 1002, Some("3 s")), now);
        b.block_until(t(1001));
        let saved = b.snapshot();
        // The same window after a restart: spent, whatever the (looser) config says.
        let mut fresh = Budget::new("import", &cfg(10_000, 60), now);
        fresh.restore(&saved, now);
        assert_eq!(fresh.next_send_at(now), t(1002));
        assert_eq!(fresh.view(now).source, "server");
        // Restarted windows later: the learned 6 per 3 s, not the config.
        let mut later = Budget::new("import", &cfg(10_000, 60), t(1100));
        later.restore(&saved, t(1100));
        let v = later.view(t(1100));
        assert_eq!((v.source, v.limit, v.remaining), ("server", 6, 6));
        assert_eq!(later.burst(t(1100)), 1, "paced, no burst");
    }

    #[test]
    fn a_new_window_length_from_the_server_replaces_the_old_window() {
        let now = t(1000);
        let mut b = Budget::new("import", &cfg(240, 3600), now);
        b.observe(&headers(240, 0, 3600, Some("1 h")), now);
        assert_eq!(b.next_send_at(now), t(3600));
        // The plan changed to 10 a minute: its window ends sooner, and rules.
        b.observe(&headers(10, 9, 1020, Some("1 m")), now);
        assert_eq!(b.next_send_at(now), now);
        assert_eq!(b.view(now).limit, 10);
    }
}
