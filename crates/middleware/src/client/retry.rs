//! Retries per gRFC A6: which answers are retried, how long to wait, and
//! the throttle that stops retrying when a downstream is failing anyway.

use std::{sync::Mutex, time::Duration};

use http::Response;
use tonic::{Code, Status, body::Body};
use tonic_types::StatusExt as _;

use crate::observe::grpc_status;

use super::balance::AttemptError;

/// Largest number of attempts a call may make, whatever is configured
/// (gRFC A6 caps it at 5 too).
pub const MAX_ATTEMPTS_CAP: u32 = 5;

/// How retries are spaced and bounded.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Ceiling of the first retry's random delay.
    pub initial_backoff: Duration,
    /// Largest ceiling.
    pub max_backoff: Duration,
    /// Growth of the ceiling per retry.
    pub multiplier: f64,
}

/// What one attempt's result means for the call.
pub enum Verdict {
    /// A response the caller gets as it is: headers arrived (the call is
    /// committed), or a status that retrying would not change.
    Done(Response<Body>),
    /// A failure a retry may fix. `pushback` is the server's RetryInfo
    /// delay; `unavailable` tells the breaker the downstream is down.
    Retryable {
        /// The answer, should no retry follow.
        response: Response<Body>,
        /// The server asked to wait this long.
        pushback: Option<Duration>,
        /// Unavailability (counts against the circuit breaker).
        unavailable: bool,
    },
    /// The deadline passed.
    Expired(Response<Body>),
}

/// Classifies one attempt. The transport error itself is looked at, not
/// the code tonic would give it: a stream refused after GOAWAY (tonic says
/// CANCELLED) or a server that exited (tonic says UNKNOWN) never reached a
/// handler's response, so they are unavailability and retryable.
pub fn classify(target: &str, result: Result<Response<Body>, AttemptError>) -> Verdict {
    let response = match result {
        Ok(response) => response,
        Err(AttemptError::Timeout) => {
            return Verdict::Expired(Status::deadline_exceeded("deadline exceeded").into_http());
        }
        Err(AttemptError::NoEndpoint) => {
            return Verdict::Retryable {
                response: Status::unavailable(format!("{target}: no endpoint is reachable"))
                    .into_http(),
                pushback: None,
                unavailable: true,
            };
        }
        Err(AttemptError::Transport(_)) => {
            return Verdict::Retryable {
                response: Status::unavailable(format!("{target}: connection failed")).into_http(),
                pushback: None,
                unavailable: true,
            };
        }
    };
    // grpc-status among the headers = a Trailers-Only answer: the call was
    // refused before any response, so it is not committed.
    match grpc_status(response.headers()) {
        Some(Code::Unavailable) => Verdict::Retryable {
            response,
            pushback: None,
            unavailable: true,
        },
        Some(Code::ResourceExhausted) => {
            let pushback = Status::from_header_map(response.headers())
                .and_then(|s| s.get_details_retry_info())
                .and_then(|info| info.retry_delay);
            match pushback {
                Some(delay) => Verdict::Retryable {
                    response,
                    pushback: Some(delay),
                    unavailable: false,
                },
                None => Verdict::Done(response),
            }
        }
        Some(Code::DeadlineExceeded) => Verdict::Expired(response),
        _ => Verdict::Done(response),
    }
}

/// gRFC A6 retry throttling for one target: a bucket of `max_tokens`;
/// every retryable failure takes one token, every success gives back
/// `token_ratio`; retries stop while the bucket is at half or below.
pub struct RetryThrottle {
    max_tokens: f64,
    token_ratio: f64,
    tokens: Mutex<f64>,
}

impl RetryThrottle {
    /// A full bucket.
    pub fn new(max_tokens: u32, token_ratio: f64) -> RetryThrottle {
        RetryThrottle {
            max_tokens: f64::from(max_tokens),
            token_ratio,
            tokens: Mutex::new(f64::from(max_tokens)),
        }
    }

    /// An attempt failed with a retryable status.
    pub fn on_failure(&self) {
        let mut tokens = self.tokens.lock().expect("throttle lock");
        *tokens = (*tokens - 1.0).max(0.0);
    }

    /// An attempt succeeded.
    pub fn on_success(&self) {
        let mut tokens = self.tokens.lock().expect("throttle lock");
        *tokens = (*tokens + self.token_ratio).min(self.max_tokens);
    }

    /// May a failed call be retried now?
    pub fn allows_retry(&self) -> bool {
        *self.tokens.lock().expect("throttle lock") > self.max_tokens / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_stops_retries_at_half_and_successes_refill_it() {
        let throttle = RetryThrottle::new(10, 0.1);
        for _ in 0..4 {
            throttle.on_failure();
        }
        assert!(throttle.allows_retry(), "6 tokens left");
        throttle.on_failure();
        assert!(!throttle.allows_retry(), "5 tokens: at half");
        // Ten successes earn one token back.
        for _ in 0..10 {
            throttle.on_success();
        }
        assert!(throttle.allows_retry());
        // Never above the maximum: 100 successes, then 5 failures stop it.
        for _ in 0..100 {
            throttle.on_success();
        }
        for _ in 0..5 {
            throttle.on_failure();
        }
        assert!(!throttle.allows_retry());
    }

    fn answer(status: Status) -> Result<Response<Body>, AttemptError> {
        Ok(status.into_http())
    }

    #[test]
    fn only_unavailability_and_pushback_are_retryable() {
        assert!(matches!(
            classify("t", answer(Status::unavailable("down"))),
            Verdict::Retryable {
                unavailable: true,
                pushback: None,
                ..
            }
        ));
        assert!(matches!(
            classify("t", Err(AttemptError::NoEndpoint)),
            Verdict::Retryable {
                unavailable: true,
                ..
            }
        ));
        let with_retry_info = Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_millis(250))),
        );
        match classify("t", answer(with_retry_info)) {
            Verdict::Retryable {
                pushback,
                unavailable,
                ..
            } => {
                assert_eq!(pushback, Some(Duration::from_millis(250)));
                assert!(!unavailable);
            }
            _ => panic!("RESOURCE_EXHAUSTED with RetryInfo is retryable"),
        }
        for status in [
            Status::resource_exhausted("no RetryInfo"),
            Status::invalid_argument("bad"),
            Status::not_found("gone"),
            Status::permission_denied("no"),
            Status::internal("oops"),
            Status::unknown("?"),
            Status::cancelled("by the server"),
        ] {
            let code = status.code();
            assert!(
                matches!(classify("t", answer(status)), Verdict::Done(_)),
                "{code:?} must not be retried"
            );
        }
        assert!(matches!(
            classify("t", Err(AttemptError::Timeout)),
            Verdict::Expired(_)
        ));
        // Headers without grpc-status: the call is committed.
        let committed = Response::new(Body::empty());
        assert!(matches!(classify("t", Ok(committed)), Verdict::Done(_)));
    }
}
