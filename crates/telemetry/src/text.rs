//! Log field values formatted into a buffer on the stack and handed to
//! `tracing` as `&str`.
//!
//! A value recorded by `Display` goes through `core::fmt` twice on its way
//! into a JSON line, once to format it and once through the line's
//! escaping writer, and the standard library formats a socket address
//! octet by octet through its integer formatting: about 1,800 instructions
//! for `127.0.0.1:40002`, a sixth of what formatting the whole access line
//! took (callgrind, `scripts/bench.sh --instructions`). The same text
//! built here and recorded as a `&str` is copied, not formatted.

use std::{
    fmt::{self, Write as _},
    net::SocketAddr,
};

use opentelemetry::trace::TraceId;

/// Text of at most `N` bytes, on the stack.
#[derive(Clone, Copy)]
pub struct StackText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    pub(crate) fn new() -> StackText<N> {
        StackText {
            buf: [0; N],
            len: 0,
        }
    }

    /// The text. Only whole `&str`s and ASCII are ever added, so it is
    /// always UTF-8.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) -> fmt::Result {
        let end = self.len + bytes.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Keeps the first `len` bytes (all of them when there are fewer);
    /// `len` must fall between characters, as it does in ASCII.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn push_decimal(&mut self, mut n: u64) -> fmt::Result {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[start..])
    }
}

impl<const N: usize> fmt::Write for StackText<N> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.push(text.as_bytes())
    }
}

impl<const N: usize> fmt::Debug for StackText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The longest socket address: `[` 45 characters of IPv6 `%` a 10-digit
/// scope id `]:` a 5-digit port.
const ADDRESS_LEN: usize = 64;

/// `address` as its `Display` writes it (`127.0.0.1:40002`,
/// `[::1]:40002`).
pub fn socket_address(address: SocketAddr) -> StackText<ADDRESS_LEN> {
    let mut text = StackText::new();
    let written = match address {
        SocketAddr::V4(v4) => (|| {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b".")?;
                }
                text.push_decimal(octet.into())?;
            }
            text.push(b":")?;
            text.push_decimal(v4.port().into())
        })(),
        SocketAddr::V6(_) => write!(text, "{address}"),
    };
    debug_assert!(written.is_ok(), "{address} fits in {ADDRESS_LEN} bytes");
    text
}

/// `id` in lower-case hex, as its `Display` writes it (32 digits).
pub fn trace_id(id: TraceId) -> StackText<32> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = StackText::new();
    for (i, byte) in id.to_bytes().into_iter().enumerate() {
        text.buf[2 * i] = HEX[usize::from(byte >> 4)];
        text.buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    text.len = 32;
    text
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use super::*;

    #[test]
    fn socket_addresses_read_as_their_display() {
        let addresses = [
            SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 40002)),
            SocketAddr::from((Ipv4Addr::new(0, 0, 0, 0), 0)),
            SocketAddr::from((Ipv4Addr::new(255, 255, 255, 255), 65535)),
            SocketAddr::from((Ipv4Addr::new(10, 9, 100, 200), 8)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 50051)),
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::new(
                    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
                ),
                65535,
                0,
                u32::MAX,
            )),
            SocketAddr::V6(SocketAddrV6::new(
                Ipv4Addr::new(255, 255, 255, 255).to_ipv6_mapped(),
                65535,
                0,
                u32::MAX,
            )),
        ];
        for address in addresses {
            assert_eq!(socket_address(address).as_str(), address.to_string());
        }
    }

    #[test]
    fn trace_ids_read_as_their_display() {
        for id in [
            TraceId::from_bytes([0; 16]),
            TraceId::from_bytes([0xff; 16]),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            TraceId::from_bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xf0]),
        ] {
            assert_eq!(trace_id(id).as_str(), id.to_string());
        }
    }

    #[test]
    fn text_that_does_not_fit_is_refused_whole() {
        let mut text = StackText::<4>::new();
        assert!(text.write_str("abc").is_ok());
        assert!(text.write_str("de").is_err());
        assert_eq!(text.as_str(), "abc");
    }
}
