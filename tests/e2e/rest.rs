//! REST/JSON on the gRPC port, against the real binaries: the routes of the
//! protos' `google.api.http` options answer JSON under the same auth,
//! deadlines and metrics as native calls, failures come back as
//! `google.rpc.Status` bodies under code.proto's HTTP status, and a server
//! stream comes as newline-delimited JSON that follows the order live.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};
use shop_testkit::{
    ADMIN_EMAIL, ADMIN_PASSWORD, Backend, PASSWORD, Spec, Stack, http_get, metric_sum,
};

use crate::{ORDERS, USERS};

type Http = Client<HttpConnector, Full<Bytes>>;

fn client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> http::request::Builder {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    builder
}

/// One REST call over HTTP/1.1: the status, the headers and the JSON body.
async fn call(
    http: &Http,
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> (u16, HeaderMap, Value) {
    let mut builder = request(addr, method.clone(), path, token, body.clone());
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = http
        .request(builder.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: {status} {e}: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, headers, json)
}

#[tokio::test]
async fn rest_routes_answer_json_under_the_same_auth_deadlines_and_metrics() {
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(USERS).env("FAULT_DELAY", "ListUsers=5s")],
    )
    .await;
    let users = stack.service(USERS).addr;
    let orders = stack.service(ORDERS).addr;
    let http = client();

    // Sign up and log in.
    let sign_up = json!({
        "email": "rita@e2e.test", "username": "rita", "password": PASSWORD,
        "firstName": "Rita", "last_name": "Rest",
    });
    let (status, _, rita) = call(
        &http,
        users,
        Method::POST,
        "/v1/users",
        None,
        Some(sign_up.clone()),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{rita}");
    let rita_id = rita["id"].as_str().unwrap().to_owned();
    assert_eq!(rita["email"], "rita@e2e.test");
    assert_eq!(
        rita["status"], "USER_STATUS_ACTIVE",
        "enums by name: {rita}"
    );
    assert!(rita.get("password").is_none() && rita.get("passwordHash").is_none());
    let (status, _, taken) = call(
        &http,
        users,
        Method::POST,
        "/v1/users",
        None,
        Some(sign_up),
        &[],
    )
    .await;
    assert_eq!((status, taken["code"].as_i64()), (409, Some(6)), "{taken}");

    // Invalid fields: 400 with the field violations as typed details.
    let bad = json!({"email": "not-an-email", "username": "r", "password": "x"});
    let (status, _, invalid) = call(
        &http,
        users,
        Method::POST,
        "/v1/users",
        None,
        Some(bad),
        &[],
    )
    .await;
    assert_eq!(
        (status, invalid["code"].as_i64()),
        (400, Some(3)),
        "{invalid}"
    );
    let violations: Vec<&str> = invalid["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .flat_map(|d| d["fieldViolations"].as_array().unwrap())
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert!(violations.contains(&"email"), "{invalid}");

    let login = json!({"identifier": "rita", "password": PASSWORD});
    let (status, _, tokens) = call(
        &http,
        users,
        Method::POST,
        "/v1/auth/login",
        None,
        Some(login),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let token = tokens["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(tokens["tokenType"], "Bearer");

    // Reads: by path, by query; auth and NOT_FOUND as over gRPC.
    let me_path = format!("/v1/users/{rita_id}");
    let (status, headers, me) =
        call(&http, users, Method::GET, &me_path, Some(&token), None, &[]).await;
    assert_eq!(
        (status, me["id"].as_str()),
        (200, Some(rita_id.as_str())),
        "{me}"
    );
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert!(headers.contains_key("x-request-id"), "{headers:?}");
    let (status, _, looked_up) = call(
        &http,
        users,
        Method::GET,
        "/v1/users:lookup?email=rita%40e2e.test",
        Some(&token),
        None,
        &[],
    )
    .await;
    assert_eq!((status, &looked_up["id"]), (200, &me["id"]), "{looked_up}");
    let (status, headers, anonymous) =
        call(&http, users, Method::GET, &me_path, None, None, &[]).await;
    assert_eq!(
        (status, anonymous["code"].as_i64()),
        (401, Some(16)),
        "{anonymous}"
    );
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    let stranger = format!("/v1/users/{}", uuid::Uuid::now_v7());
    let (status, _, missing) = call(
        &http,
        users,
        Method::GET,
        &stranger,
        Some(&token),
        None,
        &[],
    )
    .await;
    assert_eq!(
        (status, missing["code"].as_i64()),
        (404, Some(5)),
        "{missing}"
    );

    // The caller's deadline (grpc-timeout) bounds the call: ListUsers is
    // made 5 s slow, the caller gives it 300 ms.
    let admin_login = json!({"identifier": ADMIN_EMAIL, "password": ADMIN_PASSWORD});
    let (_, _, admin) = call(
        &http,
        users,
        Method::POST,
        "/v1/auth/login",
        None,
        Some(admin_login),
        &[],
    )
    .await;
    let admin = admin["accessToken"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let (status, _, late) = call(
        &http,
        users,
        Method::GET,
        "/v1/users?pageSize=1",
        Some(&admin),
        None,
        &[("grpc-timeout", "300m")],
    )
    .await;
    assert_eq!((status, late["code"].as_i64()), (504, Some(4)), "{late}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // What matches no route, or no method of its path, is refused before
    // any call, and says why.
    let (status, _, nothing) =
        call(&http, users, Method::GET, "/v1/nothing", None, None, &[]).await;
    assert_eq!(
        (status, nothing["code"].as_i64()),
        (404, Some(5)),
        "{nothing}"
    );
    let (status, headers, method) = call(
        &http,
        users,
        Method::PUT,
        &me_path,
        Some(&token),
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(status, 405, "{method}");
    assert!(headers[header::ALLOW].to_str().unwrap().contains("PATCH"));
    let (status, _, unknown) = call(
        &http,
        users,
        Method::PATCH,
        &me_path,
        Some(&token),
        Some(json!({"colour": "red"})),
        &[],
    )
    .await;
    assert_eq!(
        (status, unknown["code"].as_i64()),
        (400, Some(3)),
        "{unknown}"
    );
    assert!(
        unknown["message"].as_str().unwrap().contains("colour"),
        "{unknown}"
    );

    // Orders: create, read, list, then watch it live while it is cancelled.
    let new_order = json!({
        "userId": rita_id, "currencyCode": "EUR", "requestId": "rest-1",
        "items": [{"productId": "sku-1", "quantity": 3, "unitPriceCents": "499"}],
    });
    let (status, _, order) = call(
        &http,
        orders,
        Method::POST,
        "/v1/orders",
        Some(&token),
        Some(new_order),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["totalCents"], "1497", "int64 as a string: {order}");
    assert_eq!(order["status"], "ORDER_STATUS_PENDING");
    let order_id = order["id"].as_str().unwrap().to_owned();
    let (status, _, got) = call(
        &http,
        orders,
        Method::GET,
        &format!("/v1/orders/{order_id}"),
        Some(&token),
        None,
        &[],
    )
    .await;
    assert_eq!((status, &got), (200, &order));
    let (status, _, page) = call(
        &http,
        orders,
        Method::GET,
        "/v1/orders?pageSize=10&status=ORDER_STATUS_PENDING",
        Some(&token),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["orders"].as_array().unwrap().len(), 1, "{page}");

    let watch = http
        .request(
            request(
                orders,
                Method::GET,
                &format!("/v1/orders/{order_id}:watch"),
                Some(&token),
                None,
            )
            .body(Full::new(Bytes::new()))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    assert_eq!(
        watch.headers()[header::CONTENT_TYPE],
        "application/x-ndjson"
    );
    let mut watch = watch.into_body();
    let mut pending = String::new();
    let mut next_line = async || -> Value {
        loop {
            if let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                return serde_json::from_str(&line).unwrap();
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), watch.frame())
                .await
                .expect("a watch line within 10 s")
                .expect("the stream is open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                pending.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    };
    let first = next_line().await;
    assert_eq!(
        first["result"]["order"]["status"], "ORDER_STATUS_PENDING",
        "{first}"
    );
    let (status, _, cancelled) = call(
        &http,
        orders,
        Method::POST,
        &format!("/v1/orders/{order_id}:cancel"),
        Some(&token),
        Some(json!({"reason": "changed my mind"})),
        &[],
    )
    .await;
    assert_eq!(
        (status, &cancelled["status"]),
        (200, &json!("ORDER_STATUS_CANCELLED"))
    );
    let live = next_line().await;
    assert_eq!(
        live["result"]["order"]["status"], "ORDER_STATUS_CANCELLED",
        "{live}"
    );

    // Each service serves the OpenAPI document of its own routes.
    let (status, _, users_api) =
        call(&http, users, Method::GET, "/openapi.json", None, None, &[]).await;
    assert_eq!((status, &users_api["openapi"]), (200, &json!("3.0.3")));
    assert!(
        users_api["paths"]["/v1/users/{user_id}"]["get"].is_object(),
        "{users_api}"
    );
    assert!(users_api["paths"].get("/v1/orders").is_none());
    let (_, _, orders_api) =
        call(&http, orders, Method::GET, "/openapi.json", None, None, &[]).await;
    assert!(orders_api["paths"]["/v1/orders/{order_id}:cancel"]["post"].is_object());
    assert!(orders_api["paths"].get("/v1/users").is_none());

    // Counted like native calls, under protocol="http"; refusals apart.
    let (_, metrics) = http_get(stack.service(USERS).admin, "/metrics").await;
    for (method, code, count) in [
        ("CreateUser", "OK", 1.0),
        ("CreateUser", "AlreadyExists", 1.0),
        ("CreateUser", "InvalidArgument", 1.0),
        ("GetUser", "OK", 2.0),
        ("GetUser", "Unauthenticated", 1.0),
        ("GetUser", "NotFound", 1.0),
        ("ListUsers", "DeadlineExceeded", 1.0),
    ] {
        let labels = [
            ("grpc_method", method),
            ("grpc_code", code),
            ("protocol", "http"),
        ];
        assert_eq!(
            metric_sum(&metrics, "grpc_server_handled_total", &labels),
            count,
            "{method} {code}\n{metrics}"
        );
    }
    for (reason, count) in [("no_route", 1.0), ("method", 1.0), ("invalid", 1.0)] {
        assert_eq!(
            metric_sum(&metrics, "shop_rest_refused_total", &[("reason", reason)]),
            count,
            "{reason}\n{metrics}"
        );
    }
    let (_, metrics) = http_get(stack.service(ORDERS).admin, "/metrics").await;
    for method in ["CreateOrder", "GetOrder", "ListOrders", "CancelOrder"] {
        let labels = [
            ("grpc_method", method),
            ("grpc_code", "OK"),
            ("protocol", "http"),
        ];
        assert_eq!(
            metric_sum(&metrics, "grpc_server_handled_total", &labels),
            1.0,
            "{method}\n{metrics}"
        );
    }
}
