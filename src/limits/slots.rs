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
    /// The base probe delay (`limits.probe_delay`): each probe costs a request of the
    /// bucket, so it is long next to the default import pace.
    probe_delay: Duration,
    /// Concurrency 429s since the last accepted probe: each doubles the wait for the next
    /// probe (a probe costs one request of the import budget, so slots held elsewhere must
    /// not drain it). Only the probe's own success ends the run: our jobs cycling through
    /// the slots we do hold say nothing about the one held elsewhere.
    refusals: u32,
    /// Our jobs in progress when the last probe went: a refusal of that probe leaves us
    /// those slots, even if one of them ended while the probe was on its way.
    probe_held: u32,
    /// When a probe was last accepted, and the refusals before it. The accepted probe may
    /// only have taken a slot of ours whose job had just ended at Importly (we learn that at
    /// its next poll): a refusal soon after shows it, and the run of refusals goes on from
    /// there instead of from the base delay.
    won: Option<(SystemTime, u32)>,
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
            probe_held: 0,
            won: None,
        }
    }

    /// The most we would ever hold: the config, or the account's stated limit if lower.
    fn ceiling(&self) -> u32 {
        self.account
            .map_or(self.configured, |a| a.min(self.configured))
    }

    /// SIGHUP: a new `concurrent` and a new base probe delay. A probe already scheduled is
    /// brought forward if the new delay makes it due sooner; a longer one applies from the
    /// next refusal on.
    pub fn reconfigure(&mut self, configured: u32, probe_delay: Duration, now: SystemTime) {
        self.configured = configured;
        self.probe_delay = probe_delay;
        self.cap = self.cap.min(self.ceiling());
        if self.cap < self.ceiling() {
            let due = now + self.current_delay();
            self.probe_at = Some(self.probe_at.map_or(now, |p| p.min(due)));
        } else {
            self.probe_at = None;
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
    /// `cap`, it is the probe: the cap grows by that slot, the next probe is scheduled, and
    /// true is returned (the caller hands it back to [`Slots::accepted`]).
    pub fn sent(&mut self, held: u32, now: SystemTime) -> bool {
        if held >= self.cap && self.probe_due(now) {
            self.cap = (held + 1).min(self.ceiling());
            self.probe_at = (self.cap < self.ceiling()).then(|| now + self.current_delay());
            self.probe_held = held;
            return true;
        }
        false
    }

    /// A submit was accepted. Only the probe's own accept proves the probed slot free and
    /// sends the probe delay back to its base; an accept in a slot we already held does not.
    pub fn accepted(&mut self, probe: bool, now: SystemTime) {
        if probe {
            self.won = Some((now, self.refusals));
            self.refusals = 0;
            self.probe_at = self.probe_at.map(|p| p.min(now + self.probe_delay));
        }
    }

    /// A concurrency 429 while `held` jobs of ours were in progress (`probe`: the refused
    /// submit was the probe): the rest of the account's slots are someone else's. `limit`
    /// and `current` are the body's `concurrentLimit` and `currentConcurrent`. One of ours
    /// finishing reopens a slot at once; otherwise we probe for one after a delay that
    /// doubles with each refusal since the last accepted probe (up to 5 minutes). A body
    /// saying fewer jobs are in progress than allowed means a slot has just freed: the delay
    /// goes back to its base.
    pub fn refused(
        &mut self,
        held: u32,
        limit: Option<u32>,
        current: Option<u32>,
        probe: bool,
        now: SystemTime,
    ) {
        if let Some(l) = limit.filter(|l| *l > 0) {
            self.account = Some(l);
        }
        let ours = if probe {
            held.max(self.probe_held)
        } else {
            held
        };
        self.cap = ours.min(self.ceiling());
        let freed = matches!((current, limit), (Some(c), Some(l)) if c < l);
        let before = match self.won.take() {
            // The accepted probe had only taken back a slot of ours: the run goes on.
            Some((at, prior)) if now < at + delay_after(self.probe_delay, prior) => prior,
            _ => self.refusals,
        };
        self.refusals = if freed { 0 } else { before.saturating_add(1) };
        self.probe_at = (self.cap < self.ceiling()).then(|| now + self.current_delay());
    }

    /// The probe delay after the refusals so far (see [`delay_after`]).
    fn current_delay(&self) -> Duration {
        delay_after(self.probe_delay, self.refusals)
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

/// The probe delay after `refusals` refusals in a row: `base * 2^(refusals-1)`, at most
/// [`MAX_PROBE_DELAY`] (or `base`, if that is longer).
fn delay_after(base: Duration, refusals: u32) -> Duration {
    let doublings = refusals.saturating_sub(1).min(16);
    base.saturating_mul(1 << doublings)
        .min(MAX_PROBE_DELAY.max(base))
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
        s.refused(0, Some(2), Some(2), false, t0);
        assert_eq!(s.free(0, t0), 0);
        assert_eq!(s.free(0, t0 + secs(5)), 1, "a probe after the delay");
        // Looking is free: only a sent probe moves the cap.
        assert_eq!(s.free(0, t0 + secs(5)), 1);
        assert!(s.sent(0, t0 + secs(5)), "that submit is the probe");
        // Still refused: back to zero, and the next probe waits twice as long.
        s.refused(0, Some(2), Some(2), true, t0 + secs(5));
        assert_eq!(s.free(0, t0 + secs(14)), 0);
        assert_eq!(s.free(0, t0 + secs(15)), 1);
        assert!(s.sent(0, t0 + secs(15)));
        s.accepted(true, t0 + secs(15));
        // The probe was accepted: we hold one, and the delay is back at its base, so the
        // second slot is probed 5 s later (not the 20 s the refusals had reached).
        assert_eq!(s.free(1, t0 + secs(19)), 0);
        assert_eq!(s.free(1, t0 + secs(20)), 1);
        assert!(s.sent(1, t0 + secs(20)));
        assert_eq!(s.cap(), 2);
        assert_eq!(s.probe_at(), None, "at the ceiling, nothing to probe");
        s.accepted(true, t0 + secs(20));
        // A later refusal starts again from the short delay.
        s.refused(1, Some(2), Some(2), false, t0 + secs(30));
        assert_eq!(s.probe_at(), Some(t0 + secs(35)));
    }

    #[test]
    fn accepts_in_slots_we_hold_do_not_reset_the_probe_delay() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(2, secs(1));
        // One of two slots is held elsewhere; ours cycles through the other.
        s.refused(1, Some(2), Some(2), false, t0);
        assert_eq!(s.probe_at(), Some(t0 + secs(1)));
        let mut now = t0;
        for refusal in 1..=5u32 {
            // Our job in the slot we hold ends and the next takes its place at once: not a
            // probe, and its accept says nothing about the other slot.
            assert_eq!(s.free(0, now), 1, "our own slot reopens at once");
            assert!(!s.sent(0, now));
            s.accepted(false, now);
            // The probe, when due, is refused again.
            let due = s.probe_at().expect("a probe is scheduled");
            assert_eq!(due, now + secs(1 << (refusal - 1)), "refusal {refusal}");
            now = due;
            assert_eq!(s.free(1, now), 1);
            assert!(s.sent(1, now));
            s.refused(1, Some(2), Some(2), true, now);
        }
        assert_eq!(s.probe_at(), Some(now + secs(32)));
    }

    #[test]
    fn a_refusal_showing_a_free_slot_resets_the_delay() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(2, secs(1));
        for _ in 0..6 {
            s.refused(1, Some(2), Some(2), false, t0);
        }
        assert_eq!(s.probe_at(), Some(t0 + secs(32)));
        // Someone let go between our send and the server's count.
        s.refused(1, Some(2), Some(1), false, t0 + secs(40));
        assert_eq!(s.probe_at(), Some(t0 + secs(41)));
    }

    #[test]
    fn probe_delay_is_capped() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(2, secs(5));
        for _ in 0..40 {
            s.refused(0, None, None, false, t0);
        }
        assert_eq!(s.probe_at(), Some(t0 + MAX_PROBE_DELAY));
    }

    #[test]
    fn the_accounts_stated_limit_is_a_ceiling() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(5, secs(5));
        // The account allows 2 and we hold 2: never probe for a third.
        s.refused(2, Some(2), Some(2), false, t0);
        assert_eq!(s.free(2, t0 + secs(3600)), 0);
        assert_eq!(s.free(1, t0 + secs(3600)), 1);
        assert_eq!(s.probe_at(), None);
    }

    #[test]
    fn our_job_finishing_reopens_a_slot() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(2, secs(60));
        s.refused(1, None, None, false, t0);
        assert_eq!(s.free(1, t0), 0);
        assert_eq!(s.free(0, t0), 1);
    }

    #[test]
    fn reconfigure_rereads_the_probe_delay() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(2, secs(60));
        s.refused(1, Some(2), Some(2), false, t0);
        assert_eq!(s.probe_at(), Some(t0 + secs(60)));
        // A shorter delay takes effect for the probe already scheduled...
        s.reconfigure(2, secs(2), t0 + secs(1));
        assert_eq!(s.probe_at(), Some(t0 + secs(3)));
        // ...and for the next refusals.
        assert!(s.sent(1, t0 + secs(3)));
        s.refused(1, Some(2), Some(2), true, t0 + secs(3));
        assert_eq!(s.probe_at(), Some(t0 + secs(7)));
        // More slots configured than the account allows: the account's limit stays the
        // ceiling.
        s.reconfigure(4, secs(2), t0 + secs(4));
        assert_eq!(s.free(1, t0 + secs(7)), 1);
        assert!(s.sent(1, t0 + secs(7)));
        assert_eq!(s.cap(), 2);
    }

    #[test]
    fn a_refused_probe_leaves_us_the_slots_we_held_when_it_went() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(2, secs(1));
        s.refused(1, Some(2), Some(2), false, t0);
        assert!(s.sent(1, t0 + secs(1)));
        // Our job ended (and was polled) while the probe was on its way: its slot is still
        // ours, to be reused at once, not after the next probe.
        s.refused(0, Some(2), Some(2), true, t0 + secs(1));
        assert_eq!(s.cap(), 1);
        assert_eq!(s.free(0, t0 + secs(1)), 1);
    }

    #[test]
    fn a_probe_that_only_took_back_our_own_slot_does_not_end_the_run() {
        let t0 = UNIX_EPOCH + secs(100);
        let mut s = Slots::new(2, secs(1));
        for _ in 0..4 {
            s.refused(1, Some(2), Some(2), false, t0);
        }
        let due = s.probe_at().expect("a probe is scheduled");
        assert_eq!(due, t0 + secs(8));
        // The probe is accepted, but only because our own job had just ended at Importly:
        // the next submit into "our" slot is refused at once. The run goes on (16 s), it
        // does not start again from 1 s.
        assert!(s.sent(1, due));
        s.accepted(true, due);
        s.refused(1, Some(2), Some(2), false, due + secs(1));
        assert_eq!(s.probe_at(), Some(due + secs(17)));
        // A refusal long after a real win starts a new run from the base delay.
        assert!(s.sent(1, due + secs(17)));
        s.accepted(true, due + secs(17));
        s.refused(1, Some(2), Some(2), false, due + secs(600));
        assert_eq!(s.probe_at(), Some(due + secs(601)));
    }
}
