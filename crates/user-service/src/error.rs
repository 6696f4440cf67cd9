//! What user-service's storage failures mean to its callers. Every other
//! failure maps to a gRPC status the same way in every service
//! (`shop_core::error::AppError`).

use shop_core::error::AppError;

use crate::repo::{RepoError, UniqueField};

impl From<RepoError> for AppError {
    fn from(err: RepoError) -> AppError {
        match err {
            RepoError::Conflict(UniqueField::Email) => {
                AppError::AlreadyExists("a user with this email already exists")
            }
            RepoError::Conflict(UniqueField::Username) => {
                AppError::AlreadyExists("this username is taken")
            }
            RepoError::Store(err) => err.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};

    use super::*;
    use crate::repo::StoreError;

    #[test]
    fn conflicts_become_already_exists() {
        let status: Status = AppError::from(RepoError::Conflict(UniqueField::Email)).into();
        assert_eq!(status.code(), Code::AlreadyExists);
    }

    #[test]
    fn database_errors_never_reach_the_caller() {
        let err = RepoError::Store(StoreError::Corrupt(
            "users row 42 has status \"weird\"".into(),
        ));
        let status: Status = AppError::from(err).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("weird"));

        let err = RepoError::Store(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        let status: Status = AppError::from(err).into();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("pool"));
    }
}
