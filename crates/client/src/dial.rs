//! Opening one HTTP/2 connection to one endpoint, with the configured
//! connect timeout and keepalive, over TCP or TLS, each stream watched
//! ([`crate::watched`]) so that the balancer hears when it ends.

use std::{io, sync::Arc, time::Duration};

use http::Uri;
use tokio::net::TcpStream;

use shop_tls::ClientTls;

use crate::{
    connection::{self, Connection, Connector, Io},
    watched::ConnectionWatch,
};

/// Connection settings shared by every endpoint of a client.
#[derive(Debug, Clone, Copy)]
pub struct DialSettings {
    /// Longest wait for TCP (and TLS) to be established.
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval.
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

    /// `scheme://authority` of `uri`: https over TLS, http otherwise.
    fn origin(&self, uri: &Uri) -> Uri {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Uri::builder()
            .scheme(scheme)
            .authority(uri.authority().map_or("", |a| a.as_str()))
            .path_and_query("/")
            .build()
            .unwrap_or_else(|_| uri.clone())
    }

    /// Opens watched byte streams to `uri`, over TLS when configured.
    fn connector(&self, uri: &Uri, watch: ConnectionWatch) -> Connector {
        let uri = uri.clone();
        match self.tls.clone() {
            None => Arc::new(move || {
                let (uri, watch) = (uri.clone(), watch.clone());
                Box::pin(async move { Ok(Box::new(watch.wrap(tcp(&uri).await?)) as Box<dyn Io>) })
            }),
            Some(tls) => Arc::new(move || {
                let (uri, watch, tls) = (uri.clone(), watch.clone(), tls.clone());
                Box::pin(async move {
                    let stream = tls.connect(uri).await?.into_inner();
                    Ok(Box::new(watch.wrap(stream)) as Box<dyn Io>)
                })
            }),
        }
    }

    /// A connection made on first use; `watch` hears of each of its byte
    /// streams.
    pub fn lazy(&self, uri: &Uri, watch: ConnectionWatch) -> Connection {
        Connection::lazy(self.origin(uri), self.connector(uri, watch), self.settings)
    }

    /// A connection made now, or why it could not be; `watch` hears of
    /// each of its byte streams.
    pub async fn connect(
        &self,
        uri: &Uri,
        watch: ConnectionWatch,
    ) -> Result<Connection, connection::Error> {
        Connection::connect(self.origin(uri), self.connector(uri, watch), self.settings).await
    }
}

/// Plain TCP to `host:port` (in `uri`, port 80 when absent), without
/// Nagle's delay: the connector of tools that need no TLS or watch.
pub fn tcp_connector(uri: Uri) -> Connector {
    Arc::new(move || {
        let uri = uri.clone();
        Box::pin(async move { Ok(Box::new(tcp(&uri).await?) as Box<dyn Io>) })
    })
}

async fn tcp(uri: &Uri) -> io::Result<TcpStream> {
    let (host, port) = shop_tls::client::host_and_port(uri, 80)?;
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}
