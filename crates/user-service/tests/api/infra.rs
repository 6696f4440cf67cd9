//! What every shop server offers besides its API: health per service,
//! reflection (v1 and v1alpha), a bounded graceful shutdown, and an auth
//! layer that fails closed.

use shop_proto::user::v1::ListUsersRequest;
use tokio_stream::StreamExt as _;
use tonic::{Code, Request};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::TestApp;

#[tokio::test]
async fn health_is_serving_for_each_service_and_overall() {
    let app = TestApp::spawn().await;
    let mut health = app.health.clone();
    for service in ["", "shop.user.v1.UserService", "shop.auth.v1.AuthService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn health_turns_not_serving_when_draining() {
    let app = TestApp::spawn().await;
    let mut watch = app
        .health
        .clone()
        .watch(HealthCheckRequest {
            service: "shop.user.v1.UserService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let stopping = tokio::spawn(app.stop());
    let next = watch.next().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    stopping
        .await
        .unwrap()
        .expect("run returns Ok after a clean shutdown");
}

#[tokio::test]
async fn reflection_lists_the_services_in_both_versions() {
    let app = TestApp::spawn_on(
        crate::helpers::Backend::Sqlite,
        &["--grpc-reflection", "true"],
    )
    .await;

    let mut v1_client =
        v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = v1_client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "shop.user.v1.UserService",
        "shop.auth.v1.AuthService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        !names.contains(&"shop.order.v1.OrderService"),
        "services this process does not serve are not advertised: {names:?}"
    );

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "shop.user.v1.UserService".into(),
            ),
        ),
    };
    let mut responses = alpha
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    assert!(
        matches!(
            response.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{response:?}"
    );
}

#[tokio::test]
async fn reflection_is_off_unless_switched_on() {
    let app = TestApp::spawn().await;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let status = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn admin_methods_refuse_anonymous_callers_before_the_handler() {
    let app = TestApp::spawn().await;
    let status = app
        .users
        .clone()
        .list_users(Request::new(ListUsersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("bearer"), "{}", status.message());
}
