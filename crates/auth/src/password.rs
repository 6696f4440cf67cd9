//! Password rules and bcrypt hashing.
//!
//! bcrypt only reads the first 72 bytes of a password; longer ones are
//! refused here rather than silently truncated (two different long
//! passwords would otherwise hash the same). Hashing takes ~200 ms at the
//! default cost, so it runs on tokio's blocking pool, never on a runtime
//! worker.
//!
//! Hashing is the most expensive thing an anonymous caller can ask for
//! (sign-up and login are public), so it is a bounded resource: at most
//! `concurrency` hashes run at once, and a call that finds them all busy
//! fails at once with [`HashError::Busy`] (RESOURCE_EXHAUSTED with a retry
//! delay) instead of queueing. A hash that could not finish before its
//! caller's deadline is not started ([`HashError::NoTime`]); one that is
//! started holds its permit until bcrypt returns, whether or not the
//! caller still waits, so the CPU spent on hashing never exceeds the pool.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// Every hashing permit is in use; try again after `retry_after`.
    #[error("password hashing is at capacity")]
    Busy {
        /// About how long one hash takes.
        retry_after: Duration,
    },
    /// The caller's deadline would pass before a hash finished.
    #[error("not enough time left for a password hash")]
    NoTime,
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

/// Hashes and verifies passwords with bcrypt at a configured cost, at most
/// `concurrency` at once (see the module docs).
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    cost: u32,
    /// A hash of a throw-away password at the same cost, verified against
    /// when a login names an unknown user so that it takes as long as a
    /// wrong password does.
    dummy_hash: Arc<OnceLock<String>>,
    permits: Arc<Semaphore>,
    concurrency: usize,
    /// How long a hash takes, in microseconds: a moving average of the
    /// recent ones (0 before the first).
    typical_micros: Arc<AtomicU64>,
}

