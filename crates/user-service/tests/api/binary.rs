//! The `user-service` binary itself: starts with no flags, stops cleanly on
//! SIGTERM, and refuses bad configuration with exit code 64 and one line.

use std::{process::Stdio, time::Duration};

use tokio::process::Command;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const BIN: &str = env!("CARGO_BIN_EXE_user-service");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_until_serving(port: u16, child: &mut tokio::process::Child) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
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
        if let Some(status) = child.try_wait().unwrap() {
            panic!("user-service exited during start-up: {status}");
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
    let port = free_port();
    // Only the port is set, so that parallel tests do not collide on 50051;
    // everything else is the default: SQLite and a generated key in ./data.
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .env("GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("BCRYPT_COST", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until_serving(port, &mut child).await;
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
}
