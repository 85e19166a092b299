//! Reconnect back-off: 100 ms doubling to 5 s, each delay jittered by ±20 % so that a fleet of
//! agents does not dial a new leader in lockstep; reset once a session is established.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The next delay before jitter: initial × 2^attempt, at most `max`.
    pub fn next_base(&mut self) -> Duration {
        let d = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// The next delay with jitter from `r` in [0, 1): base × (0.8 + 0.4 r), at most `max`.
    pub fn next_with(&mut self, r: f64) -> Duration {
        let base = self.next_base();
        base.mul_f64(0.8 + 0.4 * r.clamp(0.0, 1.0)).min(self.max)
    }

    /// The next delay, jittered.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(random_unit())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A number in [0, 1) from the kernel's randomness.
pub fn random_unit() -> f64 {
    let hex = crate::engine::random_hex(4);
    let n = u32::from_str_radix(&hex, 16).unwrap_or(0);
    f64::from(n) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..9).map(|_| b.next_base().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_base(), Duration::from_millis(100));
        for _ in 0..100 {
            b.next_base();
        }
        assert_eq!(b.next_base(), Duration::from_secs(5), "no overflow");
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_the_cap() {
        let mut b = Backoff::default();
        assert_eq!(b.next_with(0.0), Duration::from_millis(80));
        assert_eq!(b.next_with(0.5), Duration::from_millis(200));
        let d = b.next_with(0.999);
        assert!(
            d > Duration::from_millis(470) && d < Duration::from_millis(480),
            "{d:?}"
        );
        let mut b = Backoff::default();
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(80) && d <= Duration::from_secs(5),
                "{d:?}"
            );
        }
        for _ in 0..100 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
