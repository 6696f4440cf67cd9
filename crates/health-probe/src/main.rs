//! `shop-health-probe`: a container health check that asks a gRPC server's
//! `grpc.health.v1.Health/Check` and exits 0 when the answer is SERVING,
//! 1 otherwise (with the reason on stderr). Every shop image ships it, so
//! Docker and Kubernetes probes speak the same protocol as load balancers.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Checks grpc.health.v1 on a server; exit code 0 means SERVING.
#[derive(Debug, Parser)]
#[command(name = "shop-health-probe", version, about)]
struct Args {
    /// The server to ask.
    #[arg(
        long,
        env = "HEALTH_PROBE_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    addr: String,

    /// The service to ask about; empty for the server as a whole.
    #[arg(long, env = "HEALTH_PROBE_SERVICE", default_value = "")]
    service: String,

    /// How long to wait for the answer, connection included.
    #[arg(long, env = "HEALTH_PROBE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match probe(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!(
                "shop-health-probe: {} {:?}: {reason}",
                args.addr, args.service
            );
            ExitCode::FAILURE
        }
    }
}

async fn probe(args: &Args) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(args.addr.clone())
        .map_err(|e| format!("bad address: {e}"))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let check = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        match ServingStatus::try_from(answer.get_ref().status) {
            Ok(ServingStatus::Serving) => Ok(()),
            Ok(other) => Err(other.as_str_name().to_owned()),
            Err(_) => Err(format!("unknown status {}", answer.get_ref().status)),
        }
    };
    tokio::time::timeout(args.timeout, check)
        .await
        .map_err(|_| format!("no answer within {:?}", args.timeout))?
}
