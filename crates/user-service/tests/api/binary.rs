//! The `user-service` binary itself: starts with no flags, stops cleanly on
//! SIGTERM, and refuses bad configuration with exit code 64 and one line.

use std::{process::Stdio, time::Duration};

use tokio::process::Command;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const BIN: &str = env!("CARGO_BIN_EXE_user-service");

type LogLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Reads the binary's JSON log lines until the "serving" one and returns
/// the gRPC address it bound, and the lines that follow.
async fn serving_address(child: &mut tokio::process::Child) -> (String, LogLines) {
    use tokio::io::AsyncBufReadExt as _;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let deadline = Duration::from_secs(30);
    let addr = tokio::time::timeout(deadline, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == "serving" {
                return event["grpc"].as_str().expect("grpc address").to_owned();
            }
        }
        panic!("user-service exited before serving");
    })
    .await
    .expect("serving within 30 s");
    (addr, lines)
}

async fn wait_until_serving(addr: &str) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        if matches!(&answer, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not serving after 30 s: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn starts_with_no_flags_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Only the ports are set (0: the OS picks, so that parallel tests do
    // not collide on 50051); everything else is the default: SQLite and a
    // generated key in ./data. The binary binds the port itself and logs
    // which one it got.
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .env("GRPC_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("BCRYPT_COST", "4")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (addr, mut lines) = serving_address(&mut child).await;
    wait_until_serving(&addr).await;
    assert!(dir.path().join("data/users.db").exists());
    assert!(dir.path().join("data/user-service-jwt.pem").exists());

    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the grace period after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // The log writer, which holds lines for LOG_FLUSH_DELAY (10 ms by
    // default), wrote out everything before the process exited: its
    // very last line, and the access line of the health checks above.
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push(serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default());
    }
    assert!(
        rest.iter().any(|e| e["target"] == "access"),
        "no access line after serving: {rest:?}"
    );
    let last = rest.last().expect("lines after serving");
    assert_eq!(last["message"], "stopped", "{rest:?}");
}

async fn config_error(envs: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .envs(envs.iter().copied())
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    stderr
}

#[tokio::test]
async fn bad_settings_exit_64_with_one_line_naming_them() {
    let stderr = config_error(&[("BCRYPT_COST", "3")]).await;
    assert!(stderr.contains("BCRYPT_COST"), "{stderr}");

    let stderr = config_error(&[
        ("GRPC_ADDR", "127.0.0.1:0"),
        ("ADMIN_ADDR", "127.0.0.1:0"),
        ("JWT_PRIVATE_KEY_FILE", "/nonexistent/key.pem"),
    ])
    .await;
    assert!(stderr.contains("JWT_PRIVATE_KEY_FILE"), "{stderr}");

    let stderr = config_error(&[
        ("GRPC_ADDR", "127.0.0.1:0"),
        ("ADMIN_ADDR", "127.0.0.1:0"),
        ("BOOTSTRAP_ADMIN_EMAIL", "not-an-email"),
        ("BOOTSTRAP_ADMIN_PASSWORD", "long enough password"),
    ])
    .await;
    assert!(stderr.contains("BOOTSTRAP_ADMIN_EMAIL"), "{stderr}");

    // Socket activation hands in two sockets, gRPC then admin.
    let stderr = config_error(&[("LISTEN_FDS", "1")]).await;
    assert!(stderr.contains("LISTEN_FDS"), "{stderr}");
}
