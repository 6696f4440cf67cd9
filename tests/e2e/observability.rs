//! What operators see, from the real binaries: one trace across the three
//! services exported over OTLP (and a call shared by many orders linked to
//! each of them), grpc-ecosystem metrics on the admin port
//! (message sizes and stream backpressure waits among them),
//! a request id and trace id on every log line of a request, one access
//! line per call, and never a secret.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::{Span, span::SpanKind},
};
use shop_auth::{Role, SigningKey, TokenIssuer};
use shop_core::context::Propagate;
use shop_proto::{
    auth::v1::{LoginRequest, RefreshTokenRequest, auth_service_client::AuthServiceClient},
    inventory::v1::{
        AdjustStockRequest, GetProductRequest, WatchStockRequest,
        inventory_service_client::InventoryServiceClient,
    },
    order::v1::{GetOrderRequest, order_service_client::OrderServiceClient},
    user::v1::{CreateUserRequest, user_service_client::UserServiceClient},
};
use shop_testkit::{Backend, Spec, Stack, accounts, authed, http_get, metric_sum};
use tokio_stream::wrappers::TcpListenerStream;

use prost::Message as _;

use crate::{INVENTORY, ORDERS, USERS, customer, order};

/// A tiny OTLP trace receiver: keeps every span with its `service.name`.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    /// Every span `service` exported named `name`, of `kind`, in the order
    /// they came.
    fn find_all(&self, service: &str, name: &str, kind: SpanKind) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, span)| s == service && span.name == name && span.kind == kind as i32)
            .map(|(_, span)| span.clone())
            .collect()
    }

    /// The first span [`Collector::find_all`] finds.
    fn find(&self, service: &str, name: &str, kind: SpanKind) -> Option<Span> {
        self.find_all(service, name, kind).into_iter().next()
    }
}

