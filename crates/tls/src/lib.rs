//! TLS and mutual TLS for servers and inter-service clients, configured by
//! file paths and reloaded without a restart.
//!
//! - [`server`] ([`ServerTlsArgs`], every server): `TLS_CERT_FILE` +
//!   `TLS_KEY_FILE` turn TLS on; `TLS_CLIENT_CA_FILE` also requires every
//!   client to present a certificate signed by that CA (mTLS);
//!   `TLS_CLIENT_ALLOWED_NAMES` also pins it to the named peers.
//! - [`client`] ([`ClientTlsArgs`], every outgoing channel):
//!   `CLIENT_TLS_CA_FILE` turns TLS on and is the only CA server
//!   certificates are checked against, with the target's host name (or
//!   `CLIENT_TLS_SERVER_NAME`); `CLIENT_TLS_CERT_FILE` +
//!   `CLIENT_TLS_KEY_FILE` are presented to servers that ask (mTLS).
//!
//! Rotation: the files are checked every `TLS_RELOAD_INTERVAL` (and at
//! once on SIGHUP); when one changed, the configuration is rebuilt and new
//! connections use it. Connections already open keep theirs. A set of files
//! that does not load (half-written, key and certificate not matching) is
//! logged and the previous configuration stays in use.
//!
//! rustls with the ring provider only; ALPN `h2`.

mod files;
mod pinning;
mod reload;

pub mod client;
pub mod server;

pub use client::{ClientTls, ClientTlsArgs};
pub use reload::Reloading;
pub use server::{ServerTls, ServerTlsArgs};

fn parse_duration(text: &str) -> Result<std::time::Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}
