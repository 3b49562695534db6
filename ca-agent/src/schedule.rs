//! When to renew and how long to back off: pure functions of the certificate's validity, the
//! current time and a random sample, so the schedule is tested without sleeping.

use std::time::Duration;

/// Seconds from `now` until a certificate valid over [`not_before`, `not_after`] should be
/// renewed: at `fraction` of its lifetime, moved earlier by up to `jitter` of the lifetime
/// (`sample` in [0, 1) picks where), never before `now`.
pub fn refresh_in(
    not_before: i64,
    not_after: i64,
    now: i64,
    fraction: f64,
    jitter: f64,
    sample: f64,
) -> Duration {
    if not_after <= not_before {
        return Duration::ZERO;
    }
    let lifetime = (not_after - not_before) as f64;
    let fraction = fraction.clamp(0.05, 0.95);
    let jitter = jitter.clamp(0.0, fraction - 0.01);
    let offset = lifetime * (fraction - jitter * sample.clamp(0.0, 1.0));
    let at = not_before as f64 + offset;
    let secs = (at - now as f64).max(0.0);
    Duration::from_secs_f64(secs)
}

/// Exponential backoff with full jitter: attempt `n` (0-based) waits a random share (`sample`)
/// of `min(cap, initial * 2^n)`, at least `initial / 2`.
pub fn backoff(attempt: u32, initial: Duration, cap: Duration, sample: f64) -> Duration {
    let exp = initial.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX));
    let ceiling = exp.min(cap).max(initial);
    let floor = initial / 2;
    let span = ceiling.saturating_sub(floor);
    floor + span.mul_f64(sample.clamp(0.0, 1.0))
}

/// A random number in [0, 1) from the system's secure generator (falls back to the clock).
pub fn random_unit() -> f64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 8];
    if SystemRandom::new().fill(&mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return f64::from(nanos % 1_000_000) / 1_000_000.0;
    }
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds_without_jitter() {
        assert_eq!(
            refresh_in(0, 300, 0, 2.0 / 3.0, 0.0, 0.5),
            Duration::from_secs(200)
        );
        assert_eq!(
            refresh_in(0, 300, 150, 2.0 / 3.0, 0.0, 0.5),
            Duration::from_secs(50)
        );
    }

    #[test]
    fn jitter_moves_renewal_earlier_only_and_stays_bounded() {
        let early = refresh_in(0, 1000, 0, 0.66, 0.1, 0.999);
        let late = refresh_in(0, 1000, 0, 0.66, 0.1, 0.0);
        assert_eq!(late, Duration::from_secs(660));
        assert!(
            early >= Duration::from_secs(560) && early < late,
            "{early:?}"
        );
    }

    #[test]
    fn overdue_or_expired_renews_now() {
        assert_eq!(refresh_in(0, 300, 299, 0.66, 0.0, 0.0), Duration::ZERO);
        assert_eq!(refresh_in(0, 300, 10_000, 0.66, 0.0, 0.0), Duration::ZERO);
        assert_eq!(
            refresh_in(300, 0, 0, 0.66, 0.0, 0.0),
            Duration::ZERO,
            "inverted validity"
        );
    }

    #[test]
    fn absurd_fractions_are_clamped() {
        assert_eq!(
            refresh_in(0, 100, 0, 5.0, 0.0, 0.0),
            Duration::from_secs(95)
        );
        assert_eq!(
            refresh_in(0, 100, 0, -1.0, 0.0, 0.0),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let i = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(0, i, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(3, i, cap, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(50, i, cap, 1.0), cap);
        assert_eq!(backoff(50, i, cap, 0.0), Duration::from_millis(500));
        for n in 0..40 {
            let d = backoff(n, i, cap, 0.37);
            assert!(d >= Duration::from_millis(500) && d <= cap, "{n}: {d:?}");
        }
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..100 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
