//! The `grpc-timeout` header: `TimeoutValue TimeoutUnit`, at most eight
//! digits and one of `H M S m u n` (gRPC over HTTP/2, "Requests").

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header name.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The timeout a request carries; `None` when absent or malformed (a
/// malformed header is treated as absent, as tonic and grpc-go do).
pub fn parse(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    if value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes `timeout` in the finest unit that fits eight digits, rounding
/// down so that the header never promises more time than there is.
pub fn encode(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let text = if timeout.as_micros() <= MAX {
        format!("{}u", timeout.as_micros())
    } else if timeout.as_millis() <= MAX {
        format!("{}m", timeout.as_millis())
    } else if u128::from(timeout.as_secs()) <= MAX {
        format!("{}S", timeout.as_secs())
    } else {
        format!("{}M", (timeout.as_secs() / 60).min(99_999_999))
    };
    HeaderValue::from_str(&text).expect("digits and a unit letter are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(GRPC_TIMEOUT, value.parse().unwrap());
        h
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse(&headers("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(parse(&headers("3M")), Some(Duration::from_secs(180)));
        assert_eq!(parse(&headers("4S")), Some(Duration::from_secs(4)));
        assert_eq!(parse(&headers("300m")), Some(Duration::from_millis(300)));
        assert_eq!(parse(&headers("250u")), Some(Duration::from_micros(250)));
        assert_eq!(parse(&headers("99n")), Some(Duration::from_nanos(99)));
    }

    #[test]
    fn malformed_values_are_absent() {
        for bad in ["", "m", "10", "10x", "123456789m", "-1m", "1.5S"] {
            let mut h = HeaderMap::new();
            if !bad.is_empty() {
                h.insert(GRPC_TIMEOUT, bad.parse().unwrap());
            }
            assert_eq!(parse(&h), None, "{bad:?}");
        }
    }

    #[test]
    fn encoding_round_trips_and_never_rounds_up() {
        for d in [
            Duration::from_micros(1),
            Duration::from_millis(300),
            Duration::from_secs(30),
            Duration::from_secs(1000),
            Duration::from_secs(200_000),
            Duration::from_nanos(1_999),
        ] {
            let back = parse(&headers(encode(d).to_str().unwrap())).unwrap();
            assert!(back <= d, "{d:?} -> {back:?}");
            assert!(d - back < Duration::from_secs(1), "{d:?} -> {back:?}");
        }
        assert_eq!(encode(Duration::from_millis(300)), "300000u");
        assert_eq!(encode(Duration::from_secs(1000)), "1000000m");
    }
}
