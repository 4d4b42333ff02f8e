//! One fixed request window: `limit` requests per `len`, windows aligned to multiples of
//! `len` in unix time (as Importly counts them). Sends are paced: the requests left are
//! spread evenly over the time left, so the budget is used fully but never in one burst.
//! `reserve` requests of every window are left unused (for other programs on the key).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// When the current window ends.
    pub reset_at: SystemTime,
    /// Window length; `None` when the server never told us (then a rollover forgets us).
    pub len: Option<Duration>,
    /// Earliest time the next request may go (pacing).
    pub next_allowed: SystemTime,
    /// Requests of each window we leave to other programs on the key. At most `limit - 1`
    /// counts: a window always lets at least one request of ours through, or a server limit
    /// at or below the reserve would stop the daemon for good.
    pub reserve: u64,
}

/// The end of the aligned window that contains `now`.
pub fn aligned_end(now: SystemTime, len: Duration) -> SystemTime {
    let len_ms = len.as_millis().max(1);
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let end = (now_ms / len_ms + 1) * len_ms;
    UNIX_EPOCH + Duration::from_millis(end as u64)
}

impl Window {
    /// A fresh window of the configured size, full.
    pub fn fresh(limit: u64, len: Duration, now: SystemTime) -> Window {
        Window {
            limit,
            remaining: limit,
            reset_at: aligned_end(now, len),
            len: Some(len),
            next_allowed: now,
            reserve: 0,
        }
    }

    /// Moves to the current window if the stored one has ended. Returns false when the
    /// window has ended and its length is unknown (the caller should drop it).
    pub fn roll(&mut self, now: SystemTime) -> bool {
        if now < self.reset_at {
            return true;
        }
        match self.len {
            Some(len) => {
                self.reset_at = aligned_end(now, len);
                self.remaining = self.limit;
                self.next_allowed = now;
                true
            }
            None => false,
        }
    }

    /// Requests we may still send in this window: what is left minus the reserve.
    pub fn usable(&self) -> u64 {
        let reserve = self.reserve.min(self.limit.saturating_sub(1));
        self.remaining.saturating_sub(reserve)
    }

    /// When the next request may go (`now` or later). Call [`Window::roll`] first.
    pub fn next_send_at(&self, now: SystemTime) -> SystemTime {
        let mut t = self.next_allowed.max(now);
        if self.usable() == 0 {
            t = t.max(self.reset_at);
        }
        t
    }

    /// How many requests may go at once now: pacing allows one at a time, unless the
    /// spacing is below a millisecond (an effectively unlimited bucket).
    pub fn burst(&self, now: SystemTime) -> u64 {
        if self.next_send_at(now) > now {
            return 0;
        }
        if self.spacing(now) < Duration::from_millis(1) {
            self.usable()
        } else {
            1
        }
    }

    fn spacing(&self, now: SystemTime) -> Duration {
        let left = self.reset_at.duration_since(now).unwrap_or(Duration::ZERO);
        match self.usable() {
            0 => left,
            n => left / u32::try_from(n).unwrap_or(u32::MAX),
        }
    }

    /// Accounts for one request sent at `now`.
    pub fn take(&mut self, now: SystemTime) {
        let spacing = self.spacing(now);
        // Below a millisecond nothing is paced (see `burst`): every request of a burst may
        // go in the same instant. Pushing the pacing on by each one's spacing made the
        // burst one request long (the second saw `next_allowed` ahead of the same `now`),
        // so a loop turn sent one of the polls it had taken the shared budget for.
        if spacing >= Duration::from_millis(1) {
            self.next_allowed = self.next_allowed.max(now) + spacing;
        }
        self.remaining = self.remaining.saturating_sub(1);
    }

