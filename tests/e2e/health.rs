//! Health and lifecycle with the real binaries: NOT_SERVING while the
//! database is unreachable and back, and a SIGTERM under steady load where
//! no accepted call fails and the exit is within the grace period.

use std::time::{Duration, Instant};

use shop_core::context::Propagate;
use shop_proto::user::v1::{
    GetUserRequest, get_user_request::Identifier, user_service_client::UserServiceClient,
};
use shop_testkit::{
    Backend, Service, Spec, Stack, TcpProxy, authed, fresh_postgres_database, http_get,
    stack::base_env,
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{USERS, customer};

async fn serving(service: &Service) -> Option<i32> {
    HealthClient::new(service.channel())
        .check(HealthCheckRequest {
            service: "shop.user.v1.UserService".into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

async fn wait_for_status(service: &Service, want: ServingStatus, within: Duration) {
    let deadline = Instant::now() + within;
    while serving(service).await != Some(want as i32) {
        assert!(Instant::now() < deadline, "not {want:?} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unreachable_postgres_turns_health_not_serving_and_back() {
    let database = fresh_postgres_database("e2e_health").await;
    // Route the service's database connections through a switchable proxy.
    let (host_port, _database_name) = database
        .trim_start_matches("postgres://")
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .expect("postgres://user@host:port/db");
    let target = host_port.parse().expect("host:port");
    let proxy = TcpProxy::start(target).await;
    let through_proxy = database.replace(host_port, &proxy.addr.to_string());

    let dir = tempfile::tempdir().unwrap();
    let env = base_env(through_proxy, &dir.path().join("data"));
    let users = Service::start(USERS, dir.path(), &env).await;
    assert_eq!(http_get(users.admin, "/readyz").await.0, 200);

    proxy.set_enabled(false);
    wait_for_status(&users, ServingStatus::NotServing, Duration::from_secs(10)).await;
    assert_eq!(http_get(users.admin, "/readyz").await.0, 503);
    assert_eq!(
        http_get(users.admin, "/healthz").await.0,
        200,
        "alive, just not ready"
    );

    proxy.set_enabled(true);
    wait_for_status(&users, ServingStatus::Serving, Duration::from_secs(10)).await;
    assert_eq!(http_get(users.admin, "/readyz").await.0, 200);
}

#[tokio::test]
async fn sigterm_under_load_fails_no_accepted_call_and_exits_in_time() {
    let grace = Duration::from_secs(5);
    let mut stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(USERS).envs(&[("FAULT_DELAY", "GetUser=100ms"), ("SHUTDOWN_GRACE", "5s")])],
    )
    .await;
    let (user, token) = customer(&stack, "loaded").await;
    let client = UserServiceClient::new(Propagate::new(stack.service(USERS).channel()));

    // Steady load: 16 callers in a loop until their calls start failing.
    let load: Vec<_> = (0..16)
        .map(|_| {
            let mut client = client.clone();
            let token = token.clone();
            let id = user.id.clone();
            tokio::spawn(async move {
                let mut ok = 0u32;
                loop {
                    let request = authed(
                        GetUserRequest {
                            identifier: Some(Identifier::UserId(id.clone())),
                        },
                        &token,
                    );
                    match client.get_user(request).await {
                        Ok(_) => ok += 1,
                        Err(status) => return (ok, status.code()),
                    }
                }
            })
        })
        .collect();
    // The load is running: the server has answered a good number of calls.
    let running = stack
        .service(USERS)
        .wait_for_logs(Duration::from_secs(10), 32, |e| {
            e["target"] == "access" && e["span"]["rpc.method"] == "GetUser"
        })
        .await;
    assert!(running, "the load never got going");

    let started = Instant::now();
    let exit = stack
        .service_mut(USERS)
        .terminate(grace + Duration::from_secs(2))
        .await;
    let took = started.elapsed();
    assert!(exit.success(), "exit status {exit}");
    assert!(took <= grace, "exited after {took:?}, grace {grace:?}");

    let mut succeeded = 0usize;
    let mut failures = Vec::new();
    for caller in load {
        let (ok, failure) = caller.await.unwrap();
        succeeded += ok as usize;
        failures.push(failure);
    }
    assert!(succeeded > 16, "the load ran ({succeeded} calls)");

    // A drain, not an abrupt exit: every GetUser the server received (the
    // context layer logs each at debug) was answered (one access line
    // each, written when the call ends), OK, and the answer reached its
    // caller.
    let events = stack.service(USERS).log_events();
    let received = events
        .iter()
        .filter(|e| {
            e["message"] == "request received"
                && e["rpc.method"] == "/shop.user.v1.UserService/GetUser"
        })
        .count();
    let answered: Vec<_> = events
        .iter()
        .filter(|e| e["target"] == "access" && e["span"]["rpc.method"] == "GetUser")
        .collect();
    assert_eq!(
        received,
        answered.len(),
        "calls received and calls answered differ: cut off, not drained"
    );
    let failed: Vec<_> = answered.iter().filter(|e| e["code"] != "OK").collect();
    assert!(failed.is_empty(), "accepted calls failed: {failed:?}");
    assert_eq!(
        succeeded,
        answered.len(),
        "every answered call reached its caller, and only those succeeded"
    );
    // Each caller stopped at its first failure. The server received no
    // call it did not answer, so every one of those 16 failed calls is one
    // it never took: the connection went away or the port was closed
    // (UNAVAILABLE, or CANCELLED when the stream was cut while being
    // sent), never an application error.
    assert_eq!(failures.len(), 16);
    assert!(
        failures
            .iter()
            .all(|code| matches!(code, Code::Unavailable | Code::Cancelled)),
        "callers saw {failures:?}"
    );
}
