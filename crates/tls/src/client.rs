//! The client side: `CLIENT_TLS_CA_FILE` (the only CA server certificates
//! are checked against), `CLIENT_TLS_CERT_FILE` + `CLIENT_TLS_KEY_FILE`
//! (presented to servers that ask), and the TLS connector of a channel.

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{
    files::{certificates, private_key, provider, roots},
    parse_duration,
    reload::Reloading,
};

/// Client TLS settings (flattened into every outgoing channel's settings).
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
        let (host, port) = host_and_port(&uri, 443)?;
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

/// The host (an IPv6 address without its brackets) and port of `uri`,
/// `default_port` when it names none: what to open a TCP connection to.
pub fn host_and_port(uri: &Uri, default_port: u16) -> Result<(String, u16), io::Error> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(default_port)))
}