    /// Corrects from the server's headers. A window that ends later than ours is a new
    /// one: adopt it. The same window: keep the smaller `remaining` (requests we sent after
    /// this answer was made are already subtracted locally). An older one: ignore.
    pub fn observe(&mut self, limit: u64, remaining: u64, reset_at: SystemTime, now: SystemTime) {
        if reset_at <= now {
            return;
        }
        let tolerance = Duration::from_millis(999);
        if reset_at > self.reset_at + tolerance {
            self.limit = limit;
            self.remaining = remaining;
            self.reset_at = reset_at;
            self.next_allowed = self.next_allowed.min(now);
        } else if reset_at + tolerance >= self.reset_at {
            self.limit = limit;
            self.remaining = self.remaining.min(remaining);
            self.reset_at = reset_at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn paces_evenly_and_uses_the_whole_window() {
        let now = t(10_000);
        let mut w = Window::fresh(4, Duration::from_secs(10), now);
        assert_eq!(w.reset_at, t(20_000));
        let mut sends = Vec::new();
        let mut clock = now;
        while w.remaining > 0 {
            w.roll(clock);
            clock = w.next_send_at(clock);
            w.take(clock);
            sends.push(clock);
        }
        assert_eq!(sends, vec![t(10_000), t(12_500), t(15_000), t(17_500)]);
        // Empty: the next send waits for the next window.
        assert_eq!(w.next_send_at(t(18_000)), t(20_000));
        assert!(w.roll(t(20_000)));
        assert_eq!(w.remaining, 4);
        assert_eq!(w.next_send_at(t(20_000)), t(20_000));
    }

    #[test]
    fn server_remaining_zero_blocks_until_reset() {
        let now = t(1_000);
        let mut w = Window::fresh(100, Duration::from_secs(60), now);
        w.observe(100, 0, t(60_000), now);
        assert_eq!(w.next_send_at(now), t(60_000));
    }

    #[test]
    fn stale_headers_do_not_raise_remaining() {
        let now = t(1_000);
        let mut w = Window::fresh(10, Duration::from_secs(60), now);
        w.observe(10, 3, t(60_000), now);
        w.observe(10, 7, t(60_000), now);
        assert_eq!(w.remaining, 3);
    }

    #[test]
    fn unlimited_buckets_burst() {
        let now = t(0);
        let w = Window::fresh(1_000_000_000, Duration::from_secs(3600), now);
        assert_eq!(w.burst(now), 1_000_000_000);
        // A burst is all there at once: taking from it leaves the rest to go now.
        let mut w = w;
        for _ in 0..100 {
            w.take(now);
        }
        assert_eq!(w.burst(now), 1_000_000_000 - 100);
        assert_eq!(w.next_send_at(now), now);
        let slow = Window::fresh(240, Duration::from_secs(3600), now);
        assert_eq!(slow.burst(now), 1);
    }

    #[test]
    fn the_reserve_is_left_unused_and_the_rest_paced_over_the_window() {
        let now = t(0);
        let mut w = Window::fresh(6, Duration::from_secs(3), now);
        w.reserve = 2;
        let mut sends = Vec::new();
        let mut clock = now;
        while w.usable() > 0 {
            clock = w.next_send_at(clock);
            w.take(clock);
            sends.push(clock);
        }
        // 4 of 6, spread over the whole window; the last 2 stay with the server.
        assert_eq!(sends, vec![t(0), t(750), t(1_500), t(2_250)]);
        assert_eq!(w.remaining, 2);
        assert_eq!(w.next_send_at(t(2_500)), t(3_000));
        assert!(w.roll(t(3_000)));
        assert_eq!(w.usable(), 4);
    }

    #[test]
    fn a_reserve_at_or_above_the_limit_still_lets_one_request_through() {
        let mut w = Window::fresh(2, Duration::from_secs(10), t(0));
        w.reserve = 5;
        assert_eq!(w.usable(), 1);
        w.take(t(0));
        assert_eq!(w.usable(), 0);
        assert_eq!(w.next_send_at(t(1)), t(10_000));
    }
}
