//! `shop.auth.v1.AuthService`: login, refresh-token rotation, logout and the
//! public keys that other services verify tokens with.

use std::sync::Arc;

use chrono::{SubsecRound as _, Utc};
use shop_auth::password::MAX_PASSWORD_BYTES;
use shop_proto::auth::v1::{self as pb, auth_service_server::AuthService};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::Accounts;
use crate::{
    domain::{Email, RefreshToken, User, UserStatus, Violations, hash_refresh_token},
    error::ServiceError,
    repo::{NewRefreshToken, Rotation, UserKey},
};

/// The one answer to every failed login, whatever the cause.
const INVALID_CREDENTIALS: &str = "invalid credentials";
/// The one answer to every refused refresh token.
const INVALID_REFRESH_TOKEN: &str = "invalid or expired refresh token";
/// Longest refresh token accepted before hashing; ours are 43 characters.
const MAX_REFRESH_TOKEN_CHARS: usize = 256;

/// The AuthService implementation.
#[derive(Debug, Clone)]
pub struct AuthGrpc {
    accounts: Arc<Accounts>,
}

impl AuthGrpc {
    /// A service over the shared account state.
    pub fn new(accounts: Arc<Accounts>) -> AuthGrpc {
        AuthGrpc { accounts }
    }

    async fn login(&self, req: pb::LoginRequest) -> Result<pb::TokenPair, ServiceError> {
        let mut v = Violations::new();
        let identifier = req.identifier.trim().to_ascii_lowercase();
        if identifier.is_empty() {
            v.add("identifier", "is required");
        } else if identifier.len() > Email::MAX_LEN {
            v.add(
                "identifier",
                format!("must be at most {} characters", Email::MAX_LEN),
            );
        }
        if req.password.is_empty() {
            v.add("password", "is required");
        } else if req.password.len() > MAX_PASSWORD_BYTES {
            v.add(
                "password",
                format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
            );
        }
        v.into_result()?;
        // Per identifier, so that guessing one account's password is slow
        // whichever addresses the guesses come from.
        self.accounts
            .login_limit
            .check(&identifier)
            .map_err(ServiceError::Limited)?;

        let credentials = self.accounts.store.find_credentials(&identifier).await?;
        // Always run bcrypt, against a dummy hash for unknown users, so that
        // the answer takes as long whether or not the account exists.
        let password_ok = self
            .accounts
            .hasher
            .verify(
                &req.password,
                credentials.as_ref().map(|c| c.password_hash.as_str()),
            )
            .await;
        let user = match credentials {
            Some(c) if password_ok && c.user.status == UserStatus::Active => c.user,
            _ => return Err(ServiceError::Unauthenticated(INVALID_CREDENTIALS)),
        };

        let refresh = RefreshToken::generate();
        let now = Utc::now().trunc_subsecs(6);
        self.accounts
            .store
            .insert_refresh_token(&NewRefreshToken {
                token_hash: refresh.hash.clone(),
                family_id: Uuid::now_v7(),
                user_id: user.id,
                created_at: now,
                expires_at: now + self.refresh_ttl(),
            })
            .await?;
        tracing::info!(user_id = %user.id, "login");
        self.accounts
            .activity
            .publish(crate::activity::ActivityKind::LoggedIn, &user);
        self.token_pair(&user, refresh.token)
    }

    async fn refresh(&self, req: pb::RefreshTokenRequest) -> Result<pb::TokenPair, ServiceError> {
        check_refresh_token_field(&req.refresh_token)?;
        let presented = hash_refresh_token(&req.refresh_token);
        let next = RefreshToken::generate();
        let now = Utc::now().trunc_subsecs(6);
        let store = &self.accounts.store;
        match store
            .rotate_refresh_token(&presented, &next.hash, now + self.refresh_ttl(), now)
            .await?
        {
            Rotation::Rotated { user_id, family_id } => {
                let user = store
                    .find_user(UserKey::Id(user_id))
                    .await?
                    .filter(|u| u.status == UserStatus::Active);
                let Some(user) = user else {
                    store.revoke_refresh_family(&next.hash, now).await?;
                    return Err(ServiceError::Unauthenticated(INVALID_REFRESH_TOKEN));
                };
                tracing::debug!(user_id = %user.id, %family_id, "refresh token rotated");
                self.token_pair(&user, next.token)
            }
            Rotation::Reused { family_id } => {
                tracing::warn!(
                    %family_id,
                    "a rotated refresh token was presented again; its whole family is revoked"
                );
                Err(ServiceError::Unauthenticated(INVALID_REFRESH_TOKEN))
            }
            Rotation::Revoked | Rotation::Expired | Rotation::Unknown => {
                Err(ServiceError::Unauthenticated(INVALID_REFRESH_TOKEN))
            }
        }
    }

    async fn logout(&self, req: pb::LogoutRequest) -> Result<(), ServiceError> {
        check_refresh_token_field(&req.refresh_token)?;
        let now = Utc::now().trunc_subsecs(6);
        self.accounts
            .store
            .revoke_refresh_family(&hash_refresh_token(&req.refresh_token), now)
            .await?;
        Ok(())
    }

    fn token_pair(
        &self,
        user: &User,
        refresh_token: String,
    ) -> Result<pb::TokenPair, ServiceError> {
        let access = self
            .accounts
            .issuer
            .issue(&user.id.to_string(), &user.roles)
            .map_err(|e| ServiceError::Internal(e.into()))?;
        Ok(pb::TokenPair {
            access_token: access.token,
            refresh_token,
            token_type: "Bearer".into(),
            expires_in: access.expires_in.as_secs() as i64,
            refresh_expires_in: self.accounts.refresh_token_ttl.as_secs() as i64,
        })
    }

    fn refresh_ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.accounts.refresh_token_ttl)
            .unwrap_or(chrono::Duration::days(7))
    }
}

fn check_refresh_token_field(token: &str) -> Result<(), ServiceError> {
    if token.is_empty() {
        return Err(ServiceError::invalid("refresh_token", "is required"));
    }
    if token.len() > MAX_REFRESH_TOKEN_CHARS {
        return Err(ServiceError::Unauthenticated(INVALID_REFRESH_TOKEN));
    }
    Ok(())
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        Ok(Response::new(
            AuthGrpc::login(self, request.into_inner()).await?,
        ))
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        Ok(Response::new(self.refresh(request.into_inner()).await?))
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Result<Response<()>, Status> {
        AuthGrpc::logout(self, request.into_inner()).await?;
        Ok(Response::new(()))
    }

    async fn get_public_keys(
        &self,
        _request: Request<()>,
    ) -> Result<Response<pb::PublicKeys>, Status> {
        let keys = self
            .accounts
            .verifier
            .keys()
            .iter()
            .map(|k| pb::PublicKey {
                kid: k.kid().to_owned(),
                algorithm: k.algorithm().to_owned(),
                public_key_pem: k.public_key_pem().to_owned(),
            })
            .collect();
        Ok(Response::new(pb::PublicKeys { keys }))
    }
}
