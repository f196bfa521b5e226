//! When to retry and when to renew: pure functions of their inputs (the
//! random part is passed in as a number in `[0, 1)`), plus the small
//! stateful [`Backoff`] the loop uses.

use std::time::{Duration, SystemTime};

use ring::rand::SecureRandom;

/// The first retry delay.
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Retry delays are spread by ±20 % so that agents do not retry in step.
const BACKOFF_JITTER: f64 = 0.2;
/// Renewal is spread by ±5 % of the intermediate's lifetime.
const RENEWAL_JITTER: f64 = 0.05;

/// The delay before retry number `attempt` (0 for the first retry):
/// 200 ms × 2^attempt, capped at `max`, spread by ±20 % according to `unit`
/// (in `[0, 1)`, 0.5 means no spread), and never above `max`.
pub(crate) fn backoff_delay(attempt: u32, max: Duration, unit: f64) -> Duration {
    let exponent = i32::try_from(attempt.min(40)).unwrap_or(40);
    let max_seconds = max.as_secs_f64();
    let base = (INITIAL_BACKOFF.as_secs_f64() * 2f64.powi(exponent)).min(max_seconds);
    let spread = 1.0 + BACKOFF_JITTER * (2.0 * clamp_unit(unit) - 1.0);
    let seconds = (base * spread).clamp(0.0, max_seconds);
    Duration::try_from_secs_f64(seconds).unwrap_or(max)
}

/// When to renew a certificate valid from `not_before` to `not_after`:
/// at `fraction` of its lifetime, moved by up to ±5 % of the lifetime
/// according to `unit` (in `[0, 1)`, 0.5 means exactly at `fraction`), and
/// never outside the validity window.
pub(crate) fn renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    fraction: f64,
    unit: f64,
) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let share = fraction + RENEWAL_JITTER * (2.0 * clamp_unit(unit) - 1.0);
    let offset = (lifetime * share).clamp(0.0, lifetime);
    Duration::try_from_secs_f64(offset)
        .ok()
        .and_then(|offset| not_before.checked_add(offset))
        .unwrap_or(not_after)
}

/// The moment a certificate was issued: its NotBefore plus the CA's
/// clock-skew backdate ([`crate::ca::BACKDATE`]), never after NotAfter.
/// Renewal is timed from here, so a short-lived certificate is not "due"
/// the moment it arrives.
pub(crate) fn issued_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    not_before
        .checked_add(crate::ca::BACKDATE)
        .map_or(not_after, |issued| issued.min(not_after))
}

/// Whether a certificate valid from `not_before` to `not_after` is past
/// `fraction` of its lifetime at `now` (no jitter: used to decide whether an
/// existing intermediate may be adopted).
pub(crate) fn renewal_due(
    not_before: SystemTime,
    not_after: SystemTime,
    fraction: f64,
    now: SystemTime,
) -> bool {
    now >= renewal_time(not_before, not_after, fraction, 0.5)
}

fn clamp_unit(unit: f64) -> f64 {
    if unit.is_nan() {
        0.5
    } else {
        unit.clamp(0.0, 1.0)
    }
}

/// A uniformly random number in `[0, 1)` from the system RNG (0.5 if the
/// RNG fails: jitter is a nicety, not a security property).
pub(crate) fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits: exactly representable in an f64 mantissa.
    let bits = u64::from_le_bytes(bytes) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// A random `u32` from the system RNG (0 if the RNG fails; used for unique
/// names, where uniqueness is also enforced by the file system).
pub(crate) fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0;
    }
    u32::from_le_bytes(bytes)
}

