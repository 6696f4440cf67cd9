//! order-service's client of user-service: the check that the user an
//! order is for exists and is active ([`crate::app::ActiveUsers`]), and
//! whether the account behind an open stream still stands
//! ([`StreamAuthority`]), both through GetUser.
//!
//! An "active" answer is cached for `USER_STATUS_CACHE_MAX_AGE` (a
//! [`ReadThrough`] with no invalidation: user-service's changes do not
//! reach here), so a customer's orders in a burst cost one GetUser; that
//! age is how long a suspension may take to stop new orders. Refusals and
//! failures are never cached, and streams always ask.
//!
//! The channel comes from [`shop_client::connect`]: each call carries the
//! caller's remaining deadline, token, request id and trace headers
//! (user-service authorizes on behalf of the end user, and a spent budget
//! fails here without a network round trip), is balanced over the
//! user-service endpoints, retried when they are unavailable (GetUser has
//! no side effects) and failed fast while they are all down.

use std::sync::Arc;

use async_trait::async_trait;
use shop_auth::{BoxFuture, Principal, Role};
use shop_client::ClientChannel;
use shop_core::error::{AppError, DependencyFailure};
use shop_proto::user::v1::{
    self as pb, GetUserRequest, UserStatus, get_user_request::Identifier,
    user_service_client::UserServiceClient,
};
use shop_server::layers::stream_limits::{Standing, StreamAuthority};
use shop_storage::ReadThrough;
use tonic::Code;
use uuid::Uuid;

use crate::app::ActiveUsers;

/// user-service as order-service's callers know it.
const SERVICE: &str = "user-service";

/// The UserService client every handler shares.
#[derive(Debug, Clone)]
pub struct UserClient {
    client: UserServiceClient<ClientChannel>,
    /// Users found active, by id.
    active: Arc<ReadThrough<Uuid, ()>>,
}

impl UserClient {
    /// A UserService client over `channel`, trusting an "active" answer as
    /// long as `active` keeps it.
    pub fn new(channel: ClientChannel, active: Arc<ReadThrough<Uuid, ()>>) -> UserClient {
        UserClient {
            client: UserServiceClient::new(channel),
            active,
        }
    }

    async fn ask_active(&self, user_id: Uuid) -> Result<Option<()>, AppError> {
        let request = GetUserRequest {
            identifier: Some(Identifier::UserId(user_id.to_string())),
        };
        match self.client.clone().get_user(request).await {
            Ok(user) if user.get_ref().status == UserStatus::Active as i32 => Ok(Some(())),
            Ok(_) => Err(AppError::FailedPrecondition(
                "the user is not active".into(),
            )),
            Err(status) if status.code() == Code::NotFound => Err(AppError::FailedPrecondition(
                "the user does not exist".into(),
            )),
            Err(status) => Err(AppError::Dependency {
                service: SERVICE,
                failure: DependencyFailure::of(&status),
            }),
        }
    }
}

#[async_trait]
impl ActiveUsers for UserClient {
    async fn ensure_active(&self, user_id: Uuid) -> Result<(), AppError> {
        self.active
            .get_or_load(&user_id, || self.ask_active(user_id))
            .await
            .map(drop)
    }
}

/// Asks user-service, with a token of the stream's account (the check
/// runs in one of its streams' request context), how the account stands:
/// active with its roles, or gone when user-service no longer shows it to
/// the token's holder (deleted, suspended, or the token refused); unknown
/// while user-service cannot be reached.
impl StreamAuthority for UserClient {
    fn standing<'a>(&'a self, principal: &'a Principal) -> BoxFuture<'a, Standing> {
        Box::pin(async move {
            let request = GetUserRequest {
                identifier: Some(Identifier::UserId(principal.user_id.clone())),
            };
            match self.client.clone().get_user(request).await {
                Ok(user) if user.get_ref().status == UserStatus::Active as i32 => {
                    let roles = user
                        .get_ref()
                        .roles
                        .iter()
                        .filter_map(|r| match pb::Role::try_from(*r) {
                            Ok(pb::Role::Customer) => Some(Role::Customer),
                            Ok(pb::Role::Admin) => Some(Role::Admin),
                            _ => None,
                        })
                        .collect();
                    Standing::Active(roles)
                }
                Ok(_) => Standing::Gone,
                Err(status)
                    if matches!(
                        status.code(),
                        Code::NotFound | Code::Unauthenticated | Code::PermissionDenied
                    ) =>
                {
                    Standing::Gone
                }
                Err(_) => Standing::Unknown,
            }
        })
    }
}
