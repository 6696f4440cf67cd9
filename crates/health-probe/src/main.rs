//! `shop-health-probe`: a container health check that asks a gRPC server's
//! `grpc.health.v1.Health/Check` and exits 0 when the answer is SERVING,
//! 1 otherwise (with the reason on stderr). Every shop image ships it, so
//! Docker and Kubernetes probes speak the same protocol as load balancers.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
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

    /// PEM CA certificate the server's certificate must chain to; turns
    /// TLS on (use an https:// address).
    #[arg(long, env = "HEALTH_PROBE_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,

    /// PEM client certificate, for servers that require one (mTLS).
    #[arg(long, env = "HEALTH_PROBE_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,

    /// PEM private key of the client certificate.
    #[arg(long, env = "HEALTH_PROBE_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,

    /// Name the server's certificate must carry (default: the address's
    /// host).
    #[arg(long, env = "HEALTH_PROBE_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
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

/// tonic's TLS settings from the `--tls-*` flags, when TLS is asked for.
fn tls(args: &Args) -> Result<Option<ClientTlsConfig>, String> {
    let Some(ca) = &args.tls_ca_file else {
        return Ok(None);
    };
    let read = |path: &PathBuf| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(name) = &args.tls_server_name {
        config = config.domain_name(name.clone());
    }
    Ok(Some(config))
}

async fn probe(args: &Args) -> Result<(), String> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(args.addr.clone())
        .map_err(|e| format!("bad address: {e}"))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    if let Some(tls) = tls(args)? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
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
