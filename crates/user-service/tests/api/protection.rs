//! The protections every shop server has: a panicking handler is one
//! INTERNAL answer, oversized messages are refused, callers are
//! rate-limited (with RetryInfo), logins per account too, and load beyond
//! the concurrency limit is shed.

use std::time::Duration;

use shop_proto::{
    auth::v1::LoginRequest,
    user::v1::{
        CreateUserRequest, GetUserRequest, UpdateUserRequest, get_user_request::Identifier,
    },
};
use tonic::Code;

use crate::helpers::{Backend, PASSWORD, TestApp, authed};

fn get(id: &str) -> GetUserRequest {
    GetUserRequest {
        identifier: Some(Identifier::UserId(id.into())),
    }
}

#[tokio::test]
async fn a_panicking_handler_is_one_internal_answer_and_the_server_goes_on() {
    let app = TestApp::spawn_on(Backend::Sqlite, &["--fault-error", "GetUser=panic"]).await;
    let (user, token) = app.customer("survivor").await;
    let mut users = app.users.clone();
    for _ in 0..3 {
        let status = users
            .get_user(authed(get(&user.id), &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
    // Same connection, other calls: still served.
    let updated = users
        .update_user(authed(
            UpdateUserRequest {
                user_id: user.id.clone(),
                bio: Some("still here".into()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.bio, "still here");
}

#[tokio::test]
async fn a_message_over_four_mebibytes_is_resource_exhausted() {
    let app = TestApp::spawn().await;
    let huge = CreateUserRequest {
        email: "big@example.com".into(),
        username: "big".into(),
        password: PASSWORD.into(),
        first_name: "B".into(),
        // The whole message: this field plus a few bytes of the others.
        last_name: "x".repeat(4 * 1024 * 1024 + 1),
    };
    let mut users = app
        .users
        .clone()
        .max_encoding_message_size(64 * 1024 * 1024);
    let status = users.create_user(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_resource_exhausted_with_retry_info() {
    let app = TestApp::spawn_on(
        Backend::Sqlite,
        &["--rate-limit-per-second", "1", "--rate-limit-burst", "6"],
    )
    .await;
    // Sign-ups and logins are anonymous: they share the peer's bucket.
    let (user, token) = app.customer("chatty").await;
    let (other, other_token) = app.customer("quiet").await;
    let mut users = app.users.clone();
    let mut refused = None;
    for _ in 0..20 {
        if let Err(status) = users.get_user(authed(get(&user.id), &token)).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("refused within 20 calls at 1/s with a burst of 6");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let delay = shop_testkit::retry_delay(&refused).expect("RetryInfo with a delay");
    assert!(delay <= Duration::from_secs(1), "{delay:?}");

    // Buckets are per caller: someone else is not affected.
    users
        .get_user(authed(get(&other.id), &other_token))
        .await
        .expect("another caller has its own bucket");
}

#[tokio::test]
async fn logins_for_one_account_are_limited_whoever_tries() {
    let app = TestApp::spawn_on(Backend::Sqlite, &["--login-attempts-per-minute", "3"]).await;
    app.sign_up("target").await;
    let mut auth = app.auth.clone();
    let mut codes = Vec::new();
    for password in ["wrong 1", "wrong 2", "wrong 3", PASSWORD] {
        let answer = auth
            .login(LoginRequest {
                identifier: "target".into(),
                password: password.into(),
            })
            .await;
        codes.push(answer.map(|_| Code::Ok).unwrap_or_else(|s| s.code()));
    }
    assert_eq!(
        codes,
        [
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::ResourceExhausted
        ],
        "even the right password waits once the attempts are spent"
    );
    // Another account is not affected.
    app.sign_up("bystander").await;
    app.login("bystander", PASSWORD).await;
}

#[tokio::test]
async fn load_beyond_the_concurrency_limit_is_shed_with_unavailable() {
    let app = TestApp::spawn_on(
        Backend::Sqlite,
        &[
            "--max-concurrent-requests",
            "1",
            "--fault-delay",
            "GetUser=500ms",
        ],
    )
    .await;
    let (user, token) = app.customer("crowd").await;
    // Collected, so that all four are in flight at once.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut users = app.users.clone();
            let request = authed(get(&user.id), &token);
            tokio::spawn(async move {
                users
                    .get_user(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| s.code())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap());
    }
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    let shed = outcomes
        .iter()
        .filter(|o| **o == Err(Code::Unavailable))
        .count();
    assert!(ok >= 1, "{outcomes:?}");
    assert!(shed >= 1, "{outcomes:?}");
    assert_eq!(ok + shed, 4, "{outcomes:?}");
}
