//! Concurrency: how many jobs of one kind we may have in progress at Importly. The account
//! limit is shared with every other program using the key, so a concurrency 429 tells us
//! how many slots are really ours.

use std::time::{Duration, SystemTime};

/// The longest a probe for a slot someone else holds waits, however often it was refused.
const MAX_PROBE_DELAY: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq)]
pub struct Slots {
    configured: u32,
    /// The account's limit as the server's concurrency 429 stated it (`concurrentLimit`),
    /// when lower than the config: never probe past what the account allows at all.
    account: Option<u32>,
    /// What we currently believe we may hold; below the ceiling after a concurrency 429.
    cap: u32,
    /// When to try one more slot than `cap` (someone else may have let theirs go).
    probe_at: Option<SystemTime>,
    probe_delay: Duration,
    /// Concurrency 429s in a row: each doubles the wait for the next probe (a probe costs
    /// one request of the import budget, so slots held elsewhere must not drain it).
    refusals: u32,
}

impl Slots {
    pub fn new(configured: u32, probe_delay: Duration) -> Slots {
        Slots {
            configured,
            account: None,
            cap: configured,
            probe_at: None,
            probe_delay,
            refusals: 0,
        }
    }

    /// The most we would ever hold: the config, or the account's stated limit if lower.
    fn ceiling(&self) -> u32 {
        self.account
            .map_or(self.configured, |a| a.min(self.configured))
    }

    pub fn reconfigure(&mut self, configured: u32) {
        self.configured = configured;
        self.cap = self.cap.min(self.ceiling());
        if self.cap < self.ceiling() && self.probe_at.is_none() {
            self.probe_at = Some(SystemTime::now());
        }
    }

    fn probe_due(&self, now: SystemTime) -> bool {
        self.probe_at.is_some_and(|p| now >= p)
    }

    /// Free slots now, given `held` of ours in progress (submitting or running). A due
    /// probe offers one slot more than `cap`. Read-only: the cap moves only when a request
    /// actually goes ([`Slots::sent`]) or is refused.
    pub fn free(&self, held: u32, now: SystemTime) -> u32 {
        let cap = if self.probe_due(now) {
            (self.cap.max(held) + 1).min(self.ceiling())
        } else {
            self.cap
        };
        cap.saturating_sub(held)
    }

    /// A submit is going out while `held` of ours are in progress. If it takes a slot past
    /// `cap`, it is the probe: the cap grows by that slot and the next probe is scheduled.
    pub fn sent(&mut self, held: u32, now: SystemTime) {
        if held >= self.cap && self.probe_due(now) {
            self.cap = (held + 1).min(self.ceiling());
            self.probe_at = (self.cap < self.ceiling()).then(|| now + self.current_delay());
        }
    }

    /// A submit was accepted: whatever we probed for was free; probes go back to the short
    /// delay.
    pub fn accepted(&mut self) {
        self.refusals = 0;
    }

    /// A concurrency 429 while `held` jobs of ours were in progress: the rest of the
    /// account's slots are someone else's. `limit` is the body's `concurrentLimit`. One of
    /// ours finishing reopens a slot at once; otherwise we probe for one after a delay that
    /// doubles with each refusal in a row (up to 5 minutes).
    pub fn refused(&mut self, held: u32, limit: Option<u32>, now: SystemTime) {
        if let Some(l) = limit.filter(|l| *l > 0) {
            self.account = Some(l);
        }
        self.cap = held.min(self.ceiling());
        self.refusals = self.refusals.saturating_add(1);
        self.probe_at = (self.cap < self.ceiling()).then(|| now + self.current_delay());
    }

    /// The probe delay after the refusals so far: `probe_delay * 2^(refusals-1)`, capped.
    fn current_delay(&self) -> Duration {
        let doublings = self.refusals.saturating_sub(1).min(16);
        self.probe_delay
            .saturating_mul(1 << doublings)
            .min(MAX_PROBE_DELAY.max(self.probe_delay))
    }

    /// When a probe is due, for the scheduler's wake-up.
    pub fn probe_at(&self) -> Option<SystemTime> {
        self.probe_at
    }

    pub fn configured(&self) -> u32 {
        self.configured
    }

    pub fn cap(&self) -> u32 {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn refusal_shrinks_then_probes_back_with_growing_delays() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(2, secs(5));
        assert_eq!(s.free(0, t0), 2);
        // Someone else holds both slots: we hold none.
        s.refused(0, Some(2), t0);
        assert_eq!(s.free(0, t0), 0);
        assert_eq!(s.free(0, t0 + secs(5)), 1, "a probe after the delay");
        // Looking is free: only a sent probe moves the cap.
        assert_eq!(s.free(0, t0 + secs(5)), 1);
        s.sent(0, t0 + secs(5));
        // Still refused: back to zero, and the next probe waits twice as long.
        s.refused(0, Some(2), t0 + secs(5));
        assert_eq!(s.free(0, t0 + secs(14)), 0);
        assert_eq!(s.free(0, t0 + secs(15)), 1);
        s.sent(0, t0 + secs(15));
        s.accepted();
        // Accepted: we hold one; the probe scheduled when it went (10 s, two refusals in a
        // row then) offers the second.
        assert_eq!(s.free(1, t0 + secs(16)), 0);
        assert_eq!(s.free(1, t0 + secs(25)), 1);
        s.sent(1, t0 + secs(25));
        assert_eq!(s.cap(), 2);
        assert_eq!(s.probe_at(), None, "at the ceiling, nothing to probe");
        // The accept ended the run of refusals: the next refusal waits the short delay
        // again (5 s, not 20 s).
        s.refused(1, Some(2), t0 + secs(30));
        assert_eq!(s.probe_at(), Some(t0 + secs(35)));
    }

    #[test]
    fn probe_delay_is_capped() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(2, secs(5));
        for _ in 0..40 {
            s.refused(0, None, t0);
        }
        assert_eq!(s.probe_at(), Some(t0 + MAX_PROBE_DELAY));
    }

    #[test]
    fn the_accounts_stated_limit_is_a_ceiling() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(5, secs(5));
        // The account allows 2 and we hold 2: never probe for a third.
        s.refused(2, Some(2), t0);
        assert_eq!(s.free(2, t0 + secs(3600)), 0);
        assert_eq!(s.free(1, t0 + secs(3600)), 1);
        assert_eq!(s.probe_at(), None);
    }

    #[test]
    fn our_job_finishing_reopens_a_slot() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(2, secs(60));
        s.refused(1, None, t0);
        assert_eq!(s.free(1, t0), 0);
        assert_eq!(s.free(0, t0), 1);
    }
}
