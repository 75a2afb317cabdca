//! Reconnect delays: exponential backoff with full jitter (AWS "Exponential Backoff and
//! Jitter"): attempt `n` waits a uniformly random time in `[0, min(max, base · factorⁿ))`,
//! which spreads a crowd of clients reconnecting after a server restart.
//! Plain Rust with the randomness passed in, so it is testable anywhere.

use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Upper bound of the first delay. Defaults to 500 ms.
    pub base: Duration,
    /// Growth per attempt. Defaults to 2.
    pub factor: f64,
    /// Cap on the upper bound. Defaults to 30 s.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            factor: 2.0,
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The upper bound of the delay before attempt `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let grown = self.base.as_secs_f64() * self.factor.powi(attempt.min(64) as i32);
        Duration::from_secs_f64(grown.min(self.max.as_secs_f64()))
    }

    /// The delay before attempt `attempt`, given `random` uniform in `[0, 1)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        self.ceiling(attempt).mul_f64(random.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters_within_the_window() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(1), Duration::from_millis(1000));
        assert_eq!(b.ceiling(3), Duration::from_millis(4000));
        assert_eq!(b.ceiling(20), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
        assert_eq!(b.delay(2, 0.0), Duration::ZERO);
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(1000));
        assert_eq!(b.delay(2, 7.0), b.ceiling(2), "random is clamped");
    }

    #[test]
    fn full_jitter_spreads_a_crowd() {
        // 1,000 clients reconnecting at attempt 3 with evenly spread random draws: no more
        // than a few land in any 100 ms slice of the 4 s window.
        let b = Backoff::default();
        let mut slices = [0u32; 40];
        for i in 0..1000 {
            let d = b.delay(3, i as f64 / 1000.0);
            slices[(d.as_millis() / 100).min(39) as usize] += 1;
        }
        assert!(slices.iter().all(|&n| n <= 30), "{slices:?}");
    }
}
