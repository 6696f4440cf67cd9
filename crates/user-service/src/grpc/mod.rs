//! The tonic side of user-service: decode the request, authorize, call the
//! domain and the store, map errors. One module per proto service, plus the
//! proto <-> domain conversions.

mod auth;
mod convert;
mod users;

use std::{sync::Arc, time::Duration};

use shop_auth::{PasswordHasher, TokenIssuer, TokenVerifier};
use shop_core::pagination::PageTokenCodec;
use shop_server::{layers::protect::KeyedLimit, streams::Streams};

pub use auth::AuthGrpc;
pub use users::UserGrpc;

use crate::{activity::ActivityFeed, repo::Store};

/// What the handlers of both services share.
pub struct Accounts {
    /// Users and refresh tokens.
    pub store: Arc<dyn Store>,
    /// bcrypt at the configured cost.
    pub hasher: PasswordHasher,
    /// Signs access tokens.
    pub issuer: TokenIssuer,
    /// The keys published by GetPublicKeys.
    pub verifier: Arc<TokenVerifier>,
    /// Signs and checks ListUsers page tokens.
    pub page_tokens: PageTokenCodec,
    /// Lifetime of refresh tokens.
    pub refresh_token_ttl: Duration,
    /// Account activity, for UserActivity streams.
    pub activity: ActivityFeed,
    /// Limits, backpressure and drain for every stream.
    pub streams: Streams,
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
