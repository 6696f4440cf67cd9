//! AuthService.IssueServiceToken: a service account's secret buys a
//! service token; nothing else does, and a service token is never a user.

use shop_auth::Role;
use shop_proto::{
    auth::v1::IssueServiceTokenRequest,
    user::v1::{GetUserRequest, get_user_request::Identifier},
};
use tonic::Code;

use crate::helpers::{Backend, TestApp, authed};

fn issue(name: &str, secret: &str) -> IssueServiceTokenRequest {
    IssueServiceTokenRequest {
        service_name: name.into(),
        secret: secret.into(),
    }
}

#[tokio::test]
async fn a_service_account_secret_buys_a_service_token_and_nothing_else_does() {
    let accounts = tempfile::tempdir().unwrap();
    let secret_file = accounts.path().join("order-service.secret");
    let secret: String = shop_auth::load_or_generate_secret(&secret_file)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = accounts.path().to_str().unwrap();
    let app = TestApp::spawn_on(Backend::Sqlite, &["--service-accounts-dir", dir]).await;
    let mut auth = app.auth.clone();

    let token = auth
        .issue_service_token(issue("order-service", &secret))
        .await
        .expect("the account's own secret")
        .into_inner();
    assert!(token.expires_in > 0);
    let claims = shop_auth::TokenVerifier::new(
        app_keys(&app).await,
        shop_auth::token::DEFAULT_ISSUER,
        shop_auth::token::DEFAULT_AUDIENCE,
        std::time::Duration::from_secs(30),
    )
    .verify(&token.access_token)
    .unwrap();
    assert_eq!(claims.sub, "service:order-service");
    assert_eq!(claims.roles, vec![Role::Service]);

    // A wrong secret, an unknown account and a path outside the directory
    // all get the same answer.
    for (name, presented) in [
        ("order-service", "0".repeat(64)),
        ("inventory-service", secret.clone()),
        ("../order-service", secret.clone()),
    ] {
        let refused = auth
            .issue_service_token(issue(name, &presented))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{name}");
        assert_eq!(refused.message(), "invalid service credentials");
    }

    // A service token does not stand for a user.
    let get = GetUserRequest {
        identifier: Some(Identifier::Email(crate::helpers::ADMIN_EMAIL.into())),
    };
    let refused = app
        .users
        .clone()
        .get_user(authed(get, &token.access_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn without_service_accounts_no_service_token_is_issued() {
    let app = TestApp::spawn().await;
    let refused = app
        .auth
        .clone()
        .issue_service_token(issue("order-service", &"a".repeat(64)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

async fn app_keys(app: &TestApp) -> shop_auth::KeySet {
    app.auth
        .clone()
        .get_public_keys(tonic::Request::new(()))
        .await
        .unwrap()
        .into_inner()
        .keys
        .iter()
        .map(|k| shop_auth::VerificationKey::from_pem(&k.public_key_pem, "test").unwrap())
        .collect()
}
