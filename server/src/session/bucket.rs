//! The per-connection rate limit: a token bucket over the clock it is given.

use std::time::Duration;

use tokio::time::Instant;

/// `rate` frames per second sustained, `burst` at once.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Frames refused since the last accepted one: a client that keeps sending into a
    /// refusal is closed with 4109.
    pub(crate) strikes: u32,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
            strikes: 0,
        }
    }

    /// Takes a token at `now`; false (and a strike) when there is none.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed: Duration = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        for _ in 0..5 {
            assert!(b.take(t0), "the burst is there at once");
        }
        assert!(!b.take(t0));
        assert!(!b.take(t0));
        assert_eq!(b.strikes, 2);
        // 10 per second: one token every 100 ms.
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert_eq!(b.strikes, 0, "an accepted frame clears the strikes");
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn an_idle_bucket_refills_to_the_burst_only() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 3, t0);
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later));
        }
        assert!(!b.take(later), "no more than the burst after a long pause");
    }

    #[test]
    fn a_clock_going_backwards_does_not_add_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1, 1, t0);
        assert!(b.take(t0));
        assert!(!b.take(t0 - Duration::from_secs(5)));
        assert!(!b.take(t0 + Duration::from_millis(10)));
        assert!(b.take(t0 + Duration::from_secs(1)));
    }
}
