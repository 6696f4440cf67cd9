//! The real services, driven by arbitrary messages: user-service,
//! inventory-service and order-service run in this process on loopback
//! (SQLite in a temporary directory, the whole middleware stack), and each
//! input is one well-framed gRPC call of any of their methods with
//! arbitrary message bytes, as an admin (with order-service's service
//! token for services-only methods) or anonymously. No call may answer UNKNOWN or
//! DATA_LOSS, nor INTERNAL for a message that decodes (a panic caught by
//! the guard answers INTERNAL too; bytes that are no protobuf message at
//! all are INTERNAL "failed to decode Protobuf message", as in every gRPC
//! implementation), and no unary call may hang.
#![no_main]

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use libfuzzer_sys::fuzz_target;
use shop_proto::{
    auth::v1::{IssueServiceTokenRequest, LoginRequest, auth_service_client::AuthServiceClient},
    policy::{Access, MethodPolicy, methods},
};
use shop_server::{Listeners, service::parse_from};
use tokio::runtime::Runtime;
use tonic::{body::Body, transport::Channel};
use tower::ServiceExt as _;

const ADMIN_EMAIL: &str = "fuzz-admin@shop.local";
const ADMIN_PASSWORD: &str = "fuzz admin password";
/// How long a unary call may take before it counts as a hang.
const UNARY_LIMIT: Duration = Duration::from_secs(10);
/// How long a stream is read before it is let go (open is fine).
const STREAM_READ: Duration = Duration::from_millis(300);

struct Stack {
    runtime: Runtime,
    users: Channel,
    inventory: Channel,
    orders: Channel,
    admin_token: String,
    service_token: String,
    _dir: tempfile::TempDir,
}

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (users, inventory, orders, admin_token, service_token) =
            runtime.block_on(start(dir.path()));
        Stack {
            runtime,
            users,
            inventory,
            orders,
            admin_token,
            service_token,
            _dir: dir,
        }
    })
}

/// Limits an honest client never meets, lifted so that the fuzzer reaches
/// the handlers rather than the rate limits.
const LIFTED: [&str; 8] = [
    "--rate-limit-per-second",
    "1000000",
    "--rate-limit-burst",
    "1000000",
    "--stream-max-per-address",
    "100000",
    "--stream-max-per-principal",
    "100000",
];

