//! Page tokens: any string a client sends is refused or is a token this
//! server issued for this scope (the same cursor encodes to the very same
//! token: no second spelling of one token is accepted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shop_core::pagination::PageTokenCodec;

const SCOPE: &[u8] = b"fuzz scope";

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let codec = PageTokenCodec::new([7; 32]);
    if let Ok(cursor) = codec.decode(SCOPE, token) {
        assert_eq!(codec.encode(SCOPE, &cursor), token);
    }
    let mut violations = shop_core::validation::Violations::default();
    let _ = codec.decode_id(SCOPE, token, &mut violations);
});
