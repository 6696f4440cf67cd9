//! The use cases of user-service: sign-up, reading and changing accounts,
//! login, refresh-token rotation, logout. They take domain values, apply
//! the rules, talk to storage, and return domain errors ([`AppError`]);
//! no gRPC type crosses into here. The gRPC handlers decode requests into
//! the values these take and encode what they return.

mod auth;
mod service_accounts;
mod users;

use std::{sync::Arc, time::Duration};

use shop_auth::{BoxFuture, HashError, PasswordHasher, Principal, TokenIssuer, TokenVerifier};
use shop_server::layers::{
    protect::KeyedLimit,
    stream_limits::{Standing, StreamAuthority},
};
use uuid::Uuid;

pub use auth::{INVALID_REFRESH_TOKEN, Tokens};
pub use service_accounts::{MAX_SERVICE_NAME_CHARS, is_service_name};
pub use shop_core::error::AppError;
pub use users::SignUp;

use crate::{
    activity::ActivityFeed,
    domain::UserStatus,
    repo::{Store, UserKey},
};

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
    /// Login attempts per account (or unknown identifier) and address.
    pub login_limit: KeyedLimit,
    /// Login attempts per account from every address together.
    pub account_login_limit: KeyedLimit,
    /// Login, CreateUser, RefreshToken and IssueServiceToken calls per
    /// address, each method its own bucket.
    pub address_limit: KeyedLimit,
    /// Where the service accounts' secrets are (`SERVICE_ACCOUNTS_DIR`).
    pub service_accounts_dir: Option<std::path::PathBuf>,
}

impl Accounts {
    /// Counts a call of `method` from the address `from` (see
    /// `shop_server::peer::caller_address`) against its quota.
    pub fn check_address(&self, method: &str, from: &str) -> Result<(), AppError> {
        self.address_limit.check(format!("{method}|{from}"))
    }

    /// When the current request must be answered by, for the hasher.
    fn deadline() -> Option<std::time::Instant> {
        shop_core::context::RequestContext::current().map(|c| c.deadline.into_std())
    }
}

/// What a refused password hash means to the caller.
fn hashing_refused(error: HashError) -> AppError {
    match error {
        HashError::Busy { retry_after } => AppError::RateLimited {
            what: "password checks in progress on this server",
            retry_after,
        },
        HashError::NoTime => AppError::DeadlineExceeded("too little time left to check a password"),
        other => AppError::internal(other),
    }
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

/// How the account behind an open stream stands, from the database.
#[derive(Clone)]
pub struct AccountStanding(pub Arc<dyn Store>);

impl StreamAuthority for AccountStanding {
    fn standing<'a>(&'a self, principal: &'a Principal) -> BoxFuture<'a, Standing> {
        Box::pin(async move {
            let Ok(id) = principal.user_id.parse::<Uuid>() else {
                return Standing::Gone;
            };
            match self.0.find_user(UserKey::Id(id)).await {
                Ok(Some(user)) if user.status == UserStatus::Active => Standing::Active(user.roles),
                Ok(_) => Standing::Gone,
                Err(_) => Standing::Unknown,
            }
        })
    }
}
