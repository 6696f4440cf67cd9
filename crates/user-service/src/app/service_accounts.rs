//! Service tokens for service accounts: the credential another shop
//! service presents (as `x-service-token`) to call services-only RPCs.
//!
//! An account is a `<name>.secret` file in `SERVICE_ACCOUNTS_DIR`, holding
//! the same 64 hex digits as that service's `SERVICE_SECRET_FILE`. The
//! directory is read at each request, so accounts are added, rotated or
//! removed without a restart; the per-address quota bounds how often.

use std::path::Path;

use sha2::{Digest as _, Sha256};
use shop_auth::{IssuedToken, Role, SERVICE_SUBJECT_PREFIX};

use super::{Accounts, AppError};

/// The one answer to every refused service credential.
const INVALID_SERVICE_CREDENTIALS: &str = "invalid service credentials";

/// Longest service account name.
pub const MAX_SERVICE_NAME_CHARS: usize = 64;

/// Whether `name` can be a service account: 1..=64 of `[a-z0-9-]`, so that
/// it is also a safe file name.
pub fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Accounts {
    /// Signs a service token for the account `name` if `secret` is its
    /// secret, called from the address `from`: UNAUTHENTICATED with one
    /// message for an unknown account and a wrong secret alike.
    pub async fn issue_service_token(
        &self,
        name: &str,
        secret: &str,
        from: &str,
    ) -> Result<IssuedToken, AppError> {
        self.check_address("IssueServiceToken", from)?;
        let refused = || AppError::Unauthenticated(INVALID_SERVICE_CREDENTIALS);
        let Some(dir) = &self.service_accounts_dir else {
            return Err(refused());
        };
        if !is_service_name(name) {
            return Err(refused());
        }
        let path = dir.join(format!("{name}.secret"));
        let Some(expected) = read_secret(&path).await? else {
            return Err(refused());
        };
        // Compared as digests: how long the comparison takes says nothing
        // about the secret.
        if Sha256::digest(secret.trim().as_bytes()) != Sha256::digest(expected.as_bytes()) {
            tracing::info!(service = name, "service token refused: wrong secret");
            return Err(refused());
        }
        let subject = format!("{SERVICE_SUBJECT_PREFIX}{name}");
        self.issuer
            .issue(&subject, &[Role::Service])
            .map_err(AppError::internal)
    }
}

/// The secret in `path` (64 hex digits), or None when there is no such
/// account; a file that is unreadable, open to every user or malformed is
/// an internal error (logged, never sent).
async fn read_secret(path: &Path) -> Result<Option<String>, AppError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if !path.exists() {
            return Ok(None);
        }
        let secret = shop_auth::load_or_generate_secret(&path).map_err(AppError::internal)?;
        Ok(Some(secret.iter().map(|b| format!("{b:02x}")).collect()))
    })
    .await
    .map_err(AppError::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_safe_file_names() {
        assert!(is_service_name("order-service"));
        for bad in ["", "../user-service", "Order", "a/b", &"a".repeat(65)] {
            assert!(!is_service_name(bad), "{bad:?}");
        }
    }
}
