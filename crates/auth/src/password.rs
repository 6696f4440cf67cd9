//! Password rules and bcrypt hashing.
//!
//! bcrypt only reads the first 72 bytes of a password; longer ones are
//! refused here rather than silently truncated (two different long
//! passwords would otherwise hash the same). Hashing takes ~200 ms at the
//! default cost, so it runs on tokio's blocking pool, never on a runtime
//! worker.

use std::sync::{Arc, OnceLock};

use thiserror::Error;

/// Shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted, in bytes (bcrypt's input limit).
pub const MAX_PASSWORD_BYTES: usize = 72;
/// Default bcrypt cost (work factor, log2 rounds).
pub const DEFAULT_BCRYPT_COST: u32 = 12;

/// Why a password was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PasswordError {
    /// Fewer than [`MIN_PASSWORD_CHARS`] characters.
    #[error("must be at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    /// More than [`MAX_PASSWORD_BYTES`] bytes.
    #[error("must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit); it is not truncated")]
    TooLong,
}

/// Hashing failed for a reason outside the caller's control.
#[derive(Debug, Error)]
pub enum HashError {
    /// bcrypt refused the input or cost.
    #[error("bcrypt: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    /// The blocking task panicked or was cancelled.
    #[error("hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A password that satisfies the length rules. Its `Debug` output is
/// redacted so it cannot end up in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Checks the length rules.
    pub fn parse(raw: impl Into<String>) -> Result<Password, PasswordError> {
        let raw = raw.into();
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::TooLong);
        }
        if raw.chars().count() < MIN_PASSWORD_CHARS {
            return Err(PasswordError::TooShort);
        }
        Ok(Password(raw))
    }

    /// The password itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Hashes and verifies passwords with bcrypt at a configured cost.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    cost: u32,
    /// A hash of a throw-away password at the same cost, verified against
    /// when a login names an unknown user so that it takes as long as a
    /// wrong password does.
    dummy_hash: Arc<OnceLock<String>>,
}

impl PasswordHasher {
    /// A hasher at `cost` (bcrypt accepts 4 to 31).
    pub fn new(cost: u32) -> Result<PasswordHasher, HashError> {
        if !(4..=31).contains(&cost) {
            return Err(HashError::Bcrypt(bcrypt::BcryptError::CostNotAllowed(cost)));
        }
        Ok(PasswordHasher {
            cost,
            dummy_hash: Arc::new(OnceLock::new()),
        })
    }

    /// The configured cost.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Hashes a password on the blocking pool.
    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let password = password.0.clone();
        let cost = self.cost;
        let hash = tokio::task::spawn_blocking(move || bcrypt::non_truncating_hash(password, cost))
            .await??;
        Ok(hash)
    }

    /// Computes the dummy hash now, on the blocking pool, so that the first
    /// login of an unknown user is not slower than later ones (which would
    /// tell an attacker the account does not exist). Call before serving.
    pub async fn prepare(&self) -> Result<(), HashError> {
        let cost = self.cost;
        let dummy = Arc::clone(&self.dummy_hash);
        let hash =
            tokio::task::spawn_blocking(move || bcrypt::hash(random_dummy(), cost)).await??;
        let _ = dummy.set(hash);
        Ok(())
    }

    /// Checks `password` against `hash` on the blocking pool. With no hash
    /// (unknown user) it checks against a dummy hash of the same cost and
    /// returns false, so that both cases take the same time. A malformed
    /// stored hash or an over-long password is a mismatch, never a panic.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> bool {
        let password = password.to_owned();
        let hash = hash.map(str::to_owned);
        let cost = self.cost;
        let dummy = Arc::clone(&self.dummy_hash);
        tokio::task::spawn_blocking(move || match hash {
            Some(hash) => bcrypt::non_truncating_verify(&password, &hash).unwrap_or(false),
            None => {
                let dummy = dummy.get_or_init(|| {
                    bcrypt::hash(random_dummy(), cost).unwrap_or_else(|_| String::new())
                });
                let _ = bcrypt::non_truncating_verify(&password, dummy);
                false
            }
        })
        .await
        .unwrap_or(false)
    }
}

fn random_dummy() -> String {
    crate::random_bytes::<16>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_over_72_bytes_are_refused_not_truncated() {
        let long = "a".repeat(73);
        assert_eq!(Password::parse(long), Err(PasswordError::TooLong));
        // 72 bytes is fine; multi-byte characters count as bytes.
        assert!(Password::parse("a".repeat(72)).is_ok());
        assert_eq!(Password::parse("é".repeat(37)), Err(PasswordError::TooLong));
    }

    #[test]
    fn short_passwords_are_refused() {
        assert_eq!(Password::parse("1234567"), Err(PasswordError::TooShort));
        assert!(Password::parse("12345678").is_ok());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let p = Password::parse("hunter2hunter2").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = PasswordHasher::new(4).unwrap();
        let password = Password::parse("correct horse").unwrap();
        let hash = hasher.hash(&password).await.unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(hasher.verify("correct horse", Some(&hash)).await);
        assert!(!hasher.verify("wrong horse!", Some(&hash)).await);
        assert!(!hasher.verify("correct horse", Some("not a hash")).await);
    }

    #[tokio::test]
    async fn unknown_users_never_verify() {
        let hasher = PasswordHasher::new(4).unwrap();
        hasher.prepare().await.unwrap();
        assert!(hasher.dummy_hash.get().is_some());
        assert!(!hasher.verify("anything at all", None).await);
        assert!(!hasher.verify("", None).await);
    }

    #[test]
    fn cost_is_checked() {
        assert!(PasswordHasher::new(3).is_err());
        assert!(PasswordHasher::new(32).is_err());
        assert_eq!(PasswordHasher::new(12).unwrap().cost(), 12);
    }
}
