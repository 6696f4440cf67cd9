//! Refresh tokens: opaque random strings given to the client once; only
//! their SHA-256 is stored, so a database leak does not hand out sessions.
//!
//! Tokens rotate: each refresh consumes the presented token and issues the
//! next one in the same *family* (one family per login). Presenting a
//! consumed token again means it was copied, so the whole family is revoked
//! (OAuth 2.0 Security BCP, refresh token rotation).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// A freshly generated refresh token and the hash to store.
#[derive(Clone)]
pub struct RefreshToken {
    /// What the client receives (256 random bits, base64url).
    pub token: String,
    /// What the database stores.
    pub hash: String,
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshToken")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl RefreshToken {
    /// A new random token.
    pub fn generate() -> RefreshToken {
        let token = URL_SAFE_NO_PAD.encode(shop_auth::random_bytes::<32>());
        let hash = hash_refresh_token(&token);
        RefreshToken { token, hash }
    }
}

/// The stored form of a refresh token: lower-case hex SHA-256.
pub fn hash_refresh_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = RefreshToken::generate();
        let b = RefreshToken::generate();
        assert_ne!(a.token, b.token);
        assert_eq!(a.hash, hash_refresh_token(&a.token));
        assert_eq!(a.hash.len(), 64);
        assert!(!format!("{a:?}").contains(&a.token));
    }
}
