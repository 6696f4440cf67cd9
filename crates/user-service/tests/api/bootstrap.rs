//! The bootstrap admin creates an account, never promotes one.

use std::time::Duration;

use shop_proto::user::v1::{
    GetUserRequest, ListUsersRequest, Role, RoleSet, UpdateUserRequest,
    get_user_request::Identifier,
};
use shop_server::Listeners;
use shop_testkit::{App, apps::user_service_config_with};
use tonic::Code;

use crate::helpers::{ADMIN_EMAIL, ADMIN_PASSWORD, Backend, PASSWORD, TestApp, authed};

#[tokio::test]
async fn the_bootstrap_never_promotes_an_account_someone_signed_up() {
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::Sqlite.database_url("users", dir.path()).await;
    let data = dir.path().join("data");

    // A deployment without a bootstrap admin yet: sign-up is public, and a
    // stranger takes the address the operator is about to configure.
    let mut first = App::start(
        user_service::run,
        user_service_config_with(&url, &data, None, &[]),
    )
    .await;
    shop_testkit::accounts::sign_up(first.channel(), "squatter").await;
    first.stop().await.unwrap();

    // The operator sets it as the bootstrap admin: the service refuses to
    // start and says why, rather than make the stranger admin.
    let config = user_service_config_with(
        &url,
        &data,
        Some(("squatter@example.com", "a-strong-password")),
        &[],
    );
    let run = user_service::run(
        config,
        Listeners::ephemeral().await.unwrap(),
        Box::pin(std::future::pending()),
    );
    let refused = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("refused at start-up, not serving")
        .unwrap_err();
    let message = format!("{refused:#}");
    assert!(message.contains("never promotes"), "{message}");
    assert!(
        refused.downcast_ref::<shop_server::ConfigError>().is_some(),
        "a configuration error (exit 64): {message}"
    );

    // The stranger is still a customer.
    let app = App::start(
        user_service::run,
        user_service_config_with(&url, &data, None, &[]),
    )
    .await;
    let squatter = shop_testkit::accounts::login(app.channel(), "squatter", PASSWORD).await;
    let listed = shop_proto::user::v1::user_service_client::UserServiceClient::new(app.channel())
        .list_users(authed(ListUsersRequest::default(), &squatter.access_token))
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_demoted_bootstrap_admin_stays_demoted() {
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::Sqlite.database_url("users", dir.path()).await;
    let data = dir.path().join("data");
    let app = TestApp::start(&url, &data, &[]).await;
    let boss = app.admin_token().await;
    let (deputy, _) = app.customer("deputy").await;
    let mut users = app.users.clone();
    users
        .update_user(authed(
            UpdateUserRequest {
                user_id: deputy.id.clone(),
                roles: Some(RoleSet {
                    roles: vec![Role::Customer as i32, Role::Admin as i32],
                }),
                ..Default::default()
            },
            &boss,
        ))
        .await
        .expect("the bootstrap admin promotes a deputy");
    let deputy_token = app.login("deputy", PASSWORD).await.access_token;
    let me = users
        .get_user(authed(
            GetUserRequest {
                identifier: Some(Identifier::Email(ADMIN_EMAIL.into())),
            },
            &boss,
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    users
        .update_user(authed(
            UpdateUserRequest {
                user_id: me,
                roles: Some(RoleSet {
                    roles: vec![Role::Customer as i32],
                }),
                ..Default::default()
            },
            &deputy_token,
        ))
        .await
        .expect("the deputy demotes the bootstrap admin");
    app.stop().await.unwrap();

    // Restarted with the same BOOTSTRAP_ADMIN_EMAIL: it serves, and the
    // demotion holds.
    let app = TestApp::start(&url, &data, &[]).await;
    let again = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.access_token;
    let listed = app
        .users
        .clone()
        .list_users(authed(ListUsersRequest::default(), &again))
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::PermissionDenied, "still demoted");
}
