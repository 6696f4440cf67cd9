//! The `grpc-timeout` parser: any header value is a duration or absent,
//! never a panic (an overflow in `n * 3600`, say), and what the encoder
//! writes for that duration parses back to at most it.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use shop_core::grpc_timeout::{GRPC_TIMEOUT, encode, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(GRPC_TIMEOUT, value);
    if let Some(timeout) = parse(&headers) {
        let mut again = HeaderMap::new();
        again.insert(GRPC_TIMEOUT, encode(timeout));
        let round_trip = parse(&again).expect("an encoded timeout parses");
        assert!(round_trip <= timeout, "{round_trip:?} > {timeout:?}");
    }
});
