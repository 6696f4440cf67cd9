//! Authentication building blocks shared by every shop service.
//!
//! - [`password`]: bcrypt hashing off the async runtime, with the 72-byte
//!   limit enforced instead of silently truncating.
//! - [`keys`]: Ed25519 signing keys (loaded from PEM or generated once and
//!   kept on disk) and the key set that verifiers use, with a `kid` per key so
//!   keys can rotate.
//! - [`token`]: JWT access tokens: issue (only the token issuer holds a
//!   private key) and verify (every service, from public keys).
//! - [`principal`]: who is calling, as the server kit hands it to handlers.
//! - [`verify`]: the [`VerifyToken`] question servers ask, whatever holds
//!   the keys.
//!
//! Nothing here knows about gRPC or databases.

pub mod keys;
pub mod password;
pub mod principal;
pub mod token;
pub mod verify;

pub use keys::{
    KeyError, KeySet, SigningKey, VerificationKey, create_private_dir, load_or_generate_secret,
};
pub use password::{HashError, Password, PasswordError, PasswordHasher};
pub use principal::{Principal, Role, SERVICE_SUBJECT_PREFIX, ServiceCaller};
pub use token::{Claims, IssuedToken, TokenError, TokenIssuer, TokenVerifier};
pub use verify::{BoxFuture, VerifyError, VerifyToken};

/// Fills a buffer from the operating system's secure random source.
///
/// # Panics
/// When the OS has no random source, which no supported platform lacks; no
/// secure fallback exists, so continuing would be worse.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the OS random source failed");
    buf
}
