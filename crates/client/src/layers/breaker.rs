//! A circuit breaker per target: after `threshold` consecutive failed
//! attempts it opens and calls fail fast with UNAVAILABLE instead of
//! waiting on a dead downstream; after a backoff (growing, jittered) one
//! probe goes through; its success closes the circuit, its failure opens it
//! again for longer.
//!
//! Only unavailability counts as failure (transport errors, UNAVAILABLE,
//! no ready endpoint); an application error such as NOT_FOUND means the
//! downstream is up and answering.
//!
//! [`BreakerLayer`] puts it in front of each attempt: a refused attempt
//! is [`AttemptError::CircuitOpen`], which the retry layer answers with
//! UNAVAILABLE at once, without retrying.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tokio::time::Instant;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::{
    attempt::{AttemptError, breaker_outcome},
    backoff::ConnectionBackoff,
};

/// What the breaker says about one attempt.
pub enum Admission {
    /// Go ahead; report the outcome through the permit.
    Allowed(Permit),
    /// The circuit is open: fail fast.
    Rejected,
}

/// How an attempt ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The downstream answered.
    Success,
    /// The downstream was unavailable.
    Failure,
    /// Nothing learned (the caller gave up, the deadline passed).
    Neutral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Closed { .. } => "closed",
            Phase::Open { .. } => "open",
            Phase::HalfOpen { .. } => "half_open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            Phase::Closed { .. } => 0.0,
            Phase::HalfOpen { .. } => 1.0,
            Phase::Open { .. } => 2.0,
        }
    }
}

struct State {
    phase: Phase,
    backoff: ConnectionBackoff,
}

/// The breaker of one target (shared by every clone of its client).
pub struct CircuitBreaker {
    target: String,
    threshold: u32,
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// A closed breaker for `target` that opens after `threshold`
    /// consecutive failures (0 disables it) and waits `initial` growing to
    /// `max` (×2, ±20%) before each probe.
    pub fn new(target: &str, threshold: u32, initial: Duration, max: Duration) -> Arc<Self> {
        let breaker = CircuitBreaker {
            target: target.to_owned(),
            threshold,
            state: Mutex::new(State {
                phase: Phase::Closed { failures: 0 },
                backoff: ConnectionBackoff::new(initial, max, 2.0, 0.2),
            }),
        };
        metrics::gauge!("grpc_client_circuit_breaker_state", "target" => breaker.target.clone())
            .set(0.0);
        Arc::new(breaker)
    }

    /// May an attempt go out now?
    pub fn admit(self: &Arc<Self>) -> Admission {
        if self.threshold == 0 {
            return Admission::Allowed(Permit::new(self, false));
        }
        let mut state = self.state.lock().expect("breaker lock");
        match state.phase {
            Phase::Closed { .. } => Admission::Allowed(Permit::new(self, false)),
            Phase::Open { until } if Instant::now() >= until => {
                self.transition(&mut state, Phase::HalfOpen { probing: true });
                Admission::Allowed(Permit::new(self, true))
            }
            Phase::HalfOpen { probing: false } => {
                state.phase = Phase::HalfOpen { probing: true };
                Admission::Allowed(Permit::new(self, true))
            }
            Phase::Open { .. } | Phase::HalfOpen { probing: true } => Admission::Rejected,
        }
    }

    /// An endpoint just became reachable again: end the open wait now, so
    /// the next call probes instead of failing fast until the backoff
    /// runs out.
    pub fn endpoint_recovered(&self) {
        let mut state = self.state.lock().expect("breaker lock");
        if let Phase::Open { .. } = state.phase {
            state.phase = Phase::Open {
                until: Instant::now(),
            };
        }
    }

    /// True while calls are refused without trying.
    pub fn is_open(&self) -> bool {
        matches!(
            self.state.lock().expect("breaker lock").phase,
            Phase::Open { .. }
        )
    }

    fn record(&self, probe: bool, outcome: Outcome) {
        if self.threshold == 0 {
            return;
        }
        let mut state = self.state.lock().expect("breaker lock");
        match (state.phase, outcome) {
            (Phase::Closed { .. }, Outcome::Success) => {
                state.phase = Phase::Closed { failures: 0 };
            }
            (Phase::Closed { failures }, Outcome::Failure) => {
                let failures = failures + 1;
                if failures >= self.threshold {
                    let until = Instant::now() + state.backoff.next_delay();
                    self.transition(&mut state, Phase::Open { until });
                } else {
                    state.phase = Phase::Closed { failures };
                }
            }
            (Phase::HalfOpen { .. }, Outcome::Success) if probe => {
                state.backoff.reset();
                self.transition(&mut state, Phase::Closed { failures: 0 });
            }
            (Phase::HalfOpen { .. }, Outcome::Failure) if probe => {
                let until = Instant::now() + state.backoff.next_delay();
                self.transition(&mut state, Phase::Open { until });
            }
            (Phase::HalfOpen { .. }, Outcome::Neutral) if probe => {
                state.phase = Phase::HalfOpen { probing: false };
            }
            _ => {}
        }
    }

