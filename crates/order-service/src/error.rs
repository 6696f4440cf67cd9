//! The one place where order-service's failures become gRPC statuses.

use shop_core::status;
use thiserror::Error;
use tonic::{Code, Status};

use crate::{domain::FieldViolation, repo::RepoError};

/// Why a request failed, in the service's terms.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// One or more fields are invalid.
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// The order does not exist or is not the caller's.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request id was used before for a different order.
    #[error("{0}")]
    AlreadyExists(&'static str),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// The system is not in a state that allows it (a refused state
    /// transition, an inactive user).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A call to another service failed; its code is kept where it means
    /// the same thing here (deadline, unavailability, cancellation).
    #[error("upstream {0:?}")]
    Upstream(Status),
    /// The database cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(#[source] RepoError),
    /// Anything unexpected.
    #[error("internal: {0}")]
    Internal(#[source] anyhow::Error),
}

impl ServiceError {
    /// Shorthand for a single invalid field.
    pub fn invalid(field: &str, description: &str) -> ServiceError {
        ServiceError::InvalidArgument(vec![FieldViolation {
            field: field.to_owned(),
            description: description.to_owned(),
        }])
    }
}

impl From<Vec<FieldViolation>> for ServiceError {
    fn from(violations: Vec<FieldViolation>) -> ServiceError {
        ServiceError::InvalidArgument(violations)
    }
}

impl From<RepoError> for ServiceError {
    fn from(err: RepoError) -> ServiceError {
        match err {
            err @ RepoError::Unavailable(_) => ServiceError::Unavailable(err),
            other => ServiceError::Internal(other.into()),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Status {
        match err {
            ServiceError::InvalidArgument(violations) => status::invalid_argument(violations),
            ServiceError::NotFound(what) => Status::not_found(format!("{what} not found")),
            ServiceError::AlreadyExists(message) => Status::already_exists(message),
            ServiceError::PermissionDenied(message) => Status::permission_denied(message),
            ServiceError::FailedPrecondition(message) => Status::failed_precondition(message),
            ServiceError::Upstream(upstream) => upstream_status(upstream),
            ServiceError::Unavailable(cause) => status::unavailable(cause),
            ServiceError::Internal(cause) => status::internal(format!("{cause:#}")),
        }
    }
}

/// What the caller sees when a call to user-service failed: the codes that
/// mean the same here pass through with a message of ours; everything else
/// is an internal error, logged with the upstream message.
fn upstream_status(upstream: Status) -> Status {
    match upstream.code() {
        Code::DeadlineExceeded => Status::deadline_exceeded("deadline exceeded"),
        Code::Cancelled => Status::cancelled("cancelled"),
        Code::Unavailable | Code::ResourceExhausted => {
            tracing::warn!(code = ?upstream.code(), message = upstream.message(), "user-service unavailable");
            Status::unavailable("user-service is unavailable, retry later")
        }
        Code::Unauthenticated => Status::unauthenticated("access token refused by user-service"),
        Code::PermissionDenied => Status::permission_denied("not allowed"),
        _ => status::internal(format!(
            "user-service answered {:?}: {}",
            upstream.code(),
            upstream.message()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_deadlines_stay_deadlines_and_details_stay_home() {
        let s: Status = ServiceError::Upstream(Status::deadline_exceeded("x")).into();
        assert_eq!(s.code(), Code::DeadlineExceeded);
        let s: Status =
            ServiceError::Upstream(Status::unavailable("tcp connect error 10.0.0.7:50051")).into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("10.0.0.7"));
        let s: Status = ServiceError::Upstream(Status::data_loss("disk on fire")).into();
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("disk"));
    }
}