async fn start(dir: &std::path::Path) -> (Channel, Channel, Channel, String, String) {
    let users_listeners = Listeners::ephemeral().await.unwrap();
    let users_addr = users_listeners.grpc_addr();
    let mut args: Vec<String> = [
        "user-service",
        "--bcrypt-cost",
        "4",
        "--bootstrap-admin-email",
        ADMIN_EMAIL,
        "--bootstrap-admin-password",
        ADMIN_PASSWORD,
        "--credential-calls-per-address-per-minute",
        "100000000",
    ]
    .map(String::from)
    .into();
    // order-service's secret is generated at <data-dir>/service-accounts.
    let accounts = dir.join("service-accounts");
    args.extend([
        "--service-accounts-dir".into(),
        accounts.display().to_string(),
    ]);
    args.extend([
        "--database-url".into(),
        format!("sqlite://{}/users.db", dir.display()),
    ]);
    args.extend(["--data-dir".into(), dir.display().to_string()]);
    args.extend(LIFTED.map(String::from));
    let config: user_service::Config = parse_from(args).unwrap();
    tokio::spawn(user_service::run(
        config,
        users_listeners,
        std::future::pending(),
    ));

    let inventory_listeners = Listeners::ephemeral().await.unwrap();
    let inventory_addr = inventory_listeners.grpc_addr();
    let mut args: Vec<String> = vec!["inventory-service".into()];
    args.extend([
        "--database-url".into(),
        format!("sqlite://{}/inventory.db", dir.display()),
    ]);
    args.extend(["--data-dir".into(), dir.display().to_string()]);
    args.extend(["--user-service-url".into(), format!("http://{users_addr}")]);
    args.extend(["--seed-catalogue".into(), "true".into()]);
    args.extend(LIFTED.map(String::from));
    let config: inventory_service::Config = parse_from(args).unwrap();
    tokio::spawn(inventory_service::run(
        config,
        inventory_listeners,
        std::future::pending(),
    ));

    let orders_listeners = Listeners::ephemeral().await.unwrap();
    let orders_addr = orders_listeners.grpc_addr();
    let mut args: Vec<String> = vec!["order-service".into()];
    args.extend([
        "--database-url".into(),
        format!("sqlite://{}/orders.db", dir.display()),
    ]);
    args.extend(["--data-dir".into(), dir.display().to_string()]);
    args.extend(["--user-service-url".into(), format!("http://{users_addr}")]);
    args.extend([
        "--inventory-service-url".into(),
        format!("http://{inventory_addr}"),
    ]);
    args.extend(LIFTED.map(String::from));
    let config: order_service::Config = parse_from(args).unwrap();
    tokio::spawn(order_service::run(
        config,
        orders_listeners,
        std::future::pending(),
    ));

    let users = Channel::from_shared(format!("http://{users_addr}"))
        .unwrap()
        .connect_lazy();
    let inventory = Channel::from_shared(format!("http://{inventory_addr}"))
        .unwrap()
        .connect_lazy();
    let orders = Channel::from_shared(format!("http://{orders_addr}"))
        .unwrap()
        .connect_lazy();
    let started = Instant::now();
    let token = loop {
        let login = AuthServiceClient::new(users.clone())
            .login(LoginRequest {
                identifier: ADMIN_EMAIL.into(),
                password: ADMIN_PASSWORD.into(),
            })
            .await;
        match login {
            Ok(pair) => break pair.into_inner().access_token,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "user-service never came up: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The others serve once they have user-service's keys.
    let started = Instant::now();
    for channel in [&inventory, &orders] {
        while tonic_health_serving(channel).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "a service never came up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // order-service's own credential, for the services-only methods.
    let secret: String = std::fs::read_to_string(accounts.join("order-service.secret"))
        .expect("order-service wrote its secret")
        .trim()
        .to_owned();
    let service_token = AuthServiceClient::new(users.clone())
        .issue_service_token(IssueServiceTokenRequest {
            service_name: "order-service".into(),
            secret,
        })
        .await
        .expect("a service token")
        .into_inner()
        .access_token;
    (users, inventory, orders, token, service_token)
}

async fn tonic_health_serving(channel: &Channel) -> Result<(), ()> {
    let (answer, _) = call(
        channel.clone(),
        "/grpc.health.v1.Health/Check",
        None,
        None,
        Bytes::new(),
        false,
    )
    .await;
    if matches!(answer, Some((0, _))) {
        Ok(())
    } else {
        Err(())
    }
}

/// What a call answered: grpc-status and grpc-message.
type Answer = Option<(u32, String)>;

/// One call of `path` with the message `message`: its status (None when a
/// stream was still open after [`STREAM_READ`]) and whether it took
/// longer than a unary call may.
async fn call(
    channel: Channel,
    path: &str,
    token: Option<&str>,
    service_token: Option<&str>,
    message: Bytes,
    streaming: bool,
) -> (Answer, bool) {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://fuzz{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "5S");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(token) = service_token {
        request = request.header("x-service-token", token);
    }
    let request = request
        .body(Body::new(Full::new(Bytes::from(frame))))
        .unwrap();
    let started = Instant::now();
    let response = match channel.oneshot(request).await {
        Ok(response) => response,
        // The transport failed: no gRPC answer to judge.
        Err(_) => return (None, false),
    };
    if let Some(code) = status_of(response.headers()) {
        return (Some(code), started.elapsed() > UNARY_LIMIT);
    }
    let read_for = if streaming { STREAM_READ } else { UNARY_LIMIT };
    let mut body = response.into_body();
    let read = tokio::time::timeout(read_for, async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        return status_of(trailers);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    })
    .await;
    match read {
        Ok(code) => (code, false),
        Err(_) => (None, !streaming),
    }
}

fn status_of(headers: &http::HeaderMap) -> Answer {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default();
    Some((code, message.to_owned()))
}

/// The methods of the three services, in a fixed order.
fn targets() -> &'static [&'static MethodPolicy] {
    static TARGETS: OnceLock<Vec<&'static MethodPolicy>> = OnceLock::new();
    TARGETS.get_or_init(|| {
        methods()
            .iter()
            .filter(|m| {
                [
                    "shop.user.v1.",
                    "shop.auth.v1.",
                    "shop.order.v1.",
                    "shop.inventory.v1.",
                ]
                    .iter()
                    .any(|p| m.service.starts_with(p))
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, message)) = data.split_first() else {
        return;
    };
    let stack = stack();
    let targets = targets();
    let method = targets[usize::from(which & 0x7f) % targets.len()];
    let token = (which & 0x80 == 0).then_some(stack.admin_token.as_str());
    let service_token = (token.is_some() && method.access == Access::Service)
        .then_some(stack.service_token.as_str());
    let channel = if method.service.starts_with("shop.order.") {
        stack.orders.clone()
    } else if method.service.starts_with("shop.inventory.") {
        stack.inventory.clone()
    } else {
        stack.users.clone()
    };
    let streaming = method.client_streaming || method.server_streaming;
    let (answer, hung) = stack.runtime.block_on(call(
        channel,
        method.path,
        token,
        service_token,
        Bytes::copy_from_slice(message),
        streaming,
    ));
    assert!(
        !hung,
        "{} did not answer within {UNARY_LIMIT:?}",
        method.path
    );
    if let Some((code, message)) = &answer {
        // grpc-message is percent-encoded (tonic encodes spaces too).
        let undecodable = *code == 13
            && message
                .replace("%20", " ")
                .starts_with("failed to decode Protobuf message");
        assert!(
            !matches!(code, 2 | 13 | 15) || undecodable,
            "{} answered {answer:?}",
            method.path
        );
    }
});
