//! Fixed-window request buckets, aligned to multiples of the window length in unix time.

use super::config::BucketConfig;
use super::duration_ms;

/// What the `X-RateLimit-*` headers and a rate-limit 429 tell about one bucket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateInfo {
    pub limit: u64,
    pub remaining: u64,
    /// Unix milliseconds when the current window ends.
    pub reset_ms: u64,
    pub window_ms: u64,
}

impl RateInfo {
    /// Unix seconds of the window end, rounded up so a client waiting until then is never early.
    pub fn reset_secs(&self) -> u64 {
        self.reset_ms.div_ceil(1000)
    }

    /// Whole seconds from `now_ms` until the window ends, at least 1.
    pub fn retry_after(&self, now_ms: u64) -> u64 {
        self.reset_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
    }
}

#[derive(Debug)]
pub(crate) struct Bucket {
    limit: u64,
    window_ms: u64,
    start_ms: u64,
    used: u64,
}

impl Bucket {
    pub fn new(cfg: &BucketConfig) -> Self {
        Self {
            limit: cfg.requests,
            // A zero window would divide by zero; one millisecond is the shortest meaningful one.
            window_ms: duration_ms(cfg.window).max(1),
            start_ms: 0,
            used: 0,
        }
    }

    /// Moves to the window containing `now_ms`, forgetting the old window's count.
    fn roll(&mut self, now_ms: u64) {
        let start = now_ms / self.window_ms * self.window_ms;
        if start != self.start_ms {
            self.start_ms = start;
            self.used = 0;
        }
    }

    fn info(&self) -> RateInfo {
        RateInfo {
            limit: self.limit,
            remaining: self.limit.saturating_sub(self.used),
            reset_ms: self.start_ms.saturating_add(self.window_ms),
            window_ms: self.window_ms,
        }
    }

    /// The bucket's state without consuming anything (for 401s).
    pub fn peek(&mut self, now_ms: u64) -> RateInfo {
        self.roll(now_ms);
        self.info()
    }

    /// Counts one request; `Err` when the window is exhausted (the request is not counted).
    pub fn try_take(&mut self, now_ms: u64) -> Result<RateInfo, RateInfo> {
        self.roll(now_ms);
        if self.used >= self.limit {
            return Err(self.info());
        }
        self.used += 1;
        Ok(self.info())
    }
}

/// `X-RateLimit-Window` text: `<n> <unit>` with the largest of h, m, s that divides the window
/// evenly; a window that is not whole seconds is given in ms.
pub(crate) fn format_window(window_ms: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(3_600_000, "h"), (60_000, "m"), (1000, "s")];
    UNITS
        .iter()
        .find(|(len, _)| window_ms.is_multiple_of(*len))
        .map(|(len, unit)| format!("{} {unit}", window_ms / len))
        .unwrap_or_else(|| format!("{window_ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_text_uses_largest_even_unit() {
        assert_eq!(format_window(3_600_000), "1 h");
        assert_eq!(format_window(7_200_000), "2 h");
        assert_eq!(format_window(300_000), "5 m");
        assert_eq!(format_window(90_000), "90 s");
        assert_eq!(format_window(2000), "2 s");
        assert_eq!(format_window(1500), "1500 ms");
    }

    #[test]
    fn windows_are_aligned_and_reset() {
        let mut b = Bucket::new(&BucketConfig::new(2, std::time::Duration::from_secs(10), 0));
        assert_eq!(b.try_take(12_345).map(|i| i.remaining).ok(), Some(1));
        assert_eq!(b.try_take(19_999).map(|i| i.reset_ms).ok(), Some(20_000));
        assert!(b.try_take(19_999).is_err());
        assert_eq!(b.peek(20_000).remaining, 2);
    }
}
