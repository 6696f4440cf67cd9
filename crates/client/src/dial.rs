//! Opening one HTTP/2 connection to one endpoint, with the configured
//! connect timeout and keepalive.

use std::time::Duration;

use http::Uri;
use tonic::transport::{Channel, Endpoint};

use shop_tls::ClientTls;

/// Connection settings shared by every endpoint of a client.
#[derive(Debug, Clone, Copy)]
pub struct DialSettings {
    /// Longest wait for TCP (and TLS) to be established.
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval on an idle connection.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
}

/// Builds connections to endpoints, over TLS when `tls` is set.
#[derive(Clone)]
pub struct Dialer {
    settings: DialSettings,
    tls: Option<ClientTls>,
}

impl Dialer {
    /// A dialer with `settings`.
    pub fn new(settings: DialSettings, tls: Option<ClientTls>) -> Dialer {
        Dialer { settings, tls }
    }

    fn endpoint(&self, uri: &Uri) -> Endpoint {
        // TLS is ours (reloadable), not tonic's: tonic sees plain http.
        let plain = Uri::builder()
            .scheme("http")
            .authority(uri.authority().map_or("", |a| a.as_str()))
            .path_and_query("/")
            .build()
            .unwrap_or_else(|_| uri.clone());
        Endpoint::from(plain)
            .connect_timeout(self.settings.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.settings.keepalive_interval)
            .keep_alive_timeout(self.settings.keepalive_timeout)
            .keep_alive_while_idle(true)
    }

    /// A channel that connects on first use.
    pub fn lazy(&self, uri: &Uri) -> Channel {
        match &self.tls {
            None => self.endpoint(uri).connect_lazy(),
            Some(tls) => self
                .endpoint(uri)
                .connect_with_connector_lazy(tls_connector(tls.clone())),
        }
    }

    /// A connected channel, or why it could not connect.
    pub async fn connect(&self, uri: &Uri) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            None => self.endpoint(uri).connect().await,
            Some(tls) => {
                self.endpoint(uri)
                    .connect_with_connector(tls_connector(tls.clone()))
                    .await
            }
        }
    }
}

fn tls_connector(
    tls: ClientTls,
) -> impl tower::Service<
    Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
+ Clone
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move { tls.connect(uri).await }
    })
}
