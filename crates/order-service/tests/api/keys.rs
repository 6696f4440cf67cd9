//! order-service verifies tokens with keys fetched from user-service: a
//! rotated key is picked up on first sight, made-up key ids do not turn
//! into a flood of fetches.

use std::{sync::Arc, time::Duration};

use shop_auth::{Role, SigningKey, TokenIssuer, VerifyError, VerifyToken};
use shop_client::{ClientArgs, keys::RemoteKeys};
use shop_proto::order::v1::ListOrdersRequest;
use shop_server::Listeners;
use shop_testkit::{App, apps};
use tonic::{Code, transport::Channel};

use crate::helpers::{Backend, Stack, authed, start_user_service};

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_when_first_seen() {
    let mut stack =
        Stack::spawn_with(Backend::Sqlite, &[], &["--jwt-key-refresh-interval", "0s"]).await;
    let (_, old_token) = stack.customer("rotating").await;
    let addr = stack.user_service.addr;

    // user-service comes back on the same address with a new key (another
    // data directory), the way a rotation without JWT_EXTRA_PUBLIC_KEY_FILES
    // would look.
    stack.user_service.stop().await.unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    for file in ["users.db", "users.db-wal", "users.db-shm"] {
        let from = stack.dir.path().join(file);
        if from.exists() {
            std::fs::copy(from, other_dir.path().join(file)).unwrap();
        }
    }
    stack.user_service =
        start_user_service(crate::helpers::rebind(addr).await, other_dir.path(), &[]).await;
    let new_token = stack.login("rotating", crate::helpers::PASSWORD).await;
    assert_ne!(
        jsonwebtoken::decode_header(&old_token).unwrap().kid,
        jsonwebtoken::decode_header(&new_token).unwrap().kid
    );

    stack
        .orders
        .clone()
        .list_orders(authed(ListOrdersRequest::default(), &new_token))
        .await
        .expect("the new key is fetched and the token accepted");
    let old = stack
        .orders
        .clone()
        .list_orders(authed(ListOrdersRequest::default(), &old_token))
        .await
        .unwrap_err();
    assert_eq!(
        old.code(),
        Code::Unauthenticated,
        "the old key is no longer published"
    );
}

#[tokio::test]
async fn unknown_key_ids_trigger_at_most_one_fetch_per_interval() {
    let stack = Stack::spawn().await;
    let channel = shop_client::connect(
        "user-service",
        &format!("http://{}", stack.user_service.addr),
        &ClientArgs::default(),
    )
    .unwrap();
    let keys = RemoteKeys::new(
        channel,
        "shop.user-service",
        "shop",
        Duration::from_secs(30),
        Duration::from_secs(3600),
    );
    assert!(matches!(
        keys.verify("x.y.z").await,
        Err(VerifyError::KeysUnavailable)
    ));
    keys.fetch_with_retry().await;
    assert_eq!(keys.fetches(), 1);

    let (user, token) = stack.customer("known").await;
    let principal = keys.verify(&token).await.expect("a genuine token verifies");
    assert_eq!(principal.user_id, user.id);

    for _ in 0..5 {
        let stranger = TokenIssuer::new(
            Arc::new(SigningKey::generate()),
            "shop.user-service",
            "shop",
            Duration::from_secs(60),
        )
        .issue(&user.id, &[Role::Admin])
        .unwrap()
        .token;
        assert!(matches!(
            keys.verify(&stranger).await,
            Err(VerifyError::Token(shop_auth::TokenError::UnknownKey { .. }))
        ));
    }
    assert_eq!(
        keys.fetches(),
        2,
        "one re-fetch for five unknown kids within the interval"
    );
}

