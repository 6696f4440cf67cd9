//! The use cases of user-service: sign-up, reading and changing accounts,
//! login, refresh-token rotation, logout. They take domain values, apply
//! the rules, talk to storage, and return domain errors ([`AppError`]);
//! no gRPC type crosses into here. The gRPC handlers decode requests into
//! the values these take and encode what they return.

mod auth;
mod users;

use std::{sync::Arc, time::Duration};

use shop_auth::{PasswordHasher, TokenIssuer, TokenVerifier};
use shop_server::layers::protect::KeyedLimit;

pub use auth::{INVALID_REFRESH_TOKEN, Tokens};
pub use shop_core::error::AppError;
pub use users::SignUp;

use crate::{activity::ActivityFeed, repo::Store};

/// The account use cases and what they share.
pub struct Accounts {
    /// Users and refresh tokens.
    pub store: Arc<dyn Store>,
    /// bcrypt at the configured cost.
    pub hasher: PasswordHasher,
    /// Signs access tokens.
    pub issuer: TokenIssuer,
    /// The keys tokens are verified with, published by GetPublicKeys.
    pub verifier: Arc<TokenVerifier>,
    /// Lifetime of refresh tokens.
    pub refresh_token_ttl: Duration,
    /// Account activity, for UserActivity streams.
    pub activity: ActivityFeed,
    /// Login attempts per identifier.
    pub login_limit: KeyedLimit,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}
