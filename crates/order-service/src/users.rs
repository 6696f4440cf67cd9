//! order-service's client of user-service: the check that the user an
//! order is for exists and is active.
//!
//! The channel comes from [`shop_middleware::client::connect`]: each call
//! carries the caller's remaining deadline, token, request id and trace
//! headers (user-service authorizes on behalf of the end user, and a spent
//! budget fails here without a network round trip), is balanced over the
//! user-service endpoints, retried when they are unavailable (GetUser has
//! no side effects) and failed fast while they are all down.

use shop_client::ClientChannel;
use shop_proto::user::v1::{
    GetUserRequest, UserStatus, get_user_request::Identifier,
    user_service_client::UserServiceClient,
};
use tonic::Code;
use uuid::Uuid;

use crate::error::ServiceError;

/// The UserService client every handler shares.
pub type UserClient = UserServiceClient<ClientChannel>;

/// A UserService client over `channel`.
pub fn client(channel: ClientChannel) -> UserClient {
    UserServiceClient::new(channel)
}

/// Checks that `user_id` names an existing, ACTIVE user, as seen by the
/// caller whose token travels with the call.
pub async fn ensure_active(client: &UserClient, user_id: Uuid) -> Result<(), ServiceError> {
    let request = GetUserRequest {
        identifier: Some(Identifier::UserId(user_id.to_string())),
    };
    match client.clone().get_user(request).await {
        Ok(user) if user.get_ref().status == UserStatus::Active as i32 => Ok(()),
        Ok(_) => Err(ServiceError::FailedPrecondition(
            "the user is not active".into(),
        )),
        Err(status) if status.code() == Code::NotFound => Err(ServiceError::FailedPrecondition(
            "the user does not exist".into(),
        )),
        Err(status) => Err(ServiceError::Upstream(status)),
    }
}
