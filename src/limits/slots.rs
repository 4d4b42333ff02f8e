//! Concurrency: how many jobs of one kind we may have in progress at Importly. The account
//! limit is shared with every other program using the key, so a concurrency 429 tells us
//! how many slots are really ours.

use std::time::{Duration, SystemTime};

#[derive(Clone, Debug, PartialEq)]
pub struct Slots {
    configured: u32,
    /// What we currently believe we may hold; below `configured` after a concurrency 429.
    cap: u32,
    /// When to try one more slot than `cap` (someone else may have let theirs go).
    probe_at: Option<SystemTime>,
    probe_delay: Duration,
}

impl Slots {
    pub fn new(configured: u32, probe_delay: Duration) -> Slots {
        Slots {
            configured,
            cap: configured,
            probe_at: None,
            probe_delay,
        }
    }

    pub fn reconfigure(&mut self, configured: u32) {
        self.configured = configured;
        self.cap = self.cap.min(configured);
        if self.cap < configured && self.probe_at.is_none() {
            self.probe_at = Some(SystemTime::now());
        }
    }

    /// Free slots now, given `held` of ours in progress (submitting or running).
    pub fn free(&mut self, held: u32, now: SystemTime) -> u32 {
        if let Some(p) = self.probe_at
            && now >= p
        {
            self.cap = (self.cap.max(held) + 1).min(self.configured);
            self.probe_at = (self.cap < self.configured).then_some(now + self.probe_delay);
        }
        self.cap.saturating_sub(held)
    }

    /// A concurrency 429 while `held` other jobs of ours were in progress: the rest of the
    /// account's slots are someone else's. One of ours finishing reopens a slot at once;
    /// otherwise we probe for one after the delay.
    pub fn refused(&mut self, held: u32, now: SystemTime) {
        self.cap = held.min(self.configured);
        self.probe_at = Some(now + self.probe_delay);
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

    #[test]
    fn refusal_shrinks_then_probes_back() {
        let t0 = UNIX_EPOCH + Duration::from_secs(100);
        let mut s = Slots::new(2, Duration::from_secs(5));
        assert_eq!(s.free(0, t0), 2);
        // Someone else holds both slots: we hold none.
        s.refused(0, t0);
        assert_eq!(s.free(0, t0), 0);
        assert_eq!(s.free(0, t0 + Duration::from_secs(5)), 1);
        // Still refused: back to zero, probe again later.
        s.refused(0, t0 + Duration::from_secs(5));
        assert_eq!(s.free(0, t0 + Duration::from_secs(6)), 0);
        // Accepted after the next probe: we hold one; the next probe offers the second.
        assert_eq!(s.free(0, t0 + Duration::from_secs(10)), 1);
        assert_eq!(s.free(1, t0 + Duration::from_secs(15)), 1);
        assert_eq!(s.cap(), 2);
    }

    #[test]
    fn our_job_finishing_reopens_a_slot() {
        let t0 = UNIX_EPOCH + Duration::from_secs(100);
        let mut s = Slots::new(2, Duration::from_secs(60));
        s.refused(1, t0);
        assert_eq!(s.free(1, t0), 0);
        assert_eq!(s.free(0, t0), 1);
    }
}
