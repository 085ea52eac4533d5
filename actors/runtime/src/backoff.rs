//! The one exponential backoff of the code base: worker retries, Socket Mode reconnects,
//! agent and Web API call retries and inbox mark retries all use [`Backoff`].

use std::time::Duration;

/// Exponential backoff: the n-th consecutive failure (1-based) waits `base * 2^(n-1)`, capped
/// at `max`. The policy is a value ([`Backoff::delay`]); callers that keep no failure count
/// of their own let the backoff count ([`Backoff::next_delay`], [`Backoff::reset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff from `base` doubling up to `max`, with no failures counted.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// A backoff from `base` that doubles without a cap (for short, bounded retry loops).
    pub const fn uncapped(base: Duration) -> Self {
        Self::new(base, Duration::MAX)
    }

    /// The delay after the `failures`-th consecutive failure (0 gives no delay).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(31);
        self.base
            .checked_mul(1u32 << shift)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// Counts one more failure and returns the delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay(self.failures)
    }

    /// Consecutive failures counted by [`Backoff::next_delay`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delay_doubles_and_caps() {
        let b = Backoff::new(ms(100), ms(1000));
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(1), ms(100));
        assert_eq!(b.delay(2), ms(200));
        assert_eq!(b.delay(4), ms(800));
        assert_eq!(b.delay(5), ms(1000));
        assert_eq!(b.delay(400), ms(1000));
    }

    #[test]
    fn counted_delays_double_cap_and_reset() {
        let mut b = Backoff::new(ms(100), ms(500));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        assert_eq!(b.failures(), 5);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        let mut huge = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..100 {
            assert!(huge.next_delay() <= Duration::from_secs(60));
        }
    }

    #[test]
    fn uncapped_saturates() {
        let b = Backoff::uncapped(ms(250));
        assert_eq!(b.delay(3), ms(1000));
        assert_eq!(b.delay(u32::MAX), ms(250) * (1 << 31));
    }
}