#[tokio::test]
async fn configured_public_keys_replace_fetching() {
    let dir = tempfile::tempdir().unwrap();
    let users =
        crate::helpers::start_user_service(Listeners::ephemeral().await.unwrap(), dir.path(), &[])
            .await;
    let channel = Channel::from_shared(format!("http://{}", users.addr))
        .unwrap()
        .connect_lazy();
    let published =
        shop_proto::auth::v1::auth_service_client::AuthServiceClient::new(channel.clone())
            .get_public_keys(tonic::Request::new(()))
            .await
            .unwrap()
            .into_inner()
            .keys;
    let pem_path = dir.path().join("user-service.pub.pem");
    std::fs::write(&pem_path, &published[0].public_key_pem).unwrap();

    let pem_arg = pem_path.display().to_string();
    let db = format!("sqlite://{}", dir.path().join("orders.db").display());
    let orders_svc = crate::helpers::start_order_service(
        Listeners::ephemeral().await.unwrap(),
        users.addr,
        crate::helpers::NO_INVENTORY.parse().unwrap(),
        &db,
        dir.path(),
        &["--jwt-public-key-files", &pem_arg],
    )
    .await;

    let mut users_client =
        shop_proto::user::v1::user_service_client::UserServiceClient::new(channel.clone());
    users_client
        .create_user(shop_proto::user::v1::CreateUserRequest {
            email: "pinned@example.com".into(),
            username: "pinned".into(),
            password: crate::helpers::PASSWORD.into(),
            first_name: "P".into(),
            last_name: "K".into(),
        })
        .await
        .unwrap();
    let token = shop_proto::auth::v1::auth_service_client::AuthServiceClient::new(channel)
        .login(shop_proto::auth::v1::LoginRequest {
            identifier: "pinned".into(),
            password: crate::helpers::PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let mut orders = shop_proto::order::v1::order_service_client::OrderServiceClient::new(
        Channel::from_shared(format!("http://{}", orders_svc.addr))
            .unwrap()
            .connect_lazy(),
    );
    orders
        .list_orders(authed(ListOrdersRequest::default(), &token))
        .await
        .expect("a token signed by the configured key is accepted");
    let foreign = TokenIssuer::new(
        Arc::new(SigningKey::generate()),
        "shop.user-service",
        "shop",
        Duration::from_secs(60),
    )
    .issue("someone", &[Role::Customer])
    .unwrap()
    .token;
    let refused = orders
        .list_orders(authed(ListOrdersRequest::default(), &foreign))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn order_service_waits_for_user_service_keys_before_serving() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };

    let dir = tempfile::tempdir().unwrap();
    // user-service is not up yet: its sockets are bound, nobody serves.
    let users_listeners = Listeners::ephemeral().await.unwrap();
    let users_addr = users_listeners.grpc_addr();
    let db = format!("sqlite://{}", dir.path().join("orders.db").display());
    let config = apps::order_service_config(
        &db,
        &dir.path().join("order-data"),
        users_addr,
        crate::helpers::NO_INVENTORY.parse().unwrap(),
        &[],
    );
    let mut orders = App::launch(
        order_service::run,
        config,
        Listeners::ephemeral().await.unwrap(),
    );
    let orders_addr = orders.addr;

    let channel = Channel::from_shared(format!("http://{orders_addr}"))
        .unwrap()
        .connect_lazy();
    let health = HealthClient::new(channel.clone());
    let status = |service: &'static str| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .map(|r| r.into_inner().status)
        }
    };
    // Poll until the server answers at all, then it must say NOT_SERVING.
    let mut answer = status("shop.order.v1.OrderService").await;
    for _ in 0..100 {
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        answer = status("shop.order.v1.OrderService").await;
    }
    assert_eq!(answer.unwrap(), ServingStatus::NotServing as i32);
    assert_eq!(status("").await.unwrap(), ServingStatus::NotServing as i32);

    let any_token = TokenIssuer::new(
        Arc::new(SigningKey::generate()),
        "shop.user-service",
        "shop",
        Duration::from_secs(60),
    )
    .issue("u", &[Role::Customer])
    .unwrap()
    .token;
    let early =
        shop_proto::order::v1::order_service_client::OrderServiceClient::new(channel.clone())
            .list_orders(authed(ListOrdersRequest::default(), &any_token))
            .await
            .unwrap_err();
    assert_eq!(early.code(), Code::Unavailable, "{early:?}");

    // user-service arrives; order-service fetches the keys and turns SERVING.
    let _users = start_user_service(users_listeners, dir.path(), &[]).await;
    shop_testkit::wait_until_serving(
        channel,
        "shop.order.v1.OrderService",
        Duration::from_secs(15),
        || Ok(()),
    )
    .await;
    assert_eq!(status("").await.unwrap(), ServingStatus::Serving as i32);

    orders.stop().await.unwrap();
}

#[tokio::test]
async fn a_retired_key_is_refused_within_the_keys_max_age() {
    let dir = tempfile::tempdir().unwrap();
    // The previous signing key, still published during a rotation.
    let retired = Arc::new(SigningKey::generate());
    let pem = dir.path().join("retired.pub.pem");
    std::fs::write(&pem, retired.verification_key().public_key_pem()).unwrap();
    let pem_arg = pem.display().to_string();
    let mut users = start_user_service(
        Listeners::ephemeral().await.unwrap(),
        dir.path(),
        &["--jwt-extra-public-key-files", &pem_arg],
    )
    .await;
    let db = format!("sqlite://{}", dir.path().join("orders.db").display());
    let orders_svc = crate::helpers::start_order_service(
        Listeners::ephemeral().await.unwrap(),
        users.addr,
        crate::helpers::NO_INVENTORY.parse().unwrap(),
        &db,
        dir.path(),
        &["--jwt-keys-max-age", "300ms"],
    )
    .await;
    let mut orders =
        shop_proto::order::v1::order_service_client::OrderServiceClient::new(orders_svc.channel());
    let token = TokenIssuer::new(
        retired,
        "shop.user-service",
        "shop",
        Duration::from_secs(600),
    )
    .issue(&uuid::Uuid::now_v7().to_string(), &[Role::Customer])
    .unwrap()
    .token;
    orders
        .list_orders(authed(ListOrdersRequest::default(), &token))
        .await
        .expect("accepted while the key is published");

    // The rotation ends: user-service comes back without the old key.
    let addr = users.addr;
    users.stop().await.unwrap();
    let _users = start_user_service(crate::helpers::rebind(addr).await, dir.path(), &[]).await;

    // Refused within JWT_KEYS_MAX_AGE (and a fetch), although order-service
    // knows the key id and had the token verified already.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match orders
            .list_orders(authed(ListOrdersRequest::default(), &token))
            .await
        {
            Err(status) if status.code() == Code::Unauthenticated => break,
            answer => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the retired key is still trusted: {answer:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
