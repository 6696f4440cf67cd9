//! Waiting for a server through `grpc.health.v1` instead of sleeping.

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Polls `grpc.health.v1.Health/Check` for `service` on `channel` until it
/// answers SERVING, for at most `within`. `still_starting` is asked between
/// polls and returns an error when the server died, to fail fast with it.
///
/// # Panics
/// When the server does not serve in time or `still_starting` fails.
pub async fn wait_until_serving(
    channel: Channel,
    service: &str,
    within: Duration,
    mut still_starting: impl FnMut() -> Result<(), String>,
) {
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await;
        if matches!(&answer, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32) {
            return;
        }
        if let Err(why) = still_starting() {
            panic!("{service} is not starting: {why}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service} not serving after {within:?}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
