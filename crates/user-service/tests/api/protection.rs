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
async fn logins_for_one_account_from_one_address_are_limited() {
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

fn login(identifier: &str, password: &str) -> LoginRequest {
    LoginRequest {
        identifier: identifier.into(),
        password: password.into(),
    }
}

#[tokio::test]
async fn a_stranger_guessing_from_one_address_cannot_lock_the_owner_out() {
    let app = TestApp::spawn_on(Backend::Sqlite, &["--login-attempts-per-minute", "3"]).await;
    app.sign_up("victim").await;
    let mut stranger = app.auth_from("127.0.0.2");
    // Email and username are one account: the fourth guess is refused
    // whichever name it uses.
    let mut codes = Vec::new();
    for identifier in [
        "victim",
        "victim@example.com",
        "VICTIM",
        "victim@example.com",
    ] {
        let answer = stranger.login(login(identifier, "not the password")).await;
        codes.push(answer.map(|_| Code::Ok).unwrap_or_else(|s| s.code()));
    }
    assert_eq!(
        codes,
        [
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::ResourceExhausted
        ]
    );
    // The owner, from their own address, is not locked out.
    let owner = app
        .auth_from("127.0.0.3")
        .login(login("victim", PASSWORD))
        .await;
    assert!(owner.is_ok(), "{owner:?}");
}

#[tokio::test]
async fn an_account_has_a_ceiling_across_addresses() {
    let app = TestApp::spawn_on(
        Backend::Sqlite,
        &[
            "--login-attempts-per-minute",
            "10",
            "--login-attempts-per-account-per-minute",
            "4",
        ],
    )
    .await;
    app.sign_up("popular").await;
    for ip in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..2 {
            let refused = app
                .auth_from(ip)
                .login(login("popular", "wrong guess"))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::Unauthenticated);
        }
    }
    let ceiling = app
        .auth_from("127.0.0.4")
        .login(login("popular", "wrong guess"))
        .await
        .unwrap_err();
    assert_eq!(ceiling.code(), Code::ResourceExhausted, "{ceiling:?}");
    assert!(shop_testkit::retry_delay(&ceiling).is_some());
}

#[tokio::test]
async fn credential_calls_are_limited_per_address_before_any_hashing() {
    let app = TestApp::spawn_on(
        Backend::Sqlite,
        &["--credential-calls-per-address-per-minute", "3"],
    )
    .await;
    // Rotating identifiers does not help: Login calls are counted per
    // address, before the database or bcrypt is asked.
    let mut rotating = app.auth_from("127.0.0.2");
    let mut codes = Vec::new();
    for i in 0..4 {
        let answer = rotating
            .login(login(&format!("nobody{i}"), "whatever password"))
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
        ]
    );
    // Sign-ups and refreshes have their own buckets per address.
    let mut users = app.users_from("127.0.0.2");
    for i in 0..3 {
        users
            .create_user(CreateUserRequest {
                email: format!("new{i}@example.com"),
                username: format!("new{i}"),
                password: PASSWORD.into(),
                first_name: "New".into(),
                last_name: "User".into(),
            })
            .await
            .expect("within the sign-up quota");
    }
    let fourth = users
        .create_user(CreateUserRequest {
            email: "new3@example.com".into(),
            username: "new3".into(),
            password: PASSWORD.into(),
            first_name: "New".into(),
            last_name: "User".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(fourth.code(), Code::ResourceExhausted);
    // Another address is not affected.
    let other = app
        .auth_from("127.0.0.3")
        .login(login("new0", PASSWORD))
        .await;
    assert!(other.is_ok(), "{other:?}");
}

#[tokio::test]
async fn a_full_hashing_pool_refuses_with_retry_info_instead_of_queueing() {
    // One permit and a slow hash (cost 13, ~0.5 s): of several logins sent
    // at once, one hashes and the others are refused.
    let app = TestApp::spawn_on(
        Backend::Sqlite,
        &["--password-hash-concurrency", "1", "--bcrypt-cost", "13"],
    )
    .await;
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let mut auth = app.auth_from(&format!("127.0.1.{}", i + 1));
            tokio::spawn(async move {
                auth.login(login(&format!("someone{i}"), "a password"))
                    .await
            })
        })
        .collect();
    let mut refused = Vec::new();
    let mut checked = 0;
    for call in calls {
        match call.await.unwrap() {
            Err(status) if status.code() == Code::ResourceExhausted => refused.push(status),
            Err(status) if status.code() == Code::Unauthenticated => checked += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(checked >= 1, "at least one password was checked");
    assert!(!refused.is_empty(), "nobody was refused: the pool queued");
    for status in &refused {
        let delay = shop_testkit::retry_delay(status).expect("RetryInfo");
        assert!(delay > Duration::ZERO);
    }
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
