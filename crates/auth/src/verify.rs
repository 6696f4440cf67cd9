//! The one question a server asks about a bearer token: who is it? Keys
//! held locally ([`TokenVerifier`]) and keys fetched from the token issuer
//! (the client kit's key fetching) answer it the same way.

use std::{future::Future, pin::Pin};

use crate::{Principal, TokenError, TokenVerifier};

/// A boxed future, as [`VerifyToken`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a token could not be turned into a [`Principal`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The token is refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The verification keys are not available (not fetched yet, or the
    /// token issuer cannot be reached): the caller may retry.
    #[error("verification keys unavailable")]
    KeysUnavailable,
}

/// Turns a bearer token into a [`Principal`].
pub trait VerifyToken: Send + Sync + 'static {
    /// Verifies `token` and returns who it belongs to.
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, VerifyError>>;

    /// A number that changes whenever the keys change (a key added or
    /// retired), so that whoever keeps verified tokens drops them then: a
    /// token of a retired key must not live on in a cache. Fixed keys never
    /// change.
    fn generation(&self) -> u64 {
        0
    }
}

impl VerifyToken for TokenVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, VerifyError>> {
        let result = TokenVerifier::verify(self, token)
            .map(|claims| claims.into_principal())
            .map_err(VerifyError::from);
        Box::pin(std::future::ready(result))
    }
}
