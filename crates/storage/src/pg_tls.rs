//! TLS for the tokio-postgres connections (the pipelined reads and the
//! group-commit connection), negotiated as sqlx's pool negotiates it for
//! the same URL, so that one URL means the same protection on every
//! connection a service opens to its database:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable`, `allow` | never | – |
//! | `prefer` (the default) | when the server offers it | not checked |
//! | `require` | always, or no connection | not checked |
//! | `verify-ca` | always, or no connection | chain checked, host name not |
//! | `verify-full` | always, or no connection | chain and host name checked |
//!
//! A chain is checked against the public roots (webpki-roots, as sqlx)
//! and the certificates of `sslrootcert`; `sslcert` with `sslkey` is the
//! client's certificate. Each names a PEM file or holds PEM text (as in
//! sqlx, also `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`).
//! tokio-postgres reads none of these but `sslmode` (and of its values only
//! the first three), so they are taken out of the URL it is given and its
//! mode is set from them. Neither sqlx nor this offers channel binding
//! (SCRAM-SHA-256-PLUS); the password exchange is SCRAM-SHA-256 inside
//! the TLS session.

use std::{
    fmt, io,
    pin::Pin,
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::{
    Config,
    config::SslMode,
    tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream},
};

/// The URL parameters that say how to use TLS (sqlx's spellings).
const MODE: [&str; 2] = ["sslmode", "ssl-mode"];
const ROOT_CERT: [&str; 3] = ["sslrootcert", "ssl-root-cert", "ssl-ca"];
const CLIENT_CERT: [&str; 2] = ["sslcert", "ssl-cert"];
const CLIENT_KEY: [&str; 2] = ["sslkey", "ssl-key"];

/// Where a tokio-postgres connection goes and how it protects itself.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) config: Config,
    /// `None` when the URL turns TLS off.
    pub(crate) tls: Option<MakeRustls>,
}

/// The target of `url` for tokio-postgres, or why there is none: a URL
/// tokio-postgres does not read, or TLS settings that cannot be used.
pub(crate) fn target(url: &str, connect_timeout: Duration) -> Result<Target, String> {
    const NOT_READ: &str = "the URL has options tokio-postgres does not read";
    // sqlx's reading of the mode, with its defaults and aliases.
    let mode = PgConnectOptions::from_str(url)
        .map_err(|_| NOT_READ.to_owned())?
        .get_ssl_mode();
    let (rest, tls_params) = split_tls_params(url);
    let mut config = Config::from_str(&rest).map_err(|_| NOT_READ.to_owned())?;
    config.connect_timeout(connect_timeout);
    let tls = match mode {
        PgSslMode::Disable | PgSslMode::Allow => {
            config.ssl_mode(SslMode::Disable);
            None
        }
        mode => {
            config.ssl_mode(if matches!(mode, PgSslMode::Prefer) {
                SslMode::Prefer
            } else {
                SslMode::Require
            });
            let setting = |names: &[&str], variable: &str| {
                tls_params
                    .iter()
                    .rev()
                    .find(|(key, _)| names.contains(&key.as_str()))
                    .map(|(_, value)| value.clone())
                    .or_else(|| std::env::var(variable).ok())
            };
            let client = match (
                setting(&CLIENT_CERT, "PGSSLCERT"),
                setting(&CLIENT_KEY, "PGSSLKEY"),
            ) {
                (Some(cert), Some(key)) => Some((certificates(&cert)?, private_key(&key)?)),
                (None, None) => None,
                _ => return Err("sslcert and sslkey must be given together".to_owned()),
            };
            let roots = match setting(&ROOT_CERT, "PGSSLROOTCERT") {
                Some(pem) => certificates(&pem)?,
                None => Vec::new(),
            };
            Some(MakeRustls::new(mode, roots, client)?)
        }
    };
    Ok(Target { config, tls })
}