    fn transition(&self, state: &mut State, to: Phase) {
        let from = state.phase;
        state.phase = to;
        if from.name() == to.name() {
            return;
        }
        match to {
            Phase::Open { until } => tracing::warn!(
                target = %self.target,
                from = from.name(),
                retry_in_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
                "circuit breaker opened: calls fail fast until a probe succeeds"
            ),
            _ => tracing::info!(
                target = %self.target,
                from = from.name(),
                to = to.name(),
                "circuit breaker state changed"
            ),
        }
        metrics::gauge!("grpc_client_circuit_breaker_state", "target" => self.target.clone())
            .set(to.gauge());
        metrics::counter!("grpc_client_circuit_breaker_transitions_total",
            "target" => self.target.clone(), "state" => to.name())
        .increment(1);
    }
}

/// One admitted attempt. Dropped without [`Permit::record`] (the caller
/// went away), it counts as [`Outcome::Neutral`], so an abandoned probe
/// never leaves the circuit half-open for good.
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    recorded: bool,
}

impl Permit {
    fn new(breaker: &Arc<CircuitBreaker>, probe: bool) -> Permit {
        Permit {
            breaker: Arc::clone(breaker),
            probe,
            recorded: false,
        }
    }

    /// Reports how the attempt ended.
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.record(self.probe, outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(self.probe, Outcome::Neutral);
        }
    }
}

/// Builds [`Breaker`] services around the attempts to one target.
#[derive(Clone)]
pub struct BreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl BreakerLayer {
    /// Attempts admitted and counted by `breaker`.
    pub fn new(breaker: Arc<CircuitBreaker>) -> BreakerLayer {
        BreakerLayer { breaker }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            breaker: Arc::clone(&self.breaker),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
}

impl<S> Service<Request<Body>> for Breaker<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = AttemptError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = AttemptError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, AttemptError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let permit = match self.breaker.admit() {
            Admission::Allowed(permit) => permit,
            Admission::Rejected => {
                return Box::pin(std::future::ready(Err(AttemptError::CircuitOpen)));
            }
        };
        let attempt = self.inner.call(request);
        Box::pin(async move {
            let result = attempt.await;
            permit.record(breaker_outcome(&result));
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(breaker: &Arc<CircuitBreaker>) -> Permit {
        match breaker.admit() {
            Admission::Allowed(permit) => permit,
            Admission::Rejected => panic!("rejected"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_probes_once_and_closes_on_success() {
        let breaker =
            CircuitBreaker::new("test", 3, Duration::from_secs(1), Duration::from_secs(60));
        // Successes in between reset the count.
        for _ in 0..2 {
            allowed(&breaker).record(Outcome::Failure);
        }
        allowed(&breaker).record(Outcome::Success);
        for _ in 0..2 {
            allowed(&breaker).record(Outcome::Failure);
        }
        assert!(!breaker.is_open());
        allowed(&breaker).record(Outcome::Failure);
        assert!(breaker.is_open());
        assert!(matches!(breaker.admit(), Admission::Rejected));

        // After the backoff (1 s ± 20%) exactly one probe goes through.
        tokio::time::advance(Duration::from_millis(1_250)).await;
        let probe = allowed(&breaker);
        assert!(
            matches!(breaker.admit(), Admission::Rejected),
            "one probe only"
        );
        // A failed probe opens it again, for longer (2 s ± 20%).
        probe.record(Outcome::Failure);
        assert!(breaker.is_open());
        tokio::time::advance(Duration::from_millis(1_250)).await;
        assert!(matches!(breaker.admit(), Admission::Rejected));
        tokio::time::advance(Duration::from_millis(1_200)).await;
        allowed(&breaker).record(Outcome::Success);
        assert!(!breaker.is_open());
        allowed(&breaker).record(Outcome::Success);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_caller_probe() {
        let breaker =
            CircuitBreaker::new("test", 1, Duration::from_secs(1), Duration::from_secs(60));
        allowed(&breaker).record(Outcome::Failure);
        tokio::time::advance(Duration::from_millis(1_250)).await;
        drop(allowed(&breaker));
        allowed(&breaker).record(Outcome::Success);
        assert!(!breaker.is_open());
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let breaker =
            CircuitBreaker::new("test", 0, Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..100 {
            allowed(&breaker).record(Outcome::Failure);
        }
        assert!(!breaker.is_open());
    }
}