impl PasswordHasher {
    /// A hasher at `cost` (bcrypt accepts 4 to 31) running at most
    /// `concurrency` hashes at once (at least 1).
    pub fn new(cost: u32, concurrency: usize) -> Result<PasswordHasher, HashError> {
        if !(4..=31).contains(&cost) {
            return Err(HashError::Bcrypt(bcrypt::BcryptError::CostNotAllowed(cost)));
        }
        Ok(PasswordHasher {
            cost,
            dummy_hash: Arc::new(OnceLock::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            concurrency: concurrency.max(1),
            typical_micros: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The configured cost.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// How many hashes may run at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// About how long one hash takes here (a moving average of the recent
    /// ones).
    pub fn expected_duration(&self) -> Duration {
        Duration::from_micros(self.typical_micros.load(Ordering::Relaxed))
    }

    /// Hashes a password on the blocking pool; see [`PasswordHasher::run`]
    /// for `deadline`.
    pub async fn hash(
        &self,
        password: &Password,
        deadline: Option<Instant>,
    ) -> Result<String, HashError> {
        let permit = self.permit(deadline)?;
        let password = password.0.clone();
        let cost = self.cost;
        self.run(permit, move || bcrypt::non_truncating_hash(password, cost))
            .await?
            .map_err(HashError::from)
    }

    /// Hashes a password, waiting for a permit rather than failing when
    /// the pool is busy: for trusted bulk work (an admin's bulk import),
    /// whose caller going away gives up its place in the queue.
    pub async fn hash_queued(&self, password: &Password) -> Result<String, HashError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the hashing semaphore is never closed");
        let password = password.0.clone();
        let cost = self.cost;
        self.run(permit, move || bcrypt::non_truncating_hash(password, cost))
            .await?
            .map_err(HashError::from)
    }

    /// Computes the dummy hash now, on the blocking pool, so that the first
    /// login of an unknown user is not slower than later ones (which would
    /// tell an attacker the account does not exist), and measures how long
    /// a hash takes. Call before serving.
    pub async fn prepare(&self) -> Result<(), HashError> {
        let permit = self.permit(None)?;
        let cost = self.cost;
        let hash = self
            .run(permit, move || bcrypt::hash(random_dummy(), cost))
            .await??;
        let _ = self.dummy_hash.set(hash);
        Ok(())
    }

    /// Checks `password` against `hash` on the blocking pool. With no hash
    /// (unknown user) it checks against a dummy hash of the same cost and
    /// answers false, so that both cases take the same time. A malformed
    /// stored hash or an over-long password is a mismatch, never a panic.
    /// Refused like [`PasswordHasher::hash`] when the pool is full or the
    /// deadline too near.
    pub async fn verify(
        &self,
        password: &str,
        hash: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<bool, HashError> {
        let permit = self.permit(deadline)?;
        let password = password.to_owned();
        let hash = hash.map(str::to_owned);
        let cost = self.cost;
        let dummy = Arc::clone(&self.dummy_hash);
        self.run(permit, move || match hash {
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
    }

    /// A hashing permit, unless every one is busy or `deadline` (when
    /// given) leaves less time than a hash takes.
    fn permit(&self, deadline: Option<Instant>) -> Result<OwnedSemaphorePermit, HashError> {
        let expected = self.expected_duration();
        if let Some(deadline) = deadline
            && deadline.saturating_duration_since(Instant::now()) < expected
        {
            return Err(HashError::NoTime);
        }
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| HashError::Busy {
                retry_after: expected.max(Duration::from_millis(10)),
            })
    }

    /// Runs `work` on the blocking pool holding `permit` until it returns
    /// (even if the caller stops waiting), and records how long it took.
    async fn run<T: Send + 'static>(
        &self,
        permit: OwnedSemaphorePermit,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let typical = Arc::clone(&self.typical_micros);
        let done = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            let out = work();
            let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            // A quarter of each new sample: one odd hash (a malformed stored
            // hash fails at once) moves the estimate only a little.
            let _ = typical.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 { took } else { (old * 3 + took) / 4 })
            });
            out
        });
        Ok(done.await?)
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
        let hasher = PasswordHasher::new(4, 2).unwrap();
        let password = Password::parse("correct horse").unwrap();
        let hash = hasher.hash(&password, None).await.unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(hasher.expected_duration() > Duration::ZERO, "measured");
        assert!(
            hasher
                .verify("correct horse", Some(&hash), None)
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse!", Some(&hash), None)
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("correct horse", Some("not a hash"), None)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unknown_users_never_verify() {
        let hasher = PasswordHasher::new(4, 1).unwrap();
        hasher.prepare().await.unwrap();
        assert!(hasher.dummy_hash.get().is_some());
        assert!(!hasher.verify("anything at all", None, None).await.unwrap());
        assert!(!hasher.verify("", None, None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_pool_refuses_at_once_and_frees_when_the_hash_ends() {
        let hasher = PasswordHasher::new(10, 1).unwrap();
        let password = Password::parse("correct horse").unwrap();
        let running = {
            let hasher = hasher.clone();
            let password = password.clone();
            tokio::spawn(async move { hasher.hash(&password, None).await })
        };
        // Wait until the hash holds the only permit.
        while hasher.permits.available_permits() == 1 {
            tokio::task::yield_now().await;
        }
        // Refused, not queued: a queued call would get the permit once the
        // hash ends and succeed.
        let busy = hasher.verify("correct horse", None, None).await;
        assert!(matches!(busy, Err(HashError::Busy { .. })), "{busy:?}");
        running.await.unwrap().unwrap();
        assert_eq!(
            hasher.permits.available_permits(),
            1,
            "the permit came back"
        );
        assert!(hasher.verify("x", None, None).await.is_ok());
    }

    #[tokio::test]
    async fn an_abandoned_hash_keeps_its_permit_only_while_bcrypt_runs() {
        let hasher = PasswordHasher::new(10, 1).unwrap();
        let password = Password::parse("correct horse").unwrap();
        let abandoned = {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.hash(&password, None).await })
        };
        while hasher.permits.available_permits() == 1 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        // The caller is gone; the permit comes back when bcrypt returns.
        let deadline = Instant::now() + Duration::from_secs(30);
        while hasher.permits.available_permits() == 0 {
            assert!(Instant::now() < deadline, "the permit never came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn no_hash_starts_that_cannot_finish_before_the_deadline() {
        let hasher = PasswordHasher::new(4, 1).unwrap();
        hasher.prepare().await.unwrap();
        let too_soon = Instant::now();
        let refused = hasher.verify("anything", None, Some(too_soon)).await;
        assert!(matches!(refused, Err(HashError::NoTime)), "{refused:?}");
        let plenty = Instant::now() + Duration::from_secs(60);
        assert!(hasher.verify("anything", None, Some(plenty)).await.is_ok());
    }

    #[test]
    fn cost_is_checked() {
        assert!(PasswordHasher::new(3, 1).is_err());
        assert!(PasswordHasher::new(32, 1).is_err());
        assert_eq!(PasswordHasher::new(12, 1).unwrap().cost(), 12);
    }
}
