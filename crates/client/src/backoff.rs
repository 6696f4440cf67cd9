//! The two backoff shapes the client uses.
//!
//! - [`ConnectionBackoff`]: gRPC's connection-backoff spec (initial delay,
//!   multiplier, ceiling, ± jitter), for reconnecting to an endpoint and for
//!   the circuit breaker's probe delay.
//! - [`full_jitter`]: gRFC A6 retry delays, uniformly random between zero
//!   and an exponentially growing ceiling, so that callers that failed
//!   together do not retry together.

use std::time::Duration;

/// Exponential backoff with multiplicative jitter, per
/// <https://github.com/grpc/grpc/blob/master/doc/connection-backoff.md>.
#[derive(Debug, Clone)]
pub struct ConnectionBackoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
    current: Duration,
}

impl ConnectionBackoff {
    /// A backoff starting at `initial`, growing by `multiplier` up to
    /// `max`, each delay randomised by ±`jitter` (0.2 = ±20%).
    pub fn new(initial: Duration, max: Duration, multiplier: f64, jitter: f64) -> Self {
        ConnectionBackoff {
            initial,
            max: max.max(initial),
            multiplier: multiplier.max(1.0),
            jitter: jitter.clamp(0.0, 1.0),
            current: initial,
        }
    }

    /// The next delay (jittered), and the base for the one after grows.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = self.max.min(base.mul_f64(self.multiplier));
        let factor = 1.0 + self.jitter * (2.0 * fastrand::f64() - 1.0);
        base.mul_f64(factor)
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// The delay before retry number `retry` (1 for the first retry): uniform in
/// `[0, min(initial × multiplier^(retry-1), max)]`.
pub fn full_jitter(initial: Duration, max: Duration, multiplier: f64, retry: u32) -> Duration {
    let exponent = retry.saturating_sub(1).min(64) as i32;
    let ceiling =
        (initial.as_secs_f64() * multiplier.max(1.0).powi(exponent)).min(max.as_secs_f64());
    Duration::from_secs_f64(ceiling * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_backoff_grows_to_its_ceiling_within_the_jitter() {
        let mut backoff =
            ConnectionBackoff::new(Duration::from_secs(1), Duration::from_secs(120), 1.6, 0.2);
        let mut base = 1.0_f64;
        for _ in 0..30 {
            let delay = backoff.next_delay().as_secs_f64();
            assert!(
                delay >= base * 0.8 - 1e-9 && delay <= base * 1.2 + 1e-9,
                "{delay} for base {base}"
            );
            base = (base * 1.6).min(120.0);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn retry_delays_are_random_below_a_growing_ceiling() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for retry in 1..=6 {
            let ceiling = (0.1 * 2f64.powi(retry as i32 - 1)).min(1.0);
            let delays: Vec<f64> = (0..200)
                .map(|_| full_jitter(initial, max, 2.0, retry).as_secs_f64())
                .collect();
            assert!(delays.iter().all(|d| *d <= ceiling + 1e-9));
            // Spread over the range, not a constant.
            let low = delays.iter().filter(|d| **d < ceiling / 2.0).count();
            assert!((40..=160).contains(&low), "{low} of 200 in the lower half");
        }
    }
}
