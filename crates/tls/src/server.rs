//! The server side: `TLS_CERT_FILE`, `TLS_KEY_FILE`, `TLS_CLIENT_CA_FILE`
//! (mutual TLS), `TLS_CLIENT_ALLOWED_NAMES` (which peers), and the accepted
//! connections after their handshake.

use std::{io, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use rustls::{ServerConfig, server::WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};

use crate::{
    files::{certificates, private_key, provider, roots},
    parse_duration,
    pinning::{PinnedNames, allowed_names},
    reload::Reloading,
};

/// Longest a TLS handshake of an accepted connection may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server TLS settings (flattened into every server's configuration).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain the server presents; with TLS_KEY_FILE, turns
    /// TLS on (plaintext when unset).
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of TLS_CERT_FILE.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM CA certificate(s): when set, every client must present a
    /// certificate signed by one of them (mutual TLS).
    #[arg(long, env = "TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// Comma-separated names a client certificate must carry one of (as a
    /// DNS or IP subject alternative name), on top of chaining to
    /// TLS_CLIENT_CA_FILE: pins mTLS to the peers that may call this
    /// service (unset: any certificate of the CA).
    #[arg(
        long,
        env = "TLS_CLIENT_ALLOWED_NAMES",
        value_delimiter = ',',
        requires = "tls_client_ca_file"
    )]
    pub tls_client_allowed_names: Vec<String>,

    /// How often the TLS files are checked for changes (SIGHUP reloads at
    /// once).
    #[arg(long, env = "TLS_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
}

/// Builds the server configuration from the files of `args` (which must
/// name a certificate and key).
pub fn server_config(args: &ServerTlsArgs) -> Result<ServerConfig, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) else {
        return Err("TLS_CERT_FILE and TLS_KEY_FILE are both needed".into());
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &args.tls_client_ca_file {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            let allowed = allowed_names(&args.tls_client_allowed_names)?;
            if allowed.is_empty() {
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_client_cert_verifier(Arc::new(PinnedNames::new(verifier, allowed)))
            }
        }
        None => builder.with_no_client_auth(),
    };
    let chain = certificates(cert)?;
    let leaf = chain[0].clone();
    let mut config = builder
        .with_single_cert(chain, private_key(key)?)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    record_expiry(&leaf);
    Ok(config)
}

/// Sets `grpc_server_tls_certificate_expiry_timestamp_seconds` to when the
/// certificate being served (`leaf`) expires, in Unix seconds: at start and
/// on every reload, for the expiry alert.
fn record_expiry(leaf: &rustls::pki_types::CertificateDer<'_>) {
    match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, certificate)) => {
            let expires = certificate.validity().not_after.timestamp();
            metrics::gauge!("grpc_server_tls_certificate_expiry_timestamp_seconds")
                .set(expires as f64);
        }
        Err(error) => tracing::warn!(%error, "cannot read the served certificate's expiry"),
    }
}

/// The server side: reloading configuration for accepted connections.
pub type ServerTls = Arc<Reloading<ServerConfig>>;

/// Loads the server TLS configuration when `args` asks for TLS.
pub fn server_tls(args: &ServerTlsArgs) -> Result<Option<ServerTls>, String> {
    if args.tls_cert_file.is_none() {
        return Ok(None);
    }
    let files = [
        &args.tls_cert_file,
        &args.tls_key_file,
        &args.tls_client_ca_file,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    let owned = args.clone();
    Reloading::start("server", files, args.tls_reload_interval, move || {
        server_config(&owned)
    })
    .map(Some)
}

/// The connections of `accepted` (each with its peer's address), after a
/// TLS handshake with the current configuration of `tls`. Handshakes run
/// on their own tasks (a slow client does not hold up others) for at most
/// ten seconds; failed ones are logged, counted in
/// `grpc_server_tls_handshake_failures_total{reason="refused"|"timeout"}`
/// and dropped. Accepting stops when the stream is dropped.
pub fn incoming<IO>(
    mut accepted: impl Stream<Item = (IO, SocketAddr)> + Send + Unpin + 'static,
    tls: ServerTls,
) -> ReceiverStream<Result<TlsStream<IO>, io::Error>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = accepted.next() => next,
                () = sender.closed() => return,
            };
            let Some((connection, peer)) = next else {
                return;
            };
            let acceptor = TlsAcceptor::from(tls.current());
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        metrics::counter!("grpc_server_tls_handshake_failures_total", "reason" => "refused")
                            .increment(1);
                        tracing::info!(%peer, %error, "TLS handshake refused");
                    }
                    Err(_) => {
                        metrics::counter!("grpc_server_tls_handshake_failures_total", "reason" => "timeout")
                            .increment(1);
                        tracing::info!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
