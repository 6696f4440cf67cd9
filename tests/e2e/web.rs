//! Browsers on the gRPC port, against the real binaries: gRPC-Web over
//! HTTP/1.1 is served under the same auth, limits and metrics as a native
//! call, and CORS answers only for the origins CORS_ALLOWED_ORIGINS names
//! (none by default).

use std::net::SocketAddr;

use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use shop_proto::{
    auth::v1::{LoginRequest, auth_service_client::AuthServiceClient},
    user::v1::{
        GetUserRequest, get_user_request::Identifier, user_service_client::UserServiceClient,
    },
};
use shop_testkit::{
    ADMIN_EMAIL, ADMIN_PASSWORD, Backend, Spec, Stack, authed, http_get, metric_sum,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use tonic_web::GrpcWebClientLayer;

use crate::{ORDERS, USERS};

/// The page's origin the stack allows.
const PAGE: &str = "http://shop.test:5173";

/// Sends `request` (an HTTP/1.1 request, `Connection: close`) to `addr` and
/// returns the head of the response, its header names lower-cased.
async fn http1(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .map(|line| match line.split_once(':') {
            Some((name, value)) => format!("{}:{}", name.to_ascii_lowercase(), value),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn preflight(addr: SocketAddr, origin: &str) -> Vec<u8> {
    format!(
        "OPTIONS /shop.user.v1.UserService/GetUser HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,authorization,grpc-timeout\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn grpc_web_over_http1_gets_the_same_auth_and_metrics_and_cors_only_for_allowed_origins() {
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(USERS).env("CORS_ALLOWED_ORIGINS", PAGE)],
    )
    .await;
    let users = stack.service(USERS);
    let origin: http::Uri = format!("http://{}", users.addr).parse().unwrap();
    let web = tower::ServiceBuilder::new()
        .layer(GrpcWebClientLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http());

    // Log in and read oneself, as a page would.
    let tokens = AuthServiceClient::with_origin(web.clone(), origin.clone())
        .login(LoginRequest {
            identifier: ADMIN_EMAIL.into(),
            password: ADMIN_PASSWORD.into(),
        })
        .await
        .expect("gRPC-Web login")
        .into_inner();
    let mut user_client = UserServiceClient::with_origin(web, origin);
    let me = user_client
        .get_user(authed(
            GetUserRequest {
                identifier: Some(Identifier::Email(ADMIN_EMAIL.into())),
            },
            &tokens.access_token,
        ))
        .await
        .expect("gRPC-Web GetUser")
        .into_inner();
    assert_eq!(me.email, ADMIN_EMAIL);
    // Errors come back as gRPC statuses, and auth applies.
    let missing = user_client
        .get_user(authed(
            GetUserRequest {
                identifier: Some(Identifier::UserId(uuid::Uuid::now_v7().to_string())),
            },
            &tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let anonymous = user_client
        .get_user(GetUserRequest {
            identifier: Some(Identifier::Email(ADMIN_EMAIL.into())),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");

    // The calls were counted like native ones, labelled with their protocol.
    let (_, metrics) = http_get(users.admin, "/metrics").await;
    for code in ["OK", "NotFound", "Unauthenticated"] {
        for (protocol, count) in [("grpc-web", 1.0), ("grpc", 0.0)] {
            assert_eq!(
                metric_sum(
                    &metrics,
                    "grpc_server_handled_total",
                    &[
                        ("grpc_method", "GetUser"),
                        ("grpc_code", code),
                        ("protocol", protocol)
                    ]
                ),
                count,
                "GetUser {code} over {protocol}\n{metrics}"
            );
        }
    }
    assert_eq!(
        metric_sum(
            &metrics,
            "grpc_server_msg_sent_size_bytes_count",
            &[("grpc_method", "Login"), ("protocol", "grpc-web")]
        ),
        1.0,
        "{metrics}"
    );

    // CORS: the allowed page's preflight is answered for it...
    let allowed = http1(users.addr, &preflight(users.addr, PAGE)).await;
    assert!(
        allowed.contains(&format!("access-control-allow-origin: {PAGE}")),
        "{allowed}"
    );
    assert!(
        allowed.contains("access-control-allow-headers:"),
        "{allowed}"
    );
    // ... another page's is not, nor is any page's where none is allowed.
    let other = http1(users.addr, &preflight(users.addr, "http://evil.test")).await;
    assert!(!other.contains("access-control-allow-origin"), "{other}");
    let orders = stack.service(ORDERS);
    let off = http1(orders.addr, &preflight(orders.addr, PAGE)).await;
    assert!(!off.contains("access-control-allow-origin"), "{off}");

    // A gRPC-Web answer lets the page read its status headers.
    let empty_message = b"\0\0\0\0\0";
    let mut check = format!(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: {}\r\nOrigin: {PAGE}\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        users.addr,
        empty_message.len()
    )
    .into_bytes();
    check.extend_from_slice(empty_message);
    let answered = http1(users.addr, &check).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(
        answered.contains("content-type: application/grpc-web"),
        "{answered}"
    );
    let exposed = answered
        .lines()
        .find(|l| l.starts_with("access-control-expose-headers:"))
        .unwrap_or_default()
        .to_owned();
    for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(header), "{header} not exposed: {answered}");
    }
}