/// `url` without its TLS parameters, and those parameters decoded.
fn split_tls_params(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = form_decoded(key);
        if [&MODE[..], &ROOT_CERT, &CLIENT_CERT, &CLIENT_KEY]
            .iter()
            .any(|names| names.contains(&key.as_str()))
        {
            tls.push((key, form_decoded(value)));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, tls)
}

/// A query string's key or value as sqlx reads it (`+` is a space).
fn form_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The certificates of `pem`: PEM text, or the name of a PEM file.
fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = if pem.starts_with("-----BEGIN") {
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect()
    } else {
        CertificateDer::pem_file_iter(pem)
            .map_err(|e| format!("{pem}: {e}"))?
            .collect()
    };
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(format!("{}: no certificate", shown(pem))),
        Err(e) => Err(format!("{}: {e}", shown(pem))),
    }
}

/// The private key of `pem`: PEM text, or the name of a PEM file.
fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    if pem.starts_with("-----BEGIN") {
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("sslkey: {e}"))
    } else {
        PrivateKeyDer::from_pem_file(pem).map_err(|e| format!("{pem}: {e}"))
    }
}

/// A file name as it is, PEM text as "the PEM text" (never in a log).
fn shown(pem: &str) -> &str {
    if pem.starts_with("-----BEGIN") {
        "the PEM text"
    } else {
        pem
    }
}

/// Opens TLS sessions for tokio-postgres with rustls (ring, as everywhere
/// in shop).
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MakeRustls")
    }
}

impl MakeRustls {
    fn new(
        mode: PgSslMode,
        extra_roots: Vec<CertificateDer<'static>>,
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<MakeRustls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
                let mut roots: RootCertStore =
                    webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect();
                for cert in extra_roots {
                    roots.add(cert).map_err(|e| format!("sslrootcert: {e}"))?;
                }
                let chain =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| format!("sslrootcert: {e}"))?;
                if matches!(mode, PgSslMode::VerifyFull) {
                    chain
                } else {
                    Arc::new(AnyHostName(chain))
                }
            }
            _ => Arc::new(AnyCertificate(provider.clone())),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match client {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("sslcert, sslkey: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        Ok(RustlsConnect {
            config: Arc::clone(&self.config),
            // Empty for a Unix socket, over which the server refuses TLS
            // before a name would be needed.
            name: ServerName::try_from(domain.to_owned()).ok(),
        })
    }
}

/// One TLS session about to start.
pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: Option<ServerName<'static>>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<RustlsStream<S>>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the host is not a name or address TLS can check",
                )
            })?;
            let session = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(session))
        })
    }
}

