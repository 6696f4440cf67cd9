//! Who is calling, by network address: the key that per-address limits
//! (anonymous rate limits, stream caps, credential quotas) count under.
//!
//! An IPv4 address is one key. An IPv6 host usually owns a whole /64 and
//! can pick a fresh address from it for every call, so IPv6 addresses are
//! keyed by their /64 prefix; an IPv4-mapped IPv6 address is its IPv4
//! address.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::connections::ConnectionInfo;

/// The caller's socket address, over plain TCP or TLS.
pub fn peer_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    match connection_of(extensions) {
        Some(connection) => connection.remote_addr(),
        None => tonic_connection_of(extensions).and_then(|info| info.remote_addr()),
    }
}

/// The connection a request came on, over plain TCP or TLS, when it was
/// accepted by [`crate::connections::accept`] (every `Server` serves so);
/// `None` for a host application's own listener (tonic's `TcpIncoming`).
pub fn connection_of(extensions: &http::Extensions) -> Option<&ConnectionInfo> {
    plain_or_tls::<ConnectionInfo>(extensions)
}

/// tonic's own connection info, from a listener of tonic's.
fn tonic_connection_of(extensions: &http::Extensions) -> Option<&TcpConnectInfo> {
    plain_or_tls::<TcpConnectInfo>(extensions)
}

/// The `Info` a connection of plain TCP set on a request, or the one
/// inside a TLS connection's info.
fn plain_or_tls<Info: Send + Sync + 'static>(extensions: &http::Extensions) -> Option<&Info> {
    extensions.get::<Info>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<Info>>()
            .map(|tls| tls.get_ref())
    })
}

/// The limit key of `ip`: the IPv4 address, or the IPv6 /64 prefix.
pub fn address_key(ip: IpAddr) -> String {
    AddressKey(ip).to_string()
}

/// [`address_key`] as it is written, so that a key built around it is
/// formatted once, into its own allocation.
struct AddressKey(IpAddr);

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => v4.fmt(f),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.fmt(f),
                None => {
                    let [a, b, c, d, ..] = v6.segments();
                    write!(f, "{}/64", Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
                }
            },
        }
    }
}

/// `addr:<key>` for the caller of `extensions`' request (`addr:unknown`
/// when the transport does not say, as in tests over in-memory streams).
pub fn caller_key(extensions: &http::Extensions) -> String {
    let mut key = String::new();
    write_caller_key(extensions, &mut key);
    key
}

/// [`caller_key`] appended to `key`.
pub fn write_caller_key(extensions: &http::Extensions, key: &mut String) {
    use fmt::Write as _;
    key.push_str("addr:");
    match peer_addr(extensions) {
        Some(addr) => {
            let _ = write!(key, "{}", AddressKey(addr.ip()));
        }
        None => key.push_str("unknown"),
    }
}

/// [`caller_key`] of a request as a handler sees it.
pub fn caller_address<T>(request: &tonic::Request<T>) -> String {
    caller_key(request.extensions())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_keyed_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), "2001:db8:1:2::/64");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
    }

    #[test]
    fn ipv4_and_mapped_addresses_are_themselves() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(v4), "192.0.2.7");
        assert_eq!(address_key(mapped), "192.0.2.7");
    }
}