/// Places an order as a caller whose span is `00f067aa0ba902b7` in the
/// trace `caller_trace` (its `traceparent`, sampled).
async fn order_in_trace(
    stack: &Stack,
    user_id: &str,
    token: &str,
    request_id: &str,
    caller_trace: &str,
) {
    let mut request = authed(order(user_id, request_id), token);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    OrderServiceClient::new(stack.service(ORDERS).channel())
        .create_order(request)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_shared_reservation_call_links_to_each_order_it_carried() {
    // One reservation call at a time, a call of its own held a second: the
    // orders placed meanwhile share a ReserveStocks call.
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let stack = Stack::start(
        Backend::Sqlite,
        &[
            Spec::new(USERS).envs(&otel),
            Spec::new(INVENTORY)
                .envs(&otel)
                .env("FAULT_DELAY", "ReserveStock=1s"),
            Spec::new(ORDERS)
                .envs(&otel)
                .env("STOCK_RESERVE_CALLS", "1"),
        ],
    )
    .await;
    let (user, token) = customer(&stack, "linked").await;
    let placing: Vec<_> = (0..4)
        .map(|i| {
            let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
            let request = authed(order(&user.id, &format!("linked-{i}")), &token);
            tokio::spawn(async move { orders.create_order(request).await })
        })
        .collect();
    for placed in placing {
        placed.await.unwrap().unwrap();
    }

    // The CreateOrder spans end after the shared call's and may come in a
    // later export batch: wait for every span the test reads.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let shared_call = "shop.inventory.v1.InventoryService/ReserveStocks";
    let (together, client, orders) = loop {
        let together = collector.find(
            "order-service",
            "reserve stock together",
            SpanKind::Internal,
        );
        let client = collector.find("order-service", shared_call, SpanKind::Client);
        let orders = collector.find_all(
            "order-service",
            "shop.order.v1.OrderService/CreateOrder",
            SpanKind::Server,
        );
        if let (Some(together), Some(client)) = (together, client)
            && (orders.len() == 4 || tokio::time::Instant::now() >= deadline)
        {
            break (together, client, orders);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shared call's spans not exported within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(client.parent_span_id, together.span_id, "the call under it");
    assert!(!together.links.is_empty(), "{together:?}");
    for link in &together.links {
        assert!(
            orders
                .iter()
                .any(|o| o.trace_id == link.trace_id && o.span_id == link.span_id),
            "a link to a CreateOrder's span: {link:?}"
        );
        assert_ne!(link.trace_id, together.trace_id, "not under any order");
    }
}

#[tokio::test]
async fn one_trace_covers_the_caller_order_service_user_service_and_inventory_service() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let stack = Stack::start(Backend::Sqlite, &Spec::everyone(&otel)).await;
    let (user, token) = customer(&stack, "traced").await;

    // The caller's own trace: its traceparent must be the root of it all.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    order_in_trace(&stack, &user.id, &token, "trace-1", caller_trace).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (server, client, downstream) = loop {
        let found = (
            collector.find(
                "order-service",
                "shop.order.v1.OrderService/CreateOrder",
                SpanKind::Server,
            ),
            collector.find(
                "order-service",
                "shop.user.v1.UserService/GetUser",
                SpanKind::Client,
            ),
            collector.find(
                "user-service",
                "shop.user.v1.UserService/GetUser",
                SpanKind::Server,
            ),
        );
        let stock = ["shop.inventory.v1.InventoryService/ReserveStock"].map(|name| {
            (
                collector.find("order-service", name, SpanKind::Client),
                collector.find("inventory-service", name, SpanKind::Server),
            )
        });
        if let (Some(a), Some(b), Some(c)) = found
            && stock.iter().all(|(c, s)| c.is_some() && s.is_some())
        {
            for (client, server_side) in stock {
                let (client, server_side) = (client.unwrap(), server_side.unwrap());
                assert_eq!(
                    client.trace_id, a.trace_id,
                    "{} in the caller's trace",
                    client.name
                );
                assert_eq!(client.parent_span_id, a.span_id, "under CreateOrder");
                assert_eq!(
                    server_side.trace_id, a.trace_id,
                    "inventory-service in the trace"
                );
                assert_eq!(server_side.parent_span_id, client.span_id);
            }
            break (a, b, c);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans not exported within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The confirmation goes out after the answer, in a batch of its own
    // (order-service's confirmer): a trace of its own across both services.
    let confirm = "shop.inventory.v1.InventoryService/ConfirmReservations";
    let (sent, received) = loop {
        if let (Some(sent), Some(received)) = (
            collector.find("order-service", confirm, SpanKind::Client),
            collector.find("inventory-service", confirm, SpanKind::Server),
        ) {
            break (sent, received);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the confirmation's spans not exported within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(received.trace_id, sent.trace_id);
    assert_eq!(received.parent_span_id, sent.span_id);
    assert_ne!(sent.trace_id, server.trace_id, "not the caller's trace");

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        hex(&server.trace_id),
        caller_trace,
        "the caller's trace continues"
    );
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(
        client.parent_span_id, server.span_id,
        "the client span is a child of the server span"
    );
    assert_eq!(
        downstream.trace_id, server.trace_id,
        "one trace across both services"
    );
    assert_eq!(
        downstream.parent_span_id, client.span_id,
        "user-service's span is a child of order-service's client span"
    );
    let attribute = |span: &Span, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    assert_eq!(
        attribute(&downstream, "rpc.system"),
        Some(AnyValue::StringValue("grpc".into()))
    );
    assert_eq!(
        attribute(&downstream, "rpc.service"),
        Some(AnyValue::StringValue("shop.user.v1.UserService".into()))
    );
    assert_eq!(
        attribute(&downstream, "rpc.method"),
        Some(AnyValue::StringValue("GetUser".into()))
    );
    assert_eq!(
        attribute(&downstream, "rpc.grpc.status_code"),
        Some(AnyValue::IntValue(0))
    );
}

/// With no collector, no OpenTelemetry span is built
/// (`shop_telemetry::trace_ids`), yet every service a call reaches puts its
/// span under its caller's and logs the caller's trace id.
#[tokio::test]
async fn without_a_collector_the_caller_s_trace_id_reaches_every_service_s_log_lines() {
    let stack = Stack::start(Backend::Sqlite, &Spec::everyone(&[])).await;
    let (user, token) = customer(&stack, "untraced").await;
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    order_in_trace(&stack, &user.id, &token, "trace-2", caller_trace).await;

    for (service, method) in [
        (ORDERS, "CreateOrder"),
        (USERS, "GetUser"),
        (INVENTORY, "ReserveStock"),
    ] {
        let in_trace = |e: &serde_json::Value| {
            e["target"] == "access"
                && e["span"]["rpc.method"] == method
                && e["span"]["trace_id"] == caller_trace
        };
        assert!(
            stack
                .service(service)
                .wait_for_logs(Duration::from_secs(5), 1, in_trace)
                .await,
            "{service} logged no {method} in the caller's trace: {:?}",
            stack
                .service(service)
                .log_events()
                .iter()
                .filter(|e| e["target"] == "access")
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn metrics_use_the_grpc_ecosystem_names_on_the_admin_port() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    let (user, token) = customer(&stack, "counted").await;
    let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
    let placed_request = order(&user.id, "m-1");
    let request_len = placed_request.encoded_len();
    let placed = orders
        .create_order(authed(placed_request, &token))
        .await
        .unwrap()
        .into_inner();
    let missing = orders
        .get_order(authed(
            GetOrderRequest {
                order_id: uuid::Uuid::now_v7().to_string(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let (status, body) = http_get(stack.service(ORDERS).admin, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"grpc_server_started_total{grpc_type="unary",grpc_service="shop.order.v1.OrderService",grpc_method="CreateOrder",protocol="grpc"} 1"#,
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="shop.order.v1.OrderService",grpc_method="CreateOrder",protocol="grpc",grpc_code="OK"} 1"#,
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="shop.order.v1.OrderService",grpc_method="GetOrder",protocol="grpc",grpc_code="NotFound"} 1"#,
        r#"grpc_client_handled_total{grpc_type="unary",grpc_service="shop.user.v1.UserService",grpc_method="GetUser",grpc_code="OK"} 1"#,
        r#"grpc_server_msg_received_total{grpc_type="unary",grpc_service="shop.order.v1.OrderService",grpc_method="CreateOrder",protocol="grpc"} 1"#,
        r#"grpc_server_msg_sent_total{grpc_type="unary",grpc_service="shop.order.v1.OrderService",grpc_method="CreateOrder",protocol="grpc"} 1"#,
    ] {
        assert!(body.contains(line), "missing {line}\n{body}");
    }
    assert!(
        body.contains("grpc_server_handling_seconds_bucket{"),
        "{body}"
    );
    // Serving status: SERVING now, and the change to it counted.
    assert!(
        body.contains(r#"grpc_server_health_serving{grpc_service="shop.order.v1.OrderService"} 1"#),
        "{body}"
    );
    assert!(
        metric_sum(
            &body,
            "grpc_server_health_status_changes_total",
            &[
                ("grpc_service", "shop.order.v1.OrderService"),
                ("status", "SERVING")
            ]
        ) >= 1.0,
        "{body}"
    );
    assert!(
        body.contains("grpc_client_handling_seconds_bucket{"),
        "{body}"
    );
    // What the process costs, read for this scrape: the service's own
    // CPU and memory, its descriptors, its runtime.
    for (name, at_least) in [
        ("process_cpu_seconds_total", 0.01),
        ("process_resident_memory_bytes", 1e6),
        ("process_open_fds", 5.0),
        ("process_threads", 2.0),
        ("shop_runtime_workers", 1.0),
        ("shop_runtime_alive_tasks", 1.0),
    ] {
        assert!(metric_sum(&body, name, &[]) >= at_least, "{name}\n{body}");
    }
    // The write lane's runtime beside the serving one.
    for runtime in ["serving", "writes"] {
        let label = [("runtime", runtime)];
        assert!(
            metric_sum(&body, "shop_runtime_workers", &label) >= 1.0,
            "{runtime}\n{body}"
        );
    }
    // Message sizes, as framed on the wire: CreateOrder's one request and
    // one response, byte for byte.
    let create_order = [("grpc_method", "CreateOrder")];
    for (name, value) in [
        ("grpc_server_msg_received_size_bytes_count", 1.0),
        (
            "grpc_server_msg_received_size_bytes_sum",
            request_len as f64,
        ),
        ("grpc_server_msg_sent_size_bytes_count", 1.0),
        (
            "grpc_server_msg_sent_size_bytes_sum",
            placed.encoded_len() as f64,
        ),
    ] {
        assert_eq!(
            metric_sum(&body, name, &create_order),
            value,
            "{name}\n{body}"
        );
    }
    assert!(
        body.contains("grpc_server_msg_received_size_bytes_bucket{"),
        "{body}"
    );
    // ... and on the client side, order-service's GetUser to user-service.
    let get_user = [("grpc_method", "GetUser")];
    for name in [
        "grpc_client_msg_sent_size_bytes_count",
        "grpc_client_msg_received_size_bytes_count",
    ] {
        assert_eq!(metric_sum(&body, name, &get_user), 1.0, "{name}\n{body}");
    }
    assert!(
        metric_sum(&body, "grpc_client_msg_received_size_bytes_sum", &get_user) > 0.0,
        "{body}"
    );

    // The order's durable insert: at least one commit, holding at least
    // one transaction each, and how long it took.
    let sqlite = [("backend", "sqlite")];
    let commits = metric_sum(&body, "shop_db_commits_total", &sqlite);
    let committed = metric_sum(&body, "shop_db_committed_transactions_total", &sqlite);
    assert!(commits >= 1.0 && committed >= commits, "{body}");
    assert!(
        metric_sum(&body, "shop_db_commit_seconds_count", &sqlite) >= 1.0,
        "{body}"
    );
    // A histogram (buckets add up across replicas), not a summary.
    assert!(
        body.contains(r#"shop_db_commit_seconds_bucket{backend="sqlite",le="0.001"}"#),
        "{body}"
    );
    assert!(!body.contains("shop_db_commit_seconds{"), "{body}");

    let (healthz, _) = http_get(stack.service(ORDERS).admin, "/healthz").await;
    let (readyz, _) = http_get(stack.service(ORDERS).admin, "/readyz").await;
    assert_eq!((healthz, readyz), (200, 200));
}

#[tokio::test]
async fn a_stream_producer_waiting_for_a_client_that_stopped_reading_is_measured() {
    // A buffer of two messages, and a client whose HTTP/2 stream window
    // holds about 20 updates and that reads none: after a few dozen
    // changes the producer must wait.
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(INVENTORY).env("STREAM_BUFFER", "2")],
    )
    .await;
    let (_, token) = customer(&stack, "slowreader").await;
    let admin = shop_testkit::accounts::admin_token(stack.service(USERS).channel()).await;
    let inventory = stack.service(INVENTORY);
    let slow_channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", inventory.addr))
            .unwrap()
            .initial_stream_window_size(1024)
            .connect()
            .await
            .unwrap();
    let mut watch = InventoryServiceClient::new(slow_channel)
        .watch_stock(authed(
            WatchStockRequest {
                skus: vec!["sku-1".into()],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    watch
        .message()
        .await
        .unwrap()
        .expect("the current stock first");

    let waits = || async {
        let (_, body) = http_get(inventory.admin, "/metrics").await;
        metric_sum(
            &body,
            "grpc_server_stream_backpressure_waits_total",
            &[("service", INVENTORY)],
        )
    };
    assert_eq!(waits().await, 0.0, "nothing waits while the client reads");
    let mut admin_client = InventoryServiceClient::new(inventory.channel());
    let mut changes = 0;
    while waits().await == 0.0 {
        assert!(
            changes < 400,
            "{changes} changes unread and the producer never waited"
        );
        for _ in 0..10 {
            admin_client
                .adjust_stock(authed(
                    AdjustStockRequest {
                        sku: "sku-1".into(),
                        delta: 1,
                        reason: "backpressure test".into(),
                        request_id: uuid::Uuid::now_v7().to_string(),
                    },
                    &admin,
                ))
                .await
                .unwrap();
            changes += 1;
        }
    }
    eprintln!("the producer waited after {changes} unread changes");
    // The client reads again: everything arrives, the last change last.
    let mut last = 0;
    while let Ok(Ok(Some(update))) =
        tokio::time::timeout(Duration::from_secs(2), watch.message()).await
    {
        last = update.available;
    }
    let now = admin_client
        .get_product(authed(
            GetProductRequest {
                sku: "sku-1".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        last, now.available,
        "the stream caught up with the last change"
    );
    // The wait ended when the client read again: it is timed.
    let (_, body) = http_get(inventory.admin, "/metrics").await;
    assert!(
        metric_sum(
            &body,
            "grpc_server_stream_backpressure_wait_seconds_count",
            &[("service", INVENTORY)]
        ) >= 1.0,
        "{body}"
    );
}

/// Under `RUST_LOG=warn` the call's span is still recorded for the log
/// lines (its level is info): a warning written inside a call carries the
/// call's request id and trace id like every other line of it, whether or
/// not spans are exported (the subscriber is composed differently then).
#[tokio::test]
async fn a_warning_inside_a_call_has_the_call_s_ids_when_only_warnings_are_logged() {
    warning_in_a_call_has_its_ids(&[("RUST_LOG", "warn")]).await;
}

#[tokio::test]
async fn a_warning_inside_a_call_has_the_call_s_ids_when_spans_are_exported() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    warning_in_a_call_has_its_ids(&[
        ("RUST_LOG", "warn"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
}

/// `line` carries its call's request id and trace id (32 hex digits) in
/// its span.
fn assert_has_the_call_s_ids(line: &serde_json::Value) {
    let span = &line["span"];
    assert!(
        span["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{line}"
    );
    assert!(
        span["trace_id"].as_str().is_some_and(|s| s.len() == 32),
        "{line}"
    );
}

async fn warning_in_a_call_has_its_ids(env: &[(&'static str, &str)]) {
    let stack = Stack::start(Backend::Sqlite, &Spec::everyone(env)).await;
    let users = stack.service(USERS).channel();
    accounts::sign_up(users.clone(), "warned").await;
    let pair = accounts::login(users.clone(), "warned", shop_testkit::PASSWORD).await;
    let mut auth = AuthServiceClient::new(Propagate::new(users));
    let refresh = || RefreshTokenRequest {
        refresh_token: pair.refresh_token.clone(),
    };
    auth.refresh_token(refresh()).await.unwrap();
    let reused = auth.refresh_token(refresh()).await.unwrap_err();
    assert_eq!(reused.code(), tonic::Code::Unauthenticated);

    let reuse_warning = |e: &serde_json::Value| e["level"] == "WARN" && e["family_id"].is_string();
    let users = stack.service(USERS);
    assert!(
        users
            .wait_for_logs(Duration::from_secs(5), 1, reuse_warning)
            .await,
        "no warning about the reused refresh token: {}",
        users.logs()
    );
    let events = users.log_events();
    let warning = events.iter().find(|e| reuse_warning(e)).unwrap();
    assert_eq!(warning["span"]["name"], "grpc.server", "{warning}");
    assert_has_the_call_s_ids(warning);
    assert!(
        events
            .iter()
            .all(|e| e["level"] == "WARN" || e["level"] == "ERROR"),
        "a line below warn was logged under RUST_LOG=warn: {}",
        users.logs()
    );
}

#[tokio::test]
async fn every_request_log_line_has_its_ids_and_no_secret_is_ever_logged() {
    let debug = [("RUST_LOG", "debug")];
    let stack = Stack::start(Backend::Sqlite, &Spec::everyone(&debug)).await;
    let password = "correct horse battery staple 42";
    let users = Propagate::new(stack.service(USERS).channel());
    UserServiceClient::new(users.clone())
        .create_user(CreateUserRequest {
            email: "secret@example.com".into(),
            username: "secretive".into(),
            password: password.into(),
            first_name: "S".into(),
            last_name: "S".into(),
        })
        .await
        .unwrap();
    let mut auth = AuthServiceClient::new(users);
    let pair = auth
        .login(LoginRequest {
            identifier: "secretive".into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let refreshed = auth
        .refresh_token(RefreshTokenRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let me = shop_proto::user::v1::GetUserRequest {
        identifier: Some(
            shop_proto::user::v1::get_user_request::Identifier::Username("secretive".into()),
        ),
    };
    let user = UserServiceClient::new(stack.service(USERS).channel())
        .get_user(authed(me, &refreshed.access_token))
        .await
        .unwrap()
        .into_inner();
    OrderServiceClient::new(stack.service(ORDERS).channel())
        .create_order(authed(order(&user.id, "s-1"), &refreshed.access_token))
        .await
        .unwrap();

    // What is refused must not be logged either: failed logins (a wrong
    // password, an unknown user), a forged token, an expired one signed
    // with the real key, and a refresh token presented a second time.
    let wrong_password = "wrong horse battery staple 99";
    let unknown_password = "nobody's password 77";
    for (identifier, attempt) in [("secretive", wrong_password), ("nobody", unknown_password)] {
        let refused = auth
            .login(LoginRequest {
                identifier: identifier.into(),
                password: attempt.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
    let forged = TokenIssuer::new(
        Arc::new(SigningKey::generate()),
        shop_auth::token::DEFAULT_ISSUER,
        shop_auth::token::DEFAULT_AUDIENCE,
        Duration::from_secs(600),
    )
    .issue(&user.id, &[Role::Customer, Role::Admin])
    .unwrap()
    .token;
    let real_key = SigningKey::load(
        &stack
            .dir
            .path()
            .join("user-service-data/user-service-jwt.pem"),
    )
    .expect("user-service's generated signing key");
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 3600;
    let expired = TokenIssuer::new(
        Arc::new(real_key),
        shop_auth::token::DEFAULT_ISSUER,
        shop_auth::token::DEFAULT_AUDIENCE,
        Duration::from_secs(60),
    )
    .issue_at(&user.id, &[Role::Customer], an_hour_ago)
    .unwrap()
    .token;
    for bad in [&forged, &expired] {
        let me = shop_proto::user::v1::GetUserRequest {
            identifier: Some(shop_proto::user::v1::get_user_request::Identifier::UserId(
                user.id.clone(),
            )),
        };
        let refused = UserServiceClient::new(stack.service(USERS).channel())
            .get_user(authed(me, bad))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = OrderServiceClient::new(stack.service(ORDERS).channel())
            .create_order(authed(order(&user.id, "s-bad"), bad))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
    let reused = auth
        .refresh_token(RefreshTokenRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), tonic::Code::Unauthenticated);

    let logs = format!(
        "{}\n{}",
        stack.service(USERS).logs(),
        stack.service(ORDERS).logs()
    );
    for (what, secret) in [
        ("password", password),
        ("wrong password of a failed login", wrong_password),
        ("password of an unknown user", unknown_password),
        ("bootstrap admin password", shop_testkit::ADMIN_PASSWORD),
        ("forged token", forged.as_str()),
        ("expired token", expired.as_str()),
        ("forged token signature", forged.rsplit('.').next().unwrap()),
        (
            "expired token signature",
            expired.rsplit('.').next().unwrap(),
        ),
        ("access token", pair.access_token.as_str()),
        ("refreshed access token", refreshed.access_token.as_str()),
        ("refresh token", pair.refresh_token.as_str()),
        ("rotated refresh token", refreshed.refresh_token.as_str()),
        // The signature alone is the secret part of a JWT.
        (
            "token signature",
            pair.access_token.rsplit('.').next().unwrap(),
        ),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
    }

    for service in [stack.service(USERS), stack.service(ORDERS)] {
        // A call's access line is written when its response has gone,
        // by the log writer thread: wait for the last ones.
        let is_access = |e: &serde_json::Value| e["target"] == "access";
        let received = |e: &serde_json::Value| e["message"] == "request received";
        let rpcs = service.log_events().iter().filter(|e| received(e)).count();
        service
            .wait_for_logs(Duration::from_secs(5), rpcs, is_access)
            .await;
        let events = service.log_events();
        let in_requests: Vec<_> = events
            .iter()
            .filter(|e| e["span"]["name"] == "grpc.server")
            .collect();
        assert!(in_requests.len() > 5, "{} lines", in_requests.len());
        for event in &in_requests {
            assert_has_the_call_s_ids(event);
        }
        let access: Vec<_> = events.iter().filter(|e| e["target"] == "access").collect();
        let rpcs = events
            .iter()
            .filter(|e| e["message"] == "request received")
            .count();
        assert_eq!(access.len(), rpcs, "one access line per call");
        for line in access {
            for field in ["code", "duration_ms", "peer", "principal"] {
                assert!(
                    !line[field].is_null(),
                    "access line without {field}: {line}"
                );
            }
            // The call's service and method are its span's, once.
            for field in ["rpc.service", "rpc.method"] {
                assert!(
                    line["span"][field].as_str().is_some_and(|v| !v.is_empty()),
                    "access line's span without {field}: {line}"
                );
            }
            assert!(
                line["service"].is_null() && line["method"].is_null(),
                "the access line repeats its span's service or method: {line}"
            );
            assert!(
                line["peer"]
                    .as_str()
                    .is_some_and(|peer| peer.parse::<std::net::SocketAddr>().is_ok()),
                "the peer is the caller's address: {line}"
            );
            // Each field once: the status is the line's `code`, and the
            // span (exported nowhere here) does not repeat it.
            assert!(
                line["span"]["rpc.grpc.status_code"].is_null()
                    && line["span"]["otel.status_code"].is_null(),
                "the span repeats the status: {line}"
            );
        }
    }

    // At inventory-service, the reservation made for the user names the
    // user; the confirmation order-service sends on its own behalf, off
    // the request path, names order-service.
    let inventory = stack.service(INVENTORY);
    let access_of = |method: &'static str| {
        move |e: &serde_json::Value| e["target"] == "access" && e["span"]["rpc.method"] == method
    };
    assert!(
        inventory
            .wait_for_logs(Duration::from_secs(10), 1, access_of("ConfirmReservations"))
            .await,
        "no access line for the confirmation"
    );
    let events = inventory.log_events();
    let principal_of = |method| {
        let line = events
            .iter()
            .find(|e| access_of(method)(e))
            .unwrap_or_else(|| panic!("no access line for {method}"));
        line["principal"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(principal_of("ReserveStock"), user.id);
    assert_eq!(principal_of("ConfirmReservations"), "service:order-service");
}
