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
/// (1-based): `base * 2^(attempt-1)`, capped at `max`, but never below the server's `floor`
/// (its `retryAfter` or `Retry-After`): sending earlier than the server asked only buys
/// another refusal, so the floor wins even over the cap.
pub fn upper_bound(policy: Policy, attempt: u32, floor: Option<Duration>) -> Duration {
    let exp = attempt.saturating_sub(1).min(63);
    let grown = policy
        .base
        .checked_mul(1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(Duration::MAX);
    let capped = grown.min(policy.max);
    match floor {
        Some(f) => capped.max(f),
        None => capped,
    }
}

/// The delay itself: "equal jitter" between half the bound and the bound, lifted to the
/// floor. `jitter` is a number in `[0, 1)` the caller draws (so this stays pure); values
/// outside are clamped.
pub fn delay(policy: Policy, attempt: u32, floor: Option<Duration>, jitter: f64) -> Duration {
    let upper = upper_bound(policy, attempt, floor);
    let lower = (upper / 2).max(floor.unwrap_or(Duration::ZERO)).min(upper);
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

    fn floor() -> impl Strategy<Value = Option<Duration>> {
        proptest::option::of((0u64..100_000_000).prop_map(Duration::from_millis))
    }

    proptest! {
        #[test]
        fn bound_grows_monotonically(p in policy(), a in 1u32..200, f in floor()) {
            prop_assert!(upper_bound(p, a + 1, f) >= upper_bound(p, a, f));
        }

        #[test]
        fn never_below_the_floor(p in policy(), a in 1u32..200, f in floor(), j in 0.0f64..1.0) {
            if let Some(f) = f {
                prop_assert!(delay(p, a, Some(f), j) >= f);
            }
        }

        #[test]
        fn never_above_the_cap_unless_the_server_asks(p in policy(), a in 1u32..200, f in floor(), j in 0.0f64..1.0) {
            let d = delay(p, a, f, j);
            let ceiling = p.max.max(f.unwrap_or(Duration::ZERO));
            prop_assert!(d <= ceiling);
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
    }
}
