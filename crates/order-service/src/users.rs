//! order-service's client of user-service: the channel, and the check that
//! the user an order is for exists and is active.
//!
//! Calls go through [`Propagate`], so each one carries the caller's
//! remaining deadline, token, request id and trace headers: user-service
//! authorizes on behalf of the end user, and a spent budget fails here
//! without a network round trip.

use std::time::Duration;

use shop_middleware::context::Propagate;
use shop_proto::user::v1::{
    GetUserRequest, UserStatus, get_user_request::Identifier,
    user_service_client::UserServiceClient,
};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

use crate::error::ServiceError;

/// The UserService client every handler shares.
pub type UserClient = UserServiceClient<Propagate<Channel>>;

/// A lazily connected channel to user-service at `url`.
pub fn channel(url: &str, connect_timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// A UserService client over `channel` that propagates the request context.
pub fn client(channel: Channel) -> UserClient {
    UserServiceClient::new(Propagate::new(channel))
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
