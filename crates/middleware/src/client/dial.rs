//! Opening one HTTP/2 connection to one endpoint, with the configured
//! connect timeout and keepalive.

use std::time::Duration;

use http::Uri;
use tonic::transport::{Channel, Endpoint};

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

/// Builds connections to endpoints.
#[derive(Clone)]
pub struct Dialer {
    settings: DialSettings,
}

impl Dialer {
    /// A dialer with `settings`.
    pub fn new(settings: DialSettings) -> Dialer {
        Dialer { settings }
    }

    fn endpoint(&self, uri: &Uri) -> Endpoint {
        Endpoint::from(uri.clone())
            .connect_timeout(self.settings.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.settings.keepalive_interval)
            .keep_alive_timeout(self.settings.keepalive_timeout)
            .keep_alive_while_idle(true)
    }

    /// A channel that connects on first use.
    pub fn lazy(&self, uri: &Uri) -> Channel {
        self.endpoint(uri).connect_lazy()
    }

    /// A connected channel, or why it could not connect.
    pub async fn connect(&self, uri: &Uri) -> Result<Channel, tonic::transport::Error> {
        self.endpoint(uri).connect().await
    }
}
