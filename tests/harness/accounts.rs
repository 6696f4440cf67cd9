//! Signing users up and logging them in through a user-service, for tests
//! of every service that needs callers.

use shop_proto::{
    auth::v1::{LoginRequest, TokenPair, auth_service_client::AuthServiceClient},
    user::v1::{CreateUserRequest, User, user_service_client::UserServiceClient},
};
use tonic::transport::Channel;

use crate::{ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD};

/// Signs `username` up (`<username>@example.com`, [`PASSWORD`]) through
/// the user-service at `users`.
///
/// # Panics
/// When the sign-up fails.
pub async fn sign_up(users: Channel, username: &str) -> User {
    UserServiceClient::new(users)
        .create_user(CreateUserRequest {
            email: format!("{username}@example.com"),
            username: username.into(),
            password: PASSWORD.into(),
            first_name: "Test".into(),
            last_name: username.into(),
        })
        .await
        .expect("sign-up succeeds")
        .into_inner()
}

/// Logs `identifier` in with `password`.
///
/// # Panics
/// When the login fails.
pub async fn login(users: Channel, identifier: &str, password: &str) -> TokenPair {
    AuthServiceClient::new(users)
        .login(LoginRequest {
            identifier: identifier.into(),
            password: password.into(),
        })
        .await
        .expect("login succeeds")
        .into_inner()
}

/// Signs `username` up and logs in: the user and an access token.
pub async fn customer(users: Channel, username: &str) -> (User, String) {
    let user = sign_up(users.clone(), username).await;
    let tokens = login(users, username, PASSWORD).await;
    (user, tokens.access_token)
}

/// An access token of the bootstrap admin every test stack has.
pub async fn admin_token(users: Channel) -> String {
    login(users, ADMIN_EMAIL, ADMIN_PASSWORD).await.access_token
}
