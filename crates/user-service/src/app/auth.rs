//! Login, refresh-token rotation and logout.

use chrono::{SubsecRound as _, Utc};
use shop_auth::IssuedToken;
use uuid::Uuid;

use super::{Accounts, AppError, hashing_refused};
use crate::{
    activity::ActivityKind,
    domain::{RefreshToken, User, UserStatus, hash_refresh_token},
    repo::{NewRefreshToken, Rotation, UserKey},
};

/// The one answer to every failed login, whatever the cause.
const INVALID_CREDENTIALS: &str = "invalid credentials";
/// The one answer to every refused refresh token.
pub const INVALID_REFRESH_TOKEN: &str = "invalid or expired refresh token";

/// What a login or a refresh hands out.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The signed access token.
    pub access: IssuedToken,
    /// The opaque refresh token (only its hash is stored).
    pub refresh_token: String,
}

impl Accounts {
    /// Logs in with `identifier` (a lower-cased email or username) and
    /// `password`, called from the address `from`: UNAUTHENTICATED with one
    /// message for an unknown user, a wrong password or a disabled account
    /// alike, in the same time; RESOURCE_EXHAUSTED past the quotas.
    ///
    /// The quotas, cheapest first: Login calls per address; attempts per
    /// account and address, so that a stranger guessing from one address
    /// slows only their own guesses and cannot lock the owner out; and a
    /// higher ceiling per account from every address together. An account
    /// is one bucket whether named by email or username; an unknown
    /// identifier is its own.
    pub async fn login(
        &self,
        identifier: &str,
        password: &str,
        from: &str,
    ) -> Result<Tokens, AppError> {
        self.check_address("Login", from)?;
        let credentials = self.store.find_credentials(identifier).await?;
        let account = match &credentials {
            Some(c) => format!("user:{}", c.user.id),
            None => format!("identifier:{identifier}"),
        };
        self.login_limit.check(format!("{account}|{from}"))?;
        self.account_login_limit.check(account)?;

        // Always run bcrypt, against a dummy hash for unknown users, so that
        // the answer takes as long whether or not the account exists.
        let password_ok = self
            .hasher
            .verify(
                password,
                credentials.as_ref().map(|c| c.password_hash.as_str()),
                Self::deadline(),
            )
            .await
            .map_err(hashing_refused)?;
        let user = match credentials {
            Some(c) if password_ok && c.user.status == UserStatus::Active => c.user,
            _ => return Err(AppError::Unauthenticated(INVALID_CREDENTIALS)),
        };

        let refresh = RefreshToken::generate();
        let now = Utc::now().trunc_subsecs(6);
        self.store
            .insert_refresh_token(&NewRefreshToken {
                token_hash: refresh.hash.clone(),
                family_id: Uuid::now_v7(),
                user_id: user.id,
                created_at: now,
                expires_at: now + self.refresh_ttl(),
            })
            .await?;
        tracing::info!(user_id = %user.id, "login");
        self.activity.publish(ActivityKind::LoggedIn, &user);
        self.tokens(&user, refresh.token)
    }

    /// Rotates the refresh token `presented` (called from the address
    /// `from`, whose RefreshToken calls are counted): a new pair for a live
    /// token of an active user; a second use of a rotated token revokes
    /// its whole login.
    pub async fn refresh(&self, presented: &str, from: &str) -> Result<Tokens, AppError> {
        self.check_address("RefreshToken", from)?;
        let presented = hash_refresh_token(presented);
        let next = RefreshToken::generate();
        let now = Utc::now().trunc_subsecs(6);
        match self
            .store
            .rotate_refresh_token(&presented, &next.hash, now + self.refresh_ttl(), now)
            .await?
        {
            Rotation::Rotated { user_id, family_id } => {
                let user = self
                    .store
                    .find_user(UserKey::Id(user_id))
                    .await?
                    .filter(|u| u.status == UserStatus::Active);
                let Some(user) = user else {
                    self.store.revoke_refresh_family(&next.hash, now).await?;
                    return Err(AppError::Unauthenticated(INVALID_REFRESH_TOKEN));
                };
                tracing::debug!(user_id = %user.id, %family_id, "refresh token rotated");
                self.tokens(&user, next.token)
            }
            Rotation::Reused { family_id } => {
                tracing::warn!(
                    %family_id,
                    "a rotated refresh token was presented again; its whole family is revoked"
                );
                Err(AppError::Unauthenticated(INVALID_REFRESH_TOKEN))
            }
            Rotation::Revoked | Rotation::Expired | Rotation::Unknown => {
                Err(AppError::Unauthenticated(INVALID_REFRESH_TOKEN))
            }
        }
    }

    /// Revokes the login the refresh token `presented` belongs to.
    pub async fn logout(&self, presented: &str) -> Result<(), AppError> {
        let now = Utc::now().trunc_subsecs(6);
        self.store
            .revoke_refresh_family(&hash_refresh_token(presented), now)
            .await?;
        Ok(())
    }

    fn tokens(&self, user: &User, refresh_token: String) -> Result<Tokens, AppError> {
        let access = self
            .issuer
            .issue(&user.id.to_string(), &user.roles)
            .map_err(AppError::internal)?;
        Ok(Tokens {
            access,
            refresh_token,
        })
    }

    fn refresh_ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.refresh_token_ttl).unwrap_or(chrono::Duration::days(7))
    }
}
