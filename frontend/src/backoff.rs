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
