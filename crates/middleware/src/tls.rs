//! TLS and mutual TLS for servers and inter-service clients, configured by
//! file paths and reloaded without a restart.
//!
//! - [`ServerTlsArgs`] (every server): `TLS_CERT_FILE` + `TLS_KEY_FILE`
//!   turn TLS on; `TLS_CLIENT_CA_FILE` also requires every client to
//!   present a certificate signed by that CA (mTLS).
//! - [`ClientTlsArgs`] (every outgoing channel): `CLIENT_TLS_CA_FILE` turns
//!   TLS on and is the only CA server certificates are checked against,
//!   with the target's host name (or `CLIENT_TLS_SERVER_NAME`);
//!   `CLIENT_TLS_CERT_FILE` + `CLIENT_TLS_KEY_FILE` are presented to servers
//!   that ask (mTLS).
//!
//! Rotation: the files are checked every `TLS_RELOAD_INTERVAL` (and at
//! once on SIGHUP); when one changed, the configuration is rebuilt and new
//! connections use it. Connections already open keep theirs. A set of files
//! that does not load (half-written, key and certificate not matching) is
//! logged and the previous configuration stays in use.
//!
//! rustls with the ring provider only; ALPN `h2`.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, SystemTime},
};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

/// Longest a TLS handshake of an accepted connection may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// Server TLS settings (flattened into [`crate::server::ServerArgs`]).
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

    /// How often the TLS files are checked for changes (SIGHUP reloads at
    /// once).
    #[arg(long, env = "TLS_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
}

/// Client TLS settings (flattened into [`crate::client::ClientArgs`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificate(s) that server certificates must chain to; turns
    /// TLS on for outgoing channels (plaintext when unset).
    #[arg(long, env = "CLIENT_TLS_CA_FILE")]
    pub client_tls_ca_file: Option<PathBuf>,

    /// PEM certificate chain presented to servers that require one (mTLS).
    #[arg(long, env = "CLIENT_TLS_CERT_FILE", requires = "client_tls_key_file")]
    pub client_tls_cert_file: Option<PathBuf>,

    /// PEM private key of CLIENT_TLS_CERT_FILE.
    #[arg(long, env = "CLIENT_TLS_KEY_FILE", requires = "client_tls_cert_file")]
    pub client_tls_key_file: Option<PathBuf>,

    /// Name the server certificate must carry, when it is not the target's
    /// host (for instance when the target is an IP address list).
    #[arg(long, env = "CLIENT_TLS_SERVER_NAME")]
    pub client_tls_server_name: Option<String>,

    /// How often the client TLS files are checked for changes (SIGHUP
    /// reloads at once).
    #[arg(long, env = "CLIENT_TLS_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub client_tls_reload_interval: Duration,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
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
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Builds the client configuration from the files of `args` (which must
/// name a CA).
pub fn client_config(args: &ClientTlsArgs) -> Result<ClientConfig, String> {
    let Some(ca) = &args.client_tls_ca_file else {
        return Err("CLIENT_TLS_CA_FILE is needed".into());
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca)?);
    let mut config = match (&args.client_tls_cert_file, &args.client_tls_key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The files' modification times and sizes, to notice a change.
fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

type Build<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// A configuration built from files, rebuilt when they change.
pub struct Reloading<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    build: Build<T>,
    current: RwLock<Arc<T>>,
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the configuration now (an error is a configuration error),
    /// and watches `files` every `interval` and on SIGHUP, on a background
    /// task that ends with the last handle.
    pub fn start(
        what: &'static str,
        files: Vec<PathBuf>,
        interval: Duration,
        build: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Arc<Reloading<T>>, String> {
        let stamped = stamps(&files);
        let config = build()?;
        let reloading = Arc::new(Reloading {
            what,
            files,
            build: Box::new(build),
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamped),
        });
        tokio::spawn(watch(Arc::downgrade(&reloading), interval));
        Ok(reloading)
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.current.read().expect("tls config lock"))
    }

    /// Rebuilds from the files; on failure keeps the current configuration.
    pub fn reload(&self, reason: &str) {
        let stamped = stamps(&self.files);
        match (self.build)() {
            Ok(config) => {
                *self.current.write().expect("tls config lock") = Arc::new(config);
                *self.stamps.lock().expect("stamps lock") = stamped;
                tracing::info!(what = self.what, reason, "TLS configuration reloaded");
            }
            Err(error) => tracing::error!(
                what = self.what,
                reason,
                %error,
                "TLS files do not load; keeping the current configuration"
            ),
        }
    }

    fn changed(&self) -> bool {
        *self.stamps.lock().expect("stamps lock") != stamps(&self.files)
    }
}

async fn watch<T: Send + Sync + 'static>(reloading: Weak<Reloading<T>>, interval: Duration) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let reason = tokio::select! {
            _ = tokio::time::sleep(interval) => "files changed",
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
        };
        #[cfg(not(unix))]
        let reason = {
            tokio::time::sleep(interval).await;
            "files changed"
        };
        let Some(reloading) = reloading.upgrade() else {
            return;
        };
        if reason == "SIGHUP" || reloading.changed() {
            reloading.reload(reason);
        }
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

/// The accepted connections of `listener`, after a TLS handshake with the
/// current configuration of `tls`. Handshakes run on their own tasks (a
/// slow client does not hold up others); failed ones are logged and
/// dropped. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%peer, %error, "TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

/// The client side: reloading configuration and the server name to check.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<Reloading<ClientConfig>>,
    server_name: Option<ServerName<'static>>,
}

impl ClientTls {
    /// Loads the client TLS configuration when `args` asks for TLS;
    /// `target_host` is the name server certificates must carry unless
    /// `CLIENT_TLS_SERVER_NAME` says otherwise (None: each endpoint's own
    /// host).
    pub fn load(
        args: &ClientTlsArgs,
        target_host: Option<String>,
    ) -> Result<Option<ClientTls>, String> {
        if args.client_tls_ca_file.is_none() {
            return Ok(None);
        }
        let name = args.client_tls_server_name.clone().or(target_host);
        let server_name = name
            .map(|n| ServerName::try_from(n.clone()).map_err(|e| format!("server name {n:?}: {e}")))
            .transpose()?;
        let files = [
            &args.client_tls_ca_file,
            &args.client_tls_cert_file,
            &args.client_tls_key_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        let owned = args.clone();
        let config = Reloading::start(
            "client",
            files,
            args.client_tls_reload_interval,
            move || client_config(&owned),
        )?;
        Ok(Some(ClientTls {
            config,
            server_name,
        }))
    }

    /// Opens a TLS connection to `uri` (its host and port), for tonic's
    /// `connect_with_connector`.
    pub async fn connect(
        &self,
        uri: Uri,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, io::Error> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        };
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(self.config.current())
            .connect(server_name, tcp)
            .await?;
        Ok(TokioIo::new(tls))
    }
}
