//! AuthService over gRPC: login, token verification with the published
//! keys, refresh-token rotation and reuse detection, logout, and the
//! UNAUTHENTICATED answers for missing, forged and expired tokens.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use shop_auth::{KeySet, Role, SigningKey, TokenVerifier, VerificationKey};
use shop_proto::{
    auth::v1::{LoginRequest, LogoutRequest, RefreshTokenRequest},
    user::v1::{GetUserRequest, UpdateUserRequest, UserStatus, get_user_request::Identifier},
};
use tonic::{Code, Request};

use crate::helpers::{ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD, TestApp, authed, violated_fields};

fn get_self(id: &str) -> GetUserRequest {
    GetUserRequest {
        identifier: Some(Identifier::UserId(id.into())),
    }
}

async fn published_verifier(app: &TestApp) -> TokenVerifier {
    let keys = app
        .auth
        .clone()
        .get_public_keys(Request::new(()))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(!keys.is_empty());
    let set: KeySet = keys
        .iter()
        .map(|k| {
            assert_eq!(k.algorithm, "EdDSA");
            let key = VerificationKey::from_pem(&k.public_key_pem, "GetPublicKeys").unwrap();
            assert_eq!(key.kid(), k.kid, "kid is the key's thumbprint");
            key
        })
        .collect();
    TokenVerifier::new(set, "shop.user-service", "shop", Duration::from_secs(30))
}

#[tokio::test]
async fn login_by_email_or_username_gives_tokens_verifiable_with_the_published_keys() {
    let app = TestApp::spawn().await;
    let user = app.sign_up("ada").await;
    let verifier = published_verifier(&app).await;

    for identifier in ["ada@example.com", "ADA", "  Ada@Example.com "] {
        let pair = app.login(identifier, PASSWORD).await;
        assert_eq!(pair.token_type, "Bearer");
        assert_eq!(pair.expires_in, 900);
        assert_eq!(pair.refresh_expires_in, 7 * 24 * 3600);
        assert!(!pair.refresh_token.is_empty());
        let claims = verifier.verify(&pair.access_token).expect("verifies");
        assert_eq!(claims.sub, user.id);
        assert_eq!(claims.roles, [Role::Customer]);
        assert_eq!(claims.iss, "shop.user-service");
        assert_eq!(claims.aud, "shop");
        assert!(!claims.jti.is_empty());
    }
}

#[tokio::test]
async fn the_bootstrap_admin_can_log_in_with_the_admin_role() {
    let app = TestApp::spawn().await;
    let pair = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let claims = published_verifier(&app)
        .await
        .verify(&pair.access_token)
        .unwrap();
    assert!(claims.roles.contains(&Role::Admin));
}

