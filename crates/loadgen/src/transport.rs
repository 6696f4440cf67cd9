//! The generator's HTTP/2 connections: the client kit's
//! [`Connection`](shop_client::connection::Connection), straight on h2, so
//! that a call's HEADERS and DATA leave in one write as h2load and grpc-go
//! send them (under tonic's `Channel` every unary call was two writes, and
//! cost the generator about a fifth more CPU per call), over plain TCP.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use http::Uri;
use shop_client::{
    connection::Connection,
    dial::{DialSettings, tcp_connector},
};

/// A connection to `url` (`http://host:port`), made on first use and again
/// after it is lost.
pub fn connection(url: &str, connect_timeout: Duration) -> anyhow::Result<Connection> {
    let origin: Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    if origin.scheme_str() != Some("http") {
        return Err(anyhow!("{url:?}: only http:// (h2c) is supported"));
    }
    if origin.authority().is_none() {
        return Err(anyhow!("{url:?} has no host"));
    }
    let settings = DialSettings {
        connect_timeout,
        keepalive_interval: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(20),
    };
    Ok(Connection::lazy(
        origin.clone(),
        tcp_connector(origin),
        settings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host_are_taken() {
        assert!(connection("http://127.0.0.1:9", Duration::from_secs(1)).is_ok());
        assert!(connection("https://127.0.0.1:9", Duration::from_secs(1)).is_err());
        assert!(connection("not a url", Duration::from_secs(1)).is_err());
        assert!(connection("/path-only", Duration::from_secs(1)).is_err());
    }
}
