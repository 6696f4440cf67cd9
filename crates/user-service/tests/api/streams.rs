//! The streaming RPCs of UserService: StreamUsers, BulkCreateUsers and
//! UserActivity.

use std::time::Duration;

use shop_proto::{
    auth::v1::LoginRequest,
    user::v1::{
        CreateUserRequest, StreamUsersRequest, UpdateUserRequest, UserActivityRequest, UserStatus,
        user_activity_event::Type, user_activity_request::Action,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

use crate::helpers::{Backend, PASSWORD, TestApp, authed, violated_fields};

fn sign_up(name: &str) -> CreateUserRequest {
    CreateUserRequest {
        email: format!("{name}@example.com"),
        username: name.into(),
        password: PASSWORD.into(),
        first_name: "Bulk".into(),
        last_name: name.into(),
    }
}

async fn drain<T>(mut stream: tonic::Streaming<T>) -> (Vec<T>, Option<tonic::Status>) {
    let mut items = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(item))) => items.push(item),
            Ok(Ok(None)) => return (items, None),
            Ok(Err(status)) => return (items, Some(status)),
            Err(_) => panic!("the stream neither sent nor ended within 10 s"),
        }
    }
}

async fn streams_users_with_filters_and_limit(app: &TestApp) {
    for i in 0..12 {
        app.sign_up(&format!("streamed{i:02}")).await;
    }
    let admin = app.admin_token().await;
    let mut users = app.users.clone();
    let (all, end) = drain(
        users
            .stream_users(authed(StreamUsersRequest::default(), &admin))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert!(end.is_none());
    assert_eq!(all.len(), 13, "12 users and the bootstrap admin");
    let mut ids: Vec<_> = all.iter().map(|u| u.id.clone()).collect();
    let sent = ids.clone();
    ids.sort();
    assert_eq!(ids, sent, "oldest first");

    let (some, _) = drain(
        users
            .stream_users(authed(
                StreamUsersRequest {
                    search: "STREAMED0".into(),
                    limit: 5,
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(some.len(), 5, "the limit holds");
    assert!(some.iter().all(|u| u.username.starts_with("streamed0")));
}

#[tokio::test]
async fn stream_users_sends_matching_users_oldest_first() {
    streams_users_with_filters_and_limit(&TestApp::spawn().await).await;
}

#[tokio::test]
async fn stream_users_sends_matching_users_oldest_first_on_postgres() {
    let app = TestApp::spawn_on(Backend::Postgres, &[]).await;
    streams_users_with_filters_and_limit(&app).await;
}

#[tokio::test]
async fn stream_users_checks_limit_and_caller() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, customer) = app.customer("nosy").await;
    let mut users = app.users.clone();
    for limit in [1001, -1] {
        let status = users
            .stream_users(authed(
                StreamUsersRequest {
                    limit,
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "limit {limit}");
        assert_eq!(violated_fields(&status), ["limit"]);
    }
    let denied = users
        .stream_users(authed(StreamUsersRequest::default(), &customer))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn bulk_create_creates_the_valid_and_reports_the_invalid() {
    let app = TestApp::spawn().await;
    app.sign_up("taken").await;
    let admin = app.admin_token().await;
    let mut bad = sign_up("bad");
    bad.email = "nope".into();
    bad.password = "short".into();
    let items = vec![
        sign_up("bulk1"),
        bad,
        sign_up("taken"),
        sign_up("bulk2"),
        sign_up("bulk1"),
    ];
    let response = app
        .users
        .clone()
        .bulk_create_users(authed(tokio_stream::iter(items), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.created_count, 2);
    assert_eq!(response.failed_count, 3);
    assert_eq!(
        response
            .users
            .iter()
            .map(|u| u.username.as_str())
            .collect::<Vec<_>>(),
        ["bulk1", "bulk2"]
    );
    let errors: Vec<(i32, &str, i32)> = response
        .errors
        .iter()
        .map(|e| (e.index, e.email.as_str(), e.code))
        .collect();
    assert_eq!(
        errors,
        [
            (1, "nope", Code::InvalidArgument as i32),
            (2, "taken@example.com", Code::AlreadyExists as i32),
            (4, "bulk1@example.com", Code::AlreadyExists as i32),
        ]
    );
    assert!(
        response.errors[0].message.contains("email:"),
        "{:?}",
        response.errors[0]
    );
    assert!(response.errors[0].message.contains("password:"));

    // The created users can log in.
    app.login("bulk2", PASSWORD).await;
}

#[tokio::test]
async fn bulk_create_refuses_more_than_ten_thousand_items_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    // One valid item first, then invalid ones (cheap: no bcrypt).
    let mut items = vec![sign_up("first")];
    items.extend((0..10_000).map(|_| CreateUserRequest::default()));
    let status = app
        .users
        .clone()
        .bulk_create_users(authed(tokio_stream::iter(items), &admin))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("10000"), "{}", status.message());
    let login = app
        .auth
        .clone()
        .login(LoginRequest {
            identifier: "first".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(login.code(), Code::Unauthenticated, "nothing was created");
}

#[tokio::test]
async fn bulk_create_refuses_an_oversized_message() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let mut huge = sign_up("huge");
    huge.first_name = "x".repeat(10_000);
    let status = app
        .users
        .clone()
        .bulk_create_users(authed(
            tokio_stream::iter(vec![sign_up("fine"), huge]),
            &admin,
        ))
        .await
        .unwrap_err();
    // Each message of the stream is held to the declared 4 KiB.
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("larger than this method accepts (4096 bytes)"),
        "{status:?}"
    );
}

#[tokio::test]
async fn max_message_bytes_caps_every_declared_limit() {
    let app = TestApp::spawn_on(Backend::Sqlite, &["--max-message-bytes", "2048"]).await;
    let admin = app.admin_token().await;
    let mut large = sign_up("large");
    large.first_name = "x".repeat(3_000);
    let status = app
        .users
        .clone()
        .bulk_create_users(authed(tokio_stream::iter(vec![large]), &admin))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("(2048 bytes)"), "{status:?}");
}

#[tokio::test]
async fn bulk_create_is_for_admins() {
    let app = TestApp::spawn().await;
    let (_, customer) = app.customer("wannabe").await;
    let status = app
        .users
        .clone()
        .bulk_create_users(authed(tokio_stream::iter(vec![sign_up("x1")]), &customer))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

/// A UserActivity call whose requests are sent through the returned
/// sender.
async fn activity(
    app: &TestApp,
    token: &str,
) -> (
    mpsc::Sender<UserActivityRequest>,
    tonic::Streaming<shop_proto::user::v1::UserActivityEvent>,
) {
    let (tx, rx) = mpsc::channel(8);
    let events = app
        .users
        .clone()
        .user_activity(authed(ReceiverStream::new(rx), token))
        .await
        .unwrap()
        .into_inner();
    (tx, events)
}

fn subscribe(user_id: &str) -> UserActivityRequest {
    UserActivityRequest {
        action: Action::Subscribe as i32,
        user_id: user_id.into(),
    }
}

async fn next_event(
    events: &mut tonic::Streaming<shop_proto::user::v1::UserActivityEvent>,
) -> shop_proto::user::v1::UserActivityEvent {
    tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("an event within 5 s")
        .expect("no error")
        .expect("the stream goes on")
}

/// Repeats `act` until the stream delivers an event: the way to know that
/// the subscription requests sent so far have been applied (the protocol
/// has no acknowledgement, and requests are applied in order).
async fn first_event_after<F, Fut>(
    events: &mut tonic::Streaming<shop_proto::user::v1::UserActivityEvent>,
    mut act: F,
) -> shop_proto::user::v1::UserActivityEvent
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        act().await;
        match tokio::time::timeout(Duration::from_millis(200), events.message()).await {
            Ok(message) => return message.unwrap().expect("the stream goes on"),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "no event within 5 s"
            ),
        }
    }
}

#[tokio::test]
async fn user_activity_follows_the_callers_own_account() {
    let app = TestApp::spawn().await;
    let (me, my_token) = app.customer("follower").await;
    let (tx, mut events) = activity(&app, &my_token).await;
    tx.send(subscribe(&me.id)).await.unwrap();

    let users = app.users.clone();
    let event = first_event_after(&mut events, || {
        let mut users = users.clone();
        let request = authed(
            UpdateUserRequest {
                user_id: me.id.clone(),
                bio: Some("hello".into()),
                ..Default::default()
            },
            &my_token,
        );
        async move {
            users.update_user(request).await.unwrap();
        }
    })
    .await;
    assert_eq!(event.user_id, me.id);
    assert_eq!(event.r#type, Type::Updated as i32);
    assert_eq!(event.user.unwrap().bio, "hello");

    app.login("follower", PASSWORD).await;
    assert_eq!(next_event(&mut events).await.r#type, Type::LoggedIn as i32);
}

#[tokio::test]
async fn admins_follow_anyone_and_unsubscribing_stops_the_events() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (target, target_token) = app.customer("target").await;
    let (other, _) = app.customer("bystander").await;
    let (tx, mut events) = activity(&app, &admin).await;
    // Follow and unfollow the bystander, then follow the target; once a
    // target event arrives, all three requests have been applied.
    tx.send(subscribe(&other.id)).await.unwrap();
    tx.send(UserActivityRequest {
        action: Action::Unsubscribe as i32,
        user_id: other.id.clone(),
    })
    .await
    .unwrap();
    tx.send(subscribe(&target.id)).await.unwrap();
    let probe = first_event_after(&mut events, || app.login_quietly("target")).await;
    assert_eq!(probe.user_id, target.id);

    app.login("bystander", PASSWORD).await;
    app.users
        .clone()
        .delete_user(authed(
            shop_proto::user::v1::DeleteUserRequest {
                user_id: target.id.clone(),
            },
            &target_token,
        ))
        .await
        .unwrap();
    // Any further probe logins of the target may still be queued; skip them.
    let event = loop {
        let event = next_event(&mut events).await;
        if event.r#type != Type::LoggedIn as i32 || event.user_id != target.id {
            break event;
        }
    };
    assert_eq!(
        event.user_id, target.id,
        "the bystander's login was not sent"
    );
    assert_eq!(event.r#type, Type::Deleted as i32);
    assert_eq!(event.user.unwrap().status, UserStatus::Deleted as i32);
}

#[tokio::test]
async fn following_someone_else_ends_the_stream_with_not_found() {
    let app = TestApp::spawn().await;
    let (_, token) = app.customer("snoop").await;
    let (victim, _) = app.customer("victim").await;
    let (tx, events) = activity(&app, &token).await;
    tx.send(subscribe(&victim.id)).await.unwrap();
    let (got, end) = drain(events).await;
    assert!(got.is_empty());
    assert_eq!(end.unwrap().code(), Code::NotFound);
}

#[tokio::test]
async fn a_malformed_request_ends_the_stream_with_invalid_argument() {
    let app = TestApp::spawn().await;
    let (me, token) = app.customer("sloppy").await;
    for bad in [
        UserActivityRequest {
            action: Action::Subscribe as i32,
            user_id: "not-a-uuid".into(),
        },
        UserActivityRequest {
            action: Action::Unspecified as i32,
            user_id: me.id.clone(),
        },
    ] {
        let (tx, events) = activity(&app, &token).await;
        tx.send(bad).await.unwrap();
        let (_, end) = drain(events).await;
        assert_eq!(end.unwrap().code(), Code::InvalidArgument);
    }
    let anonymous = app
        .users
        .clone()
        .user_activity(Request::new(tokio_stream::iter(vec![subscribe(&me.id)])))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

/// The status `events` ends with, within `within`.
async fn end_of(
    events: &mut tonic::Streaming<shop_proto::user::v1::UserActivityEvent>,
    within: Duration,
) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.message()).await {
            Err(_) => panic!("the stream did not end within {within:?}"),
            Ok(Err(status)) => return status,
            Ok(Ok(None)) => panic!("the stream ended with OK"),
            Ok(Ok(Some(_))) => {}
        }
    }
}

#[tokio::test]
async fn a_demoted_admin_loses_the_streams_the_role_opened() {
    let app = TestApp::spawn_on(Backend::Sqlite, &["--stream-recheck-interval", "200ms"]).await;
    let boss = app.admin_token().await;
    let (deputy, _) = app.customer("deputy").await;
    let (target, _) = app.customer("watched").await;
    let mut users = app.users.clone();
    let promote = |roles: Vec<i32>| {
        authed(
            UpdateUserRequest {
                user_id: deputy.id.clone(),
                roles: Some(shop_proto::user::v1::RoleSet { roles }),
                ..Default::default()
            },
            &boss,
        )
    };
    use shop_proto::user::v1::Role;
    users
        .update_user(promote(vec![Role::Customer as i32, Role::Admin as i32]))
        .await
        .unwrap();
    let deputy_token = app.login("deputy", PASSWORD).await.access_token;
    let (tx, mut events) = activity(&app, &deputy_token).await;
    tx.send(subscribe(&target.id)).await.unwrap();
    let seen = first_event_after(&mut events, || app.login_quietly("watched")).await;
    assert_eq!(seen.user_id, target.id, "the admin follows another user");

    users
        .update_user(promote(vec![Role::Customer as i32]))
        .await
        .unwrap();
    let ended = end_of(&mut events, Duration::from_secs(5)).await;
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
}

#[tokio::test]
async fn a_suspended_account_loses_its_streams() {
    let app = TestApp::spawn_on(Backend::Sqlite, &["--stream-recheck-interval", "200ms"]).await;
    let boss = app.admin_token().await;
    let (me, token) = app.customer("soon-suspended").await;
    let (tx, mut events) = activity(&app, &token).await;
    tx.send(subscribe(&me.id)).await.unwrap();
    first_event_after(&mut events, || app.login_quietly("soon-suspended")).await;
    app.users
        .clone()
        .update_user(authed(
            UpdateUserRequest {
                user_id: me.id.clone(),
                status: Some(UserStatus::Suspended as i32),
                ..Default::default()
            },
            &boss,
        ))
        .await
        .unwrap();
    let ended = end_of(&mut events, Duration::from_secs(5)).await;
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let app = TestApp::spawn_on(Backend::Sqlite, &["--access-token-ttl", "2s"]).await;
    let (me, token) = app.customer("short-lived").await;
    let (tx, mut events) = activity(&app, &token).await;
    tx.send(subscribe(&me.id)).await.unwrap();
    let ended = end_of(&mut events, Duration::from_secs(10)).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
}

#[tokio::test]
async fn a_quiet_stream_ends_at_the_idle_timeout() {
    let app = TestApp::spawn_on(Backend::Sqlite, &["--stream-idle-timeout", "300ms"]).await;
    let (_me, token) = app.customer("quiet").await;
    // Opened, never used.
    let (_tx, mut events) = activity(&app, &token).await;
    let ended = end_of(&mut events, Duration::from_secs(5)).await;
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
}

#[tokio::test]
async fn streams_from_one_address_are_capped_whatever_the_accounts() {
    let app = TestApp::spawn_on(
        Backend::Sqlite,
        &[
            "--stream-max-per-address",
            "3",
            "--stream-max-per-principal",
            "2",
        ],
    )
    .await;
    let mut open = Vec::new();
    for name in ["first", "second"] {
        let (_, token) = app.customer(name).await;
        for _ in 0..2 {
            if open.len() < 3 {
                open.push(activity(&app, &token).await);
            }
        }
    }
    let (_, token) = app.customer("third").await;
    let refused = app
        .users
        .clone()
        .user_activity(authed(
            tokio_stream::iter(Vec::<UserActivityRequest>::new()),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("address"), "{refused:?}");
    // Another address still gets in.
    let elsewhere = app
        .users_from("127.0.0.2")
        .user_activity(authed(
            ReceiverStream::new(mpsc::channel::<UserActivityRequest>(1).1),
            &token,
        ))
        .await;
    assert!(elsewhere.is_ok(), "{elsewhere:?}");
}