/// A connection's stream inside its TLS session.
pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// `prefer` and `require`: any certificate, as libpq and sqlx accept
/// without `verify-*` (the session is encrypted, its peer not checked);
/// the handshake's signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root, for whatever host
/// name the certificate names.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url_and_decoded() {
        let (rest, tls) = split_tls_params(
            "postgres://u@db:5432/shop?sslmode=verify-full&application_name=a%20b\
             &ssl-root-cert=%2Fetc%2Fca+1.pem&options=-c%20x%3D1",
        );
        assert_eq!(
            rest,
            "postgres://u@db:5432/shop?application_name=a%20b&options=-c%20x%3D1"
        );
        assert_eq!(
            tls,
            [
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("ssl-root-cert".to_owned(), "/etc/ca 1.pem".to_owned()),
            ]
        );
        let (rest, tls) = split_tls_params("postgres://u@db/shop?sslmode=require");
        assert_eq!(rest, "postgres://u@db/shop");
        assert_eq!(tls.len(), 1);
    }

    #[test]
    fn the_mode_follows_sqlx_and_tokio_postgres_is_told_the_nearest() {
        let mode = |url: &str| {
            let target = target(url, Duration::from_secs(1)).unwrap();
            (target.config.get_ssl_mode(), target.tls.is_some())
        };
        assert_eq!(
            mode("postgres://u@db/shop?sslmode=disable"),
            (SslMode::Disable, false)
        );
        assert_eq!(
            mode("postgres://u@db/shop?sslmode=allow"),
            (SslMode::Disable, false)
        );
        assert_eq!(
            mode("postgres://u@db/shop?sslmode=require"),
            (SslMode::Require, true)
        );
        assert_eq!(
            mode("postgres://u@db/shop?sslmode=verify-full"),
            (SslMode::Require, true)
        );
        assert_eq!(
            mode("postgres://u@db/shop?sslmode=verify-ca"),
            (SslMode::Require, true)
        );
        if std::env::var_os("PGSSLMODE").is_none() {
            assert_eq!(mode("postgres://u@db/shop"), (SslMode::Prefer, true));
        }
    }

    /// The test server's URL (which offers TLS, see scripts/test.sh) with
    /// `host` for the TLS name, still reaching its address, and `params`.
    fn test_server(host: &str, params: &str) -> String {
        let url = shop_testkit::postgres_url();
        let rest = url.split_once('@').expect("user@host in the URL").1;
        let (address, database) = rest.split_once('/').expect("/database in the URL");
        let (ip, port) = address.rsplit_once(':').expect("host:port in the URL");
        format!("postgres://postgres@{host}:{port}/{database}?hostaddr={ip}&{params}")
    }

    fn ca() -> String {
        std::env::var("SHOP_TEST_POSTGRES_CA").expect(
            "SHOP_TEST_POSTGRES_CA names the CA of the test server's certificate \
             (scripts/test.sh sets it)",
        )
    }

    /// Whether a connection to `url` opens, and then whether it uses TLS.
    async fn connect(url: &str) -> Result<bool, tokio_postgres::Error> {
        let target = target(url, Duration::from_secs(5)).unwrap();
        let connection =
            crate::pg_read::Connection::open(&target, crate::pg_read::Senders::Many, "test")
                .await?;
        let row = connection
            .client()
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(row.get("ssl"))
    }

    #[tokio::test]
    async fn each_sslmode_protects_as_libpq_and_sqlx_do_on_postgres_with_tls() {
        let ca = ca();
        // The certificate names localhost and 127.0.0.1, not this host.
        let named = |params: &str| test_server("localhost", params);
        let misnamed = |params: &str| test_server("db.invalid", params);

        assert!(!connect(&named("sslmode=disable")).await.unwrap());
        assert!(connect(&named("sslmode=prefer")).await.unwrap());
        // Not checked: no CA needed, any name.
        assert!(connect(&misnamed("sslmode=require")).await.unwrap());
        // The chain is checked, the name is not.
        assert!(
            connect(&misnamed(&format!("sslmode=verify-ca&sslrootcert={ca}")))
                .await
                .unwrap()
        );
        // Both are checked.
        assert!(
            connect(&named(&format!("sslmode=verify-full&sslrootcert={ca}")))
                .await
                .unwrap()
        );
        let wrong_name = connect(&misnamed(&format!("sslmode=verify-full&sslrootcert={ca}")))
            .await
            .expect_err("verify-full refuses a certificate for another name");
        assert!(
            format!("{wrong_name:?}").contains("NotValidForName"),
            "{wrong_name:?}"
        );
        let unknown_ca = connect(&named("sslmode=verify-ca"))
            .await
            .expect_err("verify-ca refuses a certificate no trusted root signed");
        assert!(
            format!("{unknown_ca:?}").contains("UnknownIssuer"),
            "{unknown_ca:?}"
        );
        // The CA as PEM text rather than a file's name.
        let pem = std::fs::read_to_string(&ca).unwrap();
        let inline: String =
            percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        assert!(
            connect(&named(&format!("sslmode=verify-full&sslrootcert={inline}")))
                .await
                .unwrap()
        );
    }

    #[test]
    fn unusable_tls_settings_are_refused_with_the_reason() {
        let why = target(
            "postgres://u@db/shop?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(why.contains("/nonexistent/ca.pem"), "{why}");
        let why = target(
            "postgres://u@db/shop?sslmode=require&sslcert=/nonexistent/c.pem",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(why.contains("together"), "{why}");
    }
}
