//! order-service's client of user-service: the check that the user an
//! order is for exists and is active ([`crate::app::ActiveUsers`]).
//!
//! The channel comes from [`shop_client::connect`]: each call carries the
//! caller's remaining deadline, token, request id and trace headers
//! (user-service authorizes on behalf of the end user, and a spent budget
//! fails here without a network round trip), is balanced over the
//! user-service endpoints, retried when they are unavailable (GetUser has
//! no side effects) and failed fast while they are all down.

use async_trait::async_trait;
use shop_client::ClientChannel;
use shop_core::error::{AppError, DependencyFailure};
use shop_proto::user::v1::{
    GetUserRequest, UserStatus, get_user_request::Identifier,
    user_service_client::UserServiceClient,
};
use tonic::Code;
use uuid::Uuid;

use crate::app::ActiveUsers;

/// user-service as order-service's callers know it.
const SERVICE: &str = "user-service";

/// The UserService client every handler shares.
#[derive(Debug, Clone)]
pub struct UserClient(UserServiceClient<ClientChannel>);

impl UserClient {
    /// A UserService client over `channel`.
    pub fn new(channel: ClientChannel) -> UserClient {
        UserClient(UserServiceClient::new(channel))
    }
}

#[async_trait]
impl ActiveUsers for UserClient {
    async fn ensure_active(&self, user_id: Uuid) -> Result<(), AppError> {
        let request = GetUserRequest {
            identifier: Some(Identifier::UserId(user_id.to_string())),
        };
        match self.0.clone().get_user(request).await {
            Ok(user) if user.get_ref().status == UserStatus::Active as i32 => Ok(()),
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