#[tokio::test]
async fn every_failed_login_looks_the_same() {
    let app = TestApp::spawn().await;
    let (suspended, _) = app.customer("suspended").await;
    app.sign_up("grace").await;
    let admin = app.admin_token().await;
    app.users
        .clone()
        .update_user(authed(
            UpdateUserRequest {
                user_id: suspended.id.clone(),
                status: Some(UserStatus::Suspended as i32),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap();

    let mut answers = Vec::new();
    for (identifier, password) in [
        ("nobody@example.com", PASSWORD),
        ("grace", "wrong password"),
        ("suspended", PASSWORD),
        ("grace", &"x".repeat(72)),
    ] {
        let status = app
            .auth
            .clone()
            .login(LoginRequest {
                identifier: identifier.into(),
                password: password.into(),
            })
            .await
            .unwrap_err();
        answers.push((status.code(), status.message().to_owned()));
    }
    assert!(
        answers
            .iter()
            .all(|a| *a == (Code::Unauthenticated, "invalid credentials".to_owned())),
        "{answers:?}"
    );
}

#[tokio::test]
async fn login_validates_its_fields() {
    let app = TestApp::spawn().await;
    let status = app
        .auth
        .clone()
        .login(LoginRequest {
            identifier: String::new(),
            password: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["identifier", "password"]);
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_family() {
    let app = TestApp::spawn().await;
    let user = app.sign_up("rotator").await;
    let first = app.login("rotator", PASSWORD).await;
    let mut auth = app.auth.clone();

    let second = auth
        .refresh_token(RefreshTokenRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.refresh_token, first.refresh_token);
    app.users
        .clone()
        .get_user(authed(get_self(&user.id), &second.access_token))
        .await
        .expect("the refreshed access token works");

    // The first token was rotated away: presenting it again is theft.
    let reuse = auth
        .refresh_token(RefreshTokenRequest {
            refresh_token: first.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);

    // ...and the whole family, including the newest token, is revoked.
    let newest = auth
        .refresh_token(RefreshTokenRequest {
            refresh_token: second.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(newest.code(), Code::Unauthenticated);

    // Another login (another family) is unaffected.
    let other = app.login("rotator", PASSWORD).await;
    auth.refresh_token(RefreshTokenRequest {
        refresh_token: other.refresh_token,
    })
    .await
    .expect("a separate login keeps working");
}

#[tokio::test]
async fn unknown_refresh_tokens_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let mut auth = app.auth.clone();
    // Longer than any token we issue, but within the request size limit:
    // refused like any unknown token.
    for token in ["made-up-token", &"z".repeat(900)] {
        let status = auth
            .refresh_token(RefreshTokenRequest {
                refresh_token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // Past the method's declared request size: refused before it is read.
    let huge = auth
        .refresh_token(RefreshTokenRequest {
            refresh_token: "z".repeat(10_000),
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
    let empty = auth
        .refresh_token(RefreshTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn logout_revokes_the_session_and_reveals_nothing() {
    let app = TestApp::spawn().await;
    app.sign_up("leaver").await;
    let pair = app.login("leaver", PASSWORD).await;
    let mut auth = app.auth.clone();

    auth.logout(LogoutRequest {
        refresh_token: pair.refresh_token.clone(),
    })
    .await
    .unwrap();
    let after = auth
        .refresh_token(RefreshTokenRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated);

    // Idempotent, and silent about tokens that never existed.
    auth.logout(LogoutRequest {
        refresh_token: pair.refresh_token,
    })
    .await
    .unwrap();
    auth.logout(LogoutRequest {
        refresh_token: "never-issued".into(),
    })
    .await
    .unwrap();
    let empty = auth.logout(LogoutRequest::default()).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
}

/// Signs `claims` with the service's own key (read from its data
/// directory), to make tokens that are genuine but expired or early.
fn sign_with_service_key(app: &TestApp, claims: serde_json::Value) -> String {
    let path = app.data_dir.join("user-service-jwt.pem");
    let pem = std::fs::read_to_string(&path).unwrap();
    let key = SigningKey::from_pem(&pem, "test").unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid().to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn missing_forged_and_expired_tokens_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let (user, good) = app.customer("target").await;
    let mut users = app.users.clone();
    users
        .get_user(authed(get_self(&user.id), &good))
        .await
        .expect("a genuine token works");

    let claims = |exp: i64, nbf: i64| {
        serde_json::json!({
            "sub": user.id, "roles": ["customer", "admin"], "iss": "shop.user-service",
            "aud": "shop", "exp": exp, "nbf": nbf, "iat": nbf, "jti": "test"
        })
    };
    let expired = sign_with_service_key(&app, claims(now() - 3600, now() - 4000));
    let early = sign_with_service_key(&app, claims(now() + 4000, now() + 3600));

    // Well-formed and signed, but by a key the service never published.
    let foreign = shop_auth::TokenIssuer::new(
        std::sync::Arc::new(SigningKey::generate()),
        "shop.user-service",
        "shop",
        Duration::from_secs(600),
    )
    .issue(&user.id, &[Role::Customer, Role::Admin])
    .unwrap()
    .token;

    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64_url(&claims(now() + 600, now()).to_string()),
        parts[2]
    );

    for (what, token) in [
        ("expired", expired.as_str()),
        ("not yet valid", early.as_str()),
        ("foreign key", foreign.as_str()),
        ("tampered", tampered.as_str()),
        ("garbage", "not.a.jwt"),
    ] {
        let status = users
            .get_user(authed(get_self(&user.id), token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}");
    }
    let missing = users
        .get_user(Request::new(get_self(&user.id)))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
}

fn base64_url(s: &str) -> String {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn the_signing_key_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("users.db").display());
    let data_dir = dir.path().join("data");

    let app = TestApp::start(&database_url, &data_dir, &[]).await;
    let (user, token) = app.customer("persistent").await;
    app.stop().await.unwrap();

    let app = TestApp::start(&database_url, &data_dir, &[]).await;
    let got = app
        .users
        .clone()
        .get_user(authed(get_self(&user.id), &token))
        .await
        .expect("a token issued before the restart is still valid")
        .into_inner();
    assert_eq!(got.id, user.id);
}

#[tokio::test]
async fn extra_public_keys_are_published_and_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let old_key_path = dir.path().join("old.pem");
    let (old_key, _) = SigningKey::load_or_generate(&old_key_path).unwrap();
    let old_public = dir.path().join("old.pub.pem");
    std::fs::write(&old_public, old_key.verification_key().public_key_pem()).unwrap();

    let arg = old_public.display().to_string();
    let app = TestApp::spawn_on(
        crate::helpers::Backend::Sqlite,
        &["--jwt-extra-public-key-files", &arg],
    )
    .await;
    let (user, _) = app.customer("rotated").await;
    let keys = app
        .auth
        .clone()
        .get_public_keys(Request::new(()))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().any(|k| k.kid == old_key.kid()));

    // A token the previous key signed is still accepted during rotation.
    let old_issuer = shop_auth::TokenIssuer::new(
        std::sync::Arc::new(old_key),
        "shop.user-service",
        "shop",
        Duration::from_secs(60),
    );
    let old_token = old_issuer.issue(&user.id, &[Role::Customer]).unwrap().token;
    app.users
        .clone()
        .get_user(authed(get_self(&user.id), &old_token))
        .await
        .expect("token signed by the previous key");
}
