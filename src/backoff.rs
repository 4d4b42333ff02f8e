//! The retry delay: one pure function, so the schedule can be stored in the database as a
//! plain `next_attempt_at` and tested with properties instead of clocks.

use std::time::Duration;

/// What the delay depends on, straight from `[retry]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub base: Duration,
    pub max: Duration,
}

/// The upper bound of the delay before attempt `attempt + 1`, after `attempt` failures
/// (1-based): `base * 2^(attempt-1)`, capped at `max`, and lifted to the server's `floor`
/// (its `Retry-After` on a failed answer) as far as `max`: sending earlier than the server
/// asked only buys another refusal, but the operator's `max_delay` is the longest a row
/// waits for a failure of its own, whatever a server says (a garbled `Retry-After` of
/// 584 billion years, once a panic, is a wait of `max`).
pub fn upper_bound(policy: Policy, attempt: u32, floor: Option<Duration>) -> Duration {
    let exp = attempt.saturating_sub(1).min(63);
    let grown = policy
        .base
        .checked_mul(1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(Duration::MAX);
    let capped = grown.min(policy.max);
    capped.max(effective_floor(policy, floor))
}

/// The server's floor as far as it counts: at most `max`.
fn effective_floor(policy: Policy, floor: Option<Duration>) -> Duration {
    floor.unwrap_or(Duration::ZERO).min(policy.max)
}

/// The delay itself: "equal jitter" between half the bound and the bound, lifted to the
/// floor (as far as `max`). `jitter` is a number in `[0, 1)` the caller draws (so this
/// stays pure); values outside are clamped.
pub fn delay(policy: Policy, attempt: u32, floor: Option<Duration>, jitter: f64) -> Duration {
    let upper = upper_bound(policy, attempt, floor);
    let lower = (upper / 2).max(effective_floor(policy, floor)).min(upper);
    let j = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let span = upper.saturating_sub(lower);
    lower + span.mul_f64(j)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> impl Strategy<Value = Policy> {
        (1u64..3_600_000, 0u64..86_400_000).prop_map(|(base, extra)| Policy {
            base: Duration::from_millis(base),
            max: Duration::from_millis(base + extra),
        })
    }

    /// Ordinary floors, and absurd ones (up to `Duration::MAX`, the u64::MAX seconds a
    /// garbled `Retry-After` once was).
    fn floor() -> impl Strategy<Value = Option<Duration>> {
        proptest::option::of(prop_oneof![
            (0u64..100_000_000).prop_map(Duration::from_millis),
            any::<u64>().prop_map(Duration::from_secs),
            Just(Duration::MAX),
        ])
    }

    proptest! {
        #[test]
        fn bound_grows_monotonically(p in policy(), a in 1u32..200, f in floor()) {
            prop_assert!(upper_bound(p, a + 1, f) >= upper_bound(p, a, f));
        }

        #[test]
        fn never_below_the_floor_up_to_the_cap(p in policy(), a in 1u32..200, f in floor(), j in 0.0f64..1.0) {
            if let Some(f) = f {
                prop_assert!(delay(p, a, Some(f), j) >= f.min(p.max));
            }
        }

        #[test]
        fn never_above_the_cap_whatever_the_server_asks(p in policy(), a in 0u32..u32::MAX, f in floor(), j in 0.0f64..1.0) {
            prop_assert!(upper_bound(p, a, f) <= p.max);
            prop_assert!(delay(p, a, f, j) <= p.max);
            // So `now + delay` cannot overflow for any sane max_delay.
            prop_assert!(std::time::SystemTime::now().checked_add(delay(p, a, f, j)).is_some());
        }

        #[test]
        fn jitter_stays_in_its_range(p in policy(), a in 1u32..200, f in floor(), j in 0.0f64..1.0) {
            let upper = upper_bound(p, a, f);
            let d = delay(p, a, f, j);
            prop_assert!(d <= upper);
            prop_assert!(d >= upper / 2);
        }

        #[test]
        fn any_jitter_input_is_safe(p in policy(), a in 0u32..u32::MAX, j in proptest::num::f64::ANY) {
            let d = delay(p, a, None, j);
            prop_assert!(d <= p.max);
        }
    }

    #[test]
    fn doubles_from_the_base() {
        let p = Policy {
            base: Duration::from_secs(30),
            max: Duration::from_secs(6 * 3600),
        };
        assert_eq!(upper_bound(p, 1, None), Duration::from_secs(30));
        assert_eq!(upper_bound(p, 2, None), Duration::from_secs(60));
        assert_eq!(upper_bound(p, 4, None), Duration::from_secs(240));
        assert_eq!(upper_bound(p, 40, None), Duration::from_secs(6 * 3600));
        // retryAfter of an hour beats a 30 s base.
        assert_eq!(
            delay(p, 1, Some(Duration::from_secs(3600)), 0.0),
            Duration::from_secs(3600)
        );
        // A Retry-After past max_delay waits max_delay; u64::MAX seconds used to panic.
        assert_eq!(
            delay(p, 1, Some(Duration::from_secs(7 * 3600)), 0.0),
            Duration::from_secs(6 * 3600)
        );
        assert_eq!(
            upper_bound(p, 1, Some(Duration::from_secs(u64::MAX))),
            Duration::from_secs(6 * 3600)
        );
    }
}
