//! The one place where user-service's failures become gRPC statuses.

use shop_core::status;
use thiserror::Error;
use tonic::Status;

use crate::{
    domain::FieldViolation,
    repo::{RepoError, UniqueField},
};

/// Why a request failed, in the service's terms.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// One or more fields are invalid.
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// The resource does not exist, is deleted, or is not the caller's.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique field is taken.
    #[error("{0}")]
    AlreadyExists(&'static str),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// Credentials or tokens were refused. One message per kind of
    /// refusal, so that the reason cannot be probed.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A rate limit refused the call (the status carries RetryInfo).
    #[error("rate limited")]
    Limited(Status),
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
            RepoError::Conflict(UniqueField::Email) => {
                ServiceError::AlreadyExists("a user with this email already exists")
            }
            RepoError::Conflict(UniqueField::Username) => {
                ServiceError::AlreadyExists("this username is taken")
            }
            RepoError::Store(err) if err.is_unavailable() => {
                ServiceError::Unavailable(RepoError::Store(err))
            }
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
            ServiceError::Unauthenticated(message) => Status::unauthenticated(message),
            ServiceError::Limited(status) => status,
            ServiceError::Unavailable(cause) => status::unavailable(cause),
            ServiceError::Internal(cause) => status::internal(format!("{cause:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::repo::StoreError;

    #[test]
    fn conflicts_become_already_exists() {
        let status: Status = ServiceError::from(RepoError::Conflict(UniqueField::Email)).into();
        assert_eq!(status.code(), Code::AlreadyExists);
    }

    #[test]
    fn database_errors_never_reach_the_caller() {
        let err = RepoError::Store(StoreError::Corrupt(
            "users row 42 has status \"weird\"".into(),
        ));
        let status: Status = ServiceError::from(err).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("weird"));

        let status: Status = ServiceError::from(RepoError::Store(StoreError::Unavailable(
            sqlx::Error::PoolTimedOut,
        )))
        .into();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("pool"));
    }
}