/// Capped exponential backoff with jitter; [`Backoff::reset`] after success.
#[derive(Debug)]
pub(crate) struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    /// A backoff starting at 200 ms and capped at `max`.
    pub(crate) fn new(max: Duration) -> Self {
        Self { attempt: 0, max }
    }

    /// The delay before the next retry; each call doubles the next one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = backoff_delay(self.attempt, self.max, random_unit());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Starts over at 200 ms.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn backoff_doubles_from_200_milliseconds() {
        assert_eq!(backoff_delay(0, MAX, 0.5), Duration::from_millis(200));
        assert_eq!(backoff_delay(1, MAX, 0.5), Duration::from_millis(400));
        assert_eq!(backoff_delay(2, MAX, 0.5), Duration::from_millis(800));
        assert_eq!(backoff_delay(5, MAX, 0.5), Duration::from_millis(6400));
    }

    #[test]
    fn backoff_is_capped_even_with_jitter_and_huge_attempts() {
        assert_eq!(backoff_delay(8, MAX, 0.5), MAX);
        assert_eq!(backoff_delay(u32::MAX, MAX, 0.5), MAX);
        assert!(backoff_delay(20, MAX, 0.999) <= MAX);
        assert_eq!(backoff_delay(3, Duration::ZERO, 0.9), Duration::ZERO);
    }

    #[test]
    fn backoff_jitter_spreads_by_twenty_percent() {
        let low = backoff_delay(2, MAX, 0.0);
        let high = backoff_delay(2, MAX, 1.0);
        assert_eq!(low, Duration::from_millis(640));
        assert_eq!(high, Duration::from_millis(960));
        assert_eq!(backoff_delay(2, MAX, f64::NAN), Duration::from_millis(800));
        // Capped delays only spread downwards.
        assert!(backoff_delay(10, MAX, 0.0) >= Duration::from_secs(24));
    }

    #[test]
    fn backoff_state_grows_and_resets() {
        let mut backoff = Backoff::new(MAX);
        let delays: Vec<Duration> = (0..4).map(|_| backoff.next_delay()).collect();
        for (attempt, delay) in delays.iter().enumerate() {
            let nominal = 0.2 * 2f64.powi(attempt as i32);
            let seconds = delay.as_secs_f64();
            assert!(seconds >= nominal * 0.8 - 1e-9 && seconds <= nominal * 1.2 + 1e-9);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(240));
    }

    #[test]
    fn renewal_at_two_thirds_of_lifetime_without_jitter() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(90 * 3600);
        let renew = renewal_time(start, end, 2.0 / 3.0, 0.5);
        assert_eq!(renew.duration_since(start).unwrap().as_secs(), 60 * 3600);
    }

    #[test]
    fn renewal_jitter_is_five_percent_of_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(1000);
        let early = renewal_time(start, end, 0.5, 0.0);
        let late = renewal_time(start, end, 0.5, 1.0);
        assert_eq!(early.duration_since(start).unwrap().as_secs(), 450);
        assert_eq!(late.duration_since(start).unwrap().as_secs(), 550);
    }

    #[test]
    fn renewal_stays_inside_the_validity_window() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(1000);
        assert_eq!(renewal_time(start, end, 1.0, 1.0), end);
        assert_eq!(renewal_time(start, end, 0.0, 0.0), start);
        // Inverted validity: renew at once.
        assert_eq!(renewal_time(end, start, 0.5, 0.5), end);
    }

    #[test]
    fn renewal_due_compares_against_the_fraction() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(300);
        let fraction = 2.0 / 3.0;
        assert!(!renewal_due(
            start,
            end,
            fraction,
            start + Duration::from_secs(199)
        ));
        assert!(renewal_due(
            start,
            end,
            fraction,
            start + Duration::from_secs(200)
        ));
        assert!(renewal_due(
            start,
            end,
            fraction,
            end + Duration::from_secs(1)
        ));
    }

    #[test]
    fn renewal_is_timed_from_issuance_not_from_the_backdated_not_before() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_before = issued - crate::ca::BACKDATE;
        let not_after = issued + Duration::from_secs(90);
        let start = issued_at(not_before, not_after);
        assert_eq!(start, issued);
        let renew = renewal_time(start, not_after, 2.0 / 3.0, 0.5);
        assert_eq!(renew, issued + Duration::from_secs(60));
        assert!(!renewal_due(
            start,
            not_after,
            2.0 / 3.0,
            issued + Duration::from_secs(1)
        ));
        // A certificate shorter than the backdate starts and ends at NotAfter.
        assert_eq!(
            issued_at(not_before, not_before + Duration::from_secs(10)),
            not_before + Duration::from_secs(10)
        );
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..1000 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit));
        }
    }
}
