//! What one attempt of a call came to, in the terms the retry and breaker
//! layers share: the errors of the balancer below them ([`AttemptError`])
//! and the reading of an answer ([`classify`], [`Verdict`]).
//!
//! The transport error itself is looked at, not the code tonic would give
//! it: a stream refused after GOAWAY (tonic says CANCELLED) or a server
//! that exited (tonic says UNKNOWN) never reached a handler's response, so
//! they are unavailability and retryable.

use std::time::Duration;

use http::Response;
use shop_core::status::grpc_status;
use tonic::{Code, Status, body::Body};
use tonic_types::StatusExt as _;

use crate::layers::breaker::Outcome;

/// Why an attempt got no response.
#[derive(Debug)]
pub enum AttemptError {
    /// Every endpoint is down (or none was resolved).
    NoEndpoint,
    /// The connection failed before response headers arrived; the endpoint
    /// was taken out.
    Transport(crate::connection::Error),
    /// The circuit breaker refused the attempt: the target kept failing.
    CircuitOpen,
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::NoEndpoint => f.write_str("no endpoint is reachable"),
            AttemptError::Transport(e) => write!(f, "connection failed: {e}"),
            AttemptError::CircuitOpen => f.write_str("circuit open"),
        }
    }
}

impl std::error::Error for AttemptError {}

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
    /// Refused without trying (open circuit): fail fast, retry nothing.
    Refused(Response<Body>),
}

/// The kind of an attempt's result, before any response is built: the one
/// reading both layers make.
enum Kind {
    Done,
    Retryable {
        pushback: Option<Duration>,
        unavailable: bool,
    },
    Expired,
    Refused,
}

fn kind(result: &Result<Response<Body>, AttemptError>) -> Kind {
    let response = match result {
        Ok(response) => response,
        Err(AttemptError::CircuitOpen) => return Kind::Refused,
        Err(AttemptError::NoEndpoint | AttemptError::Transport(_)) => {
            return Kind::Retryable {
                pushback: None,
                unavailable: true,
            };
        }
    };
    // grpc-status among the headers = a Trailers-Only answer: the call was
    // refused before any response, so it is not committed.
    match grpc_status(response.headers()) {
        Some(Code::Unavailable) => Kind::Retryable {
            pushback: None,
            unavailable: true,
        },
        Some(Code::ResourceExhausted) => {
            let pushback = Status::from_header_map(response.headers())
                .and_then(|s| s.get_details_retry_info())
                .and_then(|info| info.retry_delay);
            match pushback {
                Some(delay) => Kind::Retryable {
                    pushback: Some(delay),
                    unavailable: false,
                },
                None => Kind::Done,
            }
        }
        Some(Code::DeadlineExceeded) => Kind::Expired,
        _ => Kind::Done,
    }
}

/// How the circuit breaker counts an attempt: only unavailability is a
/// failure; an expired deadline teaches nothing.
pub fn breaker_outcome(result: &Result<Response<Body>, AttemptError>) -> Outcome {
    match kind(result) {
        Kind::Retryable {
            unavailable: true, ..
        } => Outcome::Failure,
        Kind::Expired | Kind::Refused => Outcome::Neutral,
        Kind::Done | Kind::Retryable { .. } => Outcome::Success,
    }
}

/// Reads one attempt of a call to `target` for the retry layer, turning
/// errors into the answer the caller gets should no retry follow.
pub fn classify(target: &str, result: Result<Response<Body>, AttemptError>) -> Verdict {
    let kind = kind(&result);
    let response = match result {
        Ok(response) => response,
        Err(AttemptError::CircuitOpen) => Status::unavailable(format!(
            "{target}: circuit open after repeated failures; failing fast"
        ))
        .into_http(),
        Err(AttemptError::NoEndpoint) => {
            Status::unavailable(format!("{target}: no endpoint is reachable")).into_http()
        }
        Err(AttemptError::Transport(_)) => {
            Status::unavailable(format!("{target}: connection failed")).into_http()
        }
    };
    match kind {
        Kind::Done => Verdict::Done(response),
        Kind::Retryable {
            pushback,
            unavailable,
        } => Verdict::Retryable {
            response,
            pushback,
            unavailable,
        },
        Kind::Expired => Verdict::Expired(response),
        Kind::Refused => Verdict::Refused(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            classify("t", Err(AttemptError::CircuitOpen)),
            Verdict::Refused(_)
        ));
        // Headers without grpc-status: the call is committed.
        let committed = Response::new(Body::empty());
        assert!(matches!(classify("t", Ok(committed)), Verdict::Done(_)));
    }

    #[test]
    fn the_breaker_counts_only_unavailability_as_failure() {
        assert_eq!(
            breaker_outcome(&answer(Status::unavailable("down"))),
            Outcome::Failure
        );
        assert_eq!(
            breaker_outcome(&Err(AttemptError::NoEndpoint)),
            Outcome::Failure
        );
        assert_eq!(
            breaker_outcome(&answer(Status::not_found("gone"))),
            Outcome::Success
        );
        assert_eq!(
            breaker_outcome(&answer(Status::resource_exhausted("full"))),
            Outcome::Success
        );
        assert_eq!(
            breaker_outcome(&answer(Status::deadline_exceeded("late"))),
            Outcome::Neutral
        );
    }
}
