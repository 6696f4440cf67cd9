//! Opening one HTTP/2 connection to one endpoint, with the configured
//! connect timeout and keepalive, over TCP or TLS, each stream watched
//! ([`crate::watched`]) so that the balancer hears when it ends.

use std::{io, time::Duration};

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use shop_tls::ClientTls;

use crate::watched::{ConnectionWatch, Watched};

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
            .http2_keep_alive_interval(self.settings.keepalive_interval)
            .keep_alive_timeout(self.settings.keepalive_timeout)
            .keep_alive_while_idle(true)
    }

    /// A channel that connects on first use; `watch` hears of each of its
    /// connections.
    pub fn lazy(&self, uri: &Uri, watch: ConnectionWatch) -> Channel {
        let endpoint = self.endpoint(uri);
        match &self.tls {
            None => endpoint.connect_with_connector_lazy(tcp_connector(watch)),
            Some(tls) => endpoint.connect_with_connector_lazy(tls_connector(tls.clone(), watch)),
        }
    }

    /// A connected channel, or why it could not connect; `watch` hears of
    /// each of its connections.
    pub async fn connect(
        &self,
        uri: &Uri,
        watch: ConnectionWatch,
    ) -> Result<Channel, tonic::transport::Error> {
        let endpoint = self.endpoint(uri);
        match &self.tls {
            None => endpoint.connect_with_connector(tcp_connector(watch)).await,
            Some(tls) => {
                endpoint
                    .connect_with_connector(tls_connector(tls.clone(), watch))
                    .await
            }
        }
    }
}

/// Plain TCP to the URI's host and port, without Nagle's delay.
fn tcp_connector(
    watch: ConnectionWatch,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<Watched<TcpStream>>,
    Error = io::Error,
    Future = impl Send,
> + Send
+ Clone
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let watch = watch.clone();
        async move {
            let (host, port) = shop_tls::client::host_and_port(&uri, 80)?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(watch.wrap(tcp)))
        }
    })
}

fn tls_connector(
    tls: ClientTls,
    watch: ConnectionWatch,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<Watched<tokio_rustls::client::TlsStream<TcpStream>>>,
    Error = io::Error,
    Future = impl Send,
> + Send
+ Clone
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        let watch = watch.clone();
        async move {
            let stream = tls.connect(uri).await?.into_inner();
            Ok(TokioIo::new(watch.wrap(stream)))
        }
    })
}
