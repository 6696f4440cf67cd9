//! Why a use case failed, in the terms every service shares ([`AppError`]),
//! and the one mapping of those to gRPC statuses.
//!
//! A service's use cases return `AppError` (the service adds how its own
//! storage and dependencies fail, through `From` impls); its gRPC handlers
//! turn it into a `tonic::Status` with `?`. Nothing below the handlers
//! builds a status. Unexpected causes are logged with the request's span
//! and answered with a generic message: no database or library text
//! reaches a caller.

use std::time::Duration;

use thiserror::Error;
use tonic::{Code, Status};

use crate::{status, validation::FieldViolation};

/// A failure's cause, kept for the log.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a use case failed.
#[derive(Debug, Error)]
pub enum AppError {
    /// One or more fields are invalid (INVALID_ARGUMENT with
    /// `google.rpc.BadRequest`).
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// It does not exist, or is not the caller's to see (NOT_FOUND, so
    /// that ids cannot be probed).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique key is taken (ALREADY_EXISTS).
    #[error("{0}")]
    AlreadyExists(&'static str),
    /// The caller is who they say but may not do this (PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// Credentials or tokens were refused (UNAUTHENTICATED); one message
    /// per kind of refusal, so that the reason cannot be probed.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The system is not in a state that allows it: a refused state
    /// transition, an inactive user (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Like [`AppError::FailedPrecondition`], naming each unmet condition
    /// (FAILED_PRECONDITION with `google.rpc.PreconditionFailure`): the
    /// short stock of each sku, for instance.
    #[error("{message}")]
    PreconditionsFailed {
        /// The summary.
        message: String,
        /// Each unmet condition: (type, subject, description), as in
        /// `google.rpc.PreconditionFailure.Violation`.
        violations: Vec<(String, String, String)>,
    },
    /// A concurrent change got in the way and the attempts ran out
    /// (ABORTED: the caller may try again).
    #[error("{0}")]
    Aborted(&'static str),
    /// A limit refused the call (RESOURCE_EXHAUSTED with `RetryInfo`).
    #[error("too many {what}")]
    RateLimited {
        /// What was counted ("login attempts for this account").
        what: &'static str,
        /// When to try again.
        retry_after: Duration,
    },
    /// The caller's deadline would pass before the work could finish, so
    /// it was not started (DEADLINE_EXCEEDED).
    #[error("{0}")]
    DeadlineExceeded(&'static str),
    /// A call to another service failed.
    #[error("{service}: {failure}")]
    Dependency {
        /// The service called.
        service: &'static str,
        /// How it failed.
        failure: DependencyFailure,
    },
    /// The database (or another dependency) cannot be reached
    /// (UNAVAILABLE: retry later).
    #[error("unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// Anything unexpected (INTERNAL).
    #[error("internal: {0}")]
    Internal(#[source] Cause),
}

/// How a call to another service failed, as far as this service's caller
/// needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DependencyFailure {
    /// The caller's deadline ran out on the way.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The call was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The service could not be reached or was overloaded.
    #[error("unavailable ({0})")]
    Unavailable(String),
    /// It refused the caller's token.
    #[error("token refused")]
    Unauthenticated,
    /// It refused the caller.
    #[error("permission denied")]
    PermissionDenied,
    /// Anything else, with the code and message it answered.
    #[error("answered {0}")]
    Failed(String),
}

impl DependencyFailure {
    /// How a call that answered `status` failed. A code that means the
    /// same here keeps its meaning; everything else is a failure.
    pub fn of(status: &Status) -> DependencyFailure {
        match status.code() {
            Code::DeadlineExceeded => DependencyFailure::DeadlineExceeded,
            Code::Cancelled => DependencyFailure::Cancelled,
            Code::Unavailable | Code::ResourceExhausted => {
                DependencyFailure::Unavailable(format!("{:?}: {}", status.code(), status.message()))
            }
            Code::Unauthenticated => DependencyFailure::Unauthenticated,
            Code::PermissionDenied => DependencyFailure::PermissionDenied,
            code => DependencyFailure::Failed(format!("{code:?}: {}", status.message())),
        }
    }
}

impl AppError {
    /// A single invalid field.
    pub fn invalid(field: &str, description: &str) -> AppError {
        AppError::InvalidArgument(vec![FieldViolation {
            field: field.to_owned(),
            description: description.to_owned(),
        }])
    }

    /// Something unexpected, for the log.
    pub fn internal(cause: impl Into<Cause>) -> AppError {
        AppError::Internal(cause.into())
    }
}

impl From<Vec<FieldViolation>> for AppError {
    fn from(violations: Vec<FieldViolation>) -> AppError {
        AppError::InvalidArgument(violations)
    }
}

impl From<AppError> for Status {
    fn from(err: AppError) -> Status {
        match err {
            AppError::InvalidArgument(violations) => status::invalid_argument(violations),
            AppError::NotFound(what) => Status::not_found(format!("{what} not found")),
            AppError::AlreadyExists(message) => Status::already_exists(message),
            AppError::PermissionDenied(message) => Status::permission_denied(message),
            AppError::Unauthenticated(message) => Status::unauthenticated(message),
            AppError::FailedPrecondition(message) => Status::failed_precondition(message),
            AppError::PreconditionsFailed {
                message,
                violations,
            } => status::failed_preconditions(&message, violations),
            AppError::Aborted(message) => Status::aborted(message),
            AppError::RateLimited { what, retry_after } => {
                status::resource_exhausted(&format!("too many {what}"), retry_after)
            }
            AppError::DeadlineExceeded(message) => Status::deadline_exceeded(message),
            AppError::Dependency { service, failure } => dependency_status(service, failure),
            AppError::Unavailable(cause) => status::unavailable(cause),
            AppError::Internal(cause) => status::internal(cause),
        }
    }
}

/// What the caller sees when a call to `service` failed: the codes that
/// mean the same here pass through with a message of ours; everything
/// else is an internal error, logged with what the service answered.
fn dependency_status(service: &str, failure: DependencyFailure) -> Status {
    match failure {
        DependencyFailure::DeadlineExceeded => Status::deadline_exceeded("deadline exceeded"),
        DependencyFailure::Cancelled => Status::cancelled("cancelled"),
        DependencyFailure::Unavailable(why) => {
            tracing::warn!(service, why, "dependency unavailable");
            Status::unavailable(format!("{service} is unavailable, retry later"))
        }
        DependencyFailure::Unauthenticated => {
            Status::unauthenticated(format!("access token refused by {service}"))
        }
        DependencyFailure::PermissionDenied => Status::permission_denied("not allowed"),
        DependencyFailure::Failed(answer) => status::internal(format!("{service} {answer}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(service: &'static str, status: Status) -> Status {
        AppError::Dependency {
            service,
            failure: DependencyFailure::of(&status),
        }
        .into()
    }

    #[test]
    fn dependency_deadlines_stay_deadlines_and_details_stay_home() {
        let s = through("users", Status::deadline_exceeded("x"));
        assert_eq!(s.code(), Code::DeadlineExceeded);
        let s = through(
            "users",
            Status::unavailable("tcp connect error 10.0.0.7:50051"),
        );
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("10.0.0.7"));
        let s = through("users", Status::data_loss("disk on fire"));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("disk"));
    }

    #[test]
    fn internal_and_unavailable_causes_never_reach_the_caller() {
        let s: Status = AppError::internal("row 42 has status \"weird\"").into();
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("weird"));
        let s: Status = AppError::Unavailable("pool timed out".into()).into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("pool"));
    }

    #[test]
    fn a_rate_limit_says_when_to_come_back() {
        use tonic_types::StatusExt as _;
        let s: Status = AppError::RateLimited {
            what: "login attempts",
            retry_after: Duration::from_secs(6),
        }
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(6))
        );
    }
}
