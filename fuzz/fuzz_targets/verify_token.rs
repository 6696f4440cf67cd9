//! Access token verification: no string is accepted without the signing
//! key (the fuzzer has none), and none makes verification panic.
#![no_main]

use std::{sync::OnceLock, time::Duration};

use libfuzzer_sys::fuzz_target;
use shop_auth::{KeySet, SigningKey, TokenVerifier};

fn verifier() -> &'static TokenVerifier {
    static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let key = SigningKey::generate();
        let keys: KeySet = [key.verification_key().clone()].into_iter().collect();
        TokenVerifier::new(keys, "shop.user-service", "shop", Duration::from_secs(30))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    assert!(
        verifier().verify(token).is_err(),
        "a token nobody signed was accepted: {token:?}"
    );
});
