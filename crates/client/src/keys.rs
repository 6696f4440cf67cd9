//! Token verification with keys fetched from the token issuer.
//!
//! Services other than the issuer never hold a private key: they fetch the
//! public keys from the issuer's `shop.auth.v1.AuthService/GetPublicKeys`,
//! at start-up (retrying until the issuer answers), again when a token
//! names a key they do not know (which is how a new key reaches them), and
//! every `JWT_KEYS_MAX_AGE` (which is how a retired key leaves them: each
//! fetch replaces the whole set, and the verified-token cache is dropped
//! when the set changes). Re-fetches for unknown keys are rate-limited so
//! that a stream of tokens with made-up `kid`s cannot turn into a stream of
//! calls to the issuer.
//!
//! [`TokenKeys`] picks between those fetched keys and fixed ones from
//! `JWT_PUBLIC_KEY_FILES` ([`KeySourceArgs`]).

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use shop_auth::{
    BoxFuture, KeySet, Principal, TokenError, TokenVerifier, VerificationKey, VerifyError,
    VerifyToken,
};
use shop_core::config::ConfigError;
use shop_proto::auth::v1::auth_service_client::AuthServiceClient;
use tokio::time::Instant;

use crate::ClientChannel;

/// Timeout of one GetPublicKeys call.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Verifies tokens with the keys the token issuer publishes.
pub struct RemoteKeys {
    client: AuthServiceClient<ClientChannel>,
    issuer: String,
    audience: String,
    leeway: Duration,
    min_refresh_interval: Duration,
    current: RwLock<Option<Arc<TokenVerifier>>>,
    /// When the last re-fetch for an unknown kid started; the lock also
    /// makes concurrent re-fetches wait for one instead of making their
    /// own. The start-up fetch does not count.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
    /// Bumped whenever a fetch changes which keys are trusted.
    generation: AtomicU64,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

impl RemoteKeys {
    /// Keys fetched over `channel` (to the token issuer, built by
    /// [`crate::connect`], which retries each fetch); tokens must name
    /// `issuer` and `audience`. An unknown `kid` triggers a re-fetch at most
    /// once per `min_refresh_interval`.
    pub fn new(
        channel: ClientChannel,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        leeway: Duration,
        min_refresh_interval: Duration,
    ) -> RemoteKeys {
        RemoteKeys {
            client: AuthServiceClient::new(channel),
            issuer: issuer.into(),
            audience: audience.into(),
            leeway,
            min_refresh_interval,
            current: RwLock::new(None),
            last_fetch: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// True once keys have been fetched.
    pub fn is_loaded(&self) -> bool {
        self.verifier().is_some()
    }

    fn verifier(&self) -> Option<Arc<TokenVerifier>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// How many times the keys were fetched (or tried), since start-up.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches the keys now; returns how many there are.
    pub async fn fetch(&self) -> Result<usize, tonic::Status> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let mut request = tonic::Request::new(());
        request.set_timeout(FETCH_TIMEOUT);
        let keys = self
            .client
            .clone()
            .get_public_keys(request)
            .await?
            .into_inner()
            .keys;
        let mut set = KeySet::new();
        for key in &keys {
            match VerificationKey::from_pem(&key.public_key_pem, &format!("key {}", key.kid)) {
                Ok(parsed) if parsed.kid() == key.kid => set.insert(parsed),
                Ok(parsed) => tracing::warn!(
                    published = %key.kid,
                    computed = %parsed.kid(),
                    "published kid does not match the key; using the computed one"
                ),
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable published key"),
            }
        }
        if set.is_empty() {
            return Err(tonic::Status::unavailable(
                "the token issuer published no usable key",
            ));
        }
        let count = set.len();
        let kids = |set: &KeySet| {
            let mut kids: Vec<String> = set.iter().map(|k| k.kid().to_owned()).collect();
            kids.sort();
            kids
        };
        let new_kids = kids(&set);
        let verifier = TokenVerifier::new(set, &self.issuer, &self.audience, self.leeway);
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = current
            .as_ref()
            .is_none_or(|old| kids(old.keys()) != new_kids);
        *current = Some(Arc::new(verifier));
        drop(current);
        if changed {
            self.generation.fetch_add(1, Ordering::SeqCst);
            tracing::info!(keys = count, kids = ?new_kids, "token verification keys loaded");
        }
        Ok(count)
    }

    /// Fetches until it succeeds, backing off from 100 ms to 5 s between
    /// attempts (with jitter); run it at start-up.
    pub async fn fetch_with_retry(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.fetch().await {
                Ok(_) => return,
                Err(status) => {
                    tracing::warn!(
                        code = ?status.code(),
                        message = status.message(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot fetch token verification keys yet"
                    );
                }
            }
            let jitter = backoff.mul_f64(fastrand::f64() * 0.2);
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Fetches the keys again every `max_age` (with up to 10% jitter, so
    /// that replicas do not ask together), keeping the current ones when
    /// the issuer cannot be reached; run it after the start-up fetch.
    pub async fn refresh_every(&self, max_age: Duration) {
        loop {
            let jitter = max_age.mul_f64(fastrand::f64() * 0.1);
            tokio::time::sleep(max_age - jitter).await;
            if let Err(status) = self.fetch().await {
                tracing::warn!(
                    code = ?status.code(),
                    message = status.message(),
                    "scheduled re-fetch of token keys failed; keeping the current ones"
                );
            }
        }
    }

    /// Re-fetches unless another fetch happened within the minimum
    /// interval; true when the keys may have changed.
    async fn refresh_if_allowed(&self, seen: Option<&Arc<TokenVerifier>>) -> bool {
        let mut last = self.last_fetch.lock().await;
        // Someone refreshed while we waited for the lock: use theirs.
        let now_current = self.verifier();
        if now_current.as_ref().map(Arc::as_ptr) != seen.map(Arc::as_ptr) {
            return true;
        }
        if last.is_some_and(|at| at.elapsed() < self.min_refresh_interval) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(_) => true,
            Err(status) => {
                tracing::warn!(code = ?status.code(), "re-fetching token keys failed");
                false
            }
        }
    }
}

impl VerifyToken for RemoteKeys {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, VerifyError>> {
        Box::pin(async move {
            let Some(verifier) = self.verifier() else {
                return Err(VerifyError::KeysUnavailable);
            };
            match verifier.verify(token) {
                Err(TokenError::UnknownKey { kid }) => {
                    tracing::debug!(%kid, "token signed by an unknown key; re-fetching keys");
                    if !self.refresh_if_allowed(Some(&verifier)).await {
                        return Err(TokenError::UnknownKey { kid }.into());
                    }
                    let verifier = self.verifier().ok_or(VerifyError::KeysUnavailable)?;
                    verifier
                        .verify(token)
                        .map(|c| c.into_principal())
                        .map_err(VerifyError::from)
                }
                other => other.map(|c| c.into_principal()).map_err(VerifyError::from),
            }
        })
    }
}

/// Where a service that does not issue tokens gets the keys to verify
/// them (flattened into its configuration).
#[derive(Debug, Clone, clap::Args)]
pub struct KeySourceArgs {
    /// Comma-separated PEM files of the public keys that verify access
    /// tokens. When unset (the default), keys are fetched from the token
    /// issuer's GetPublicKeys and re-fetched when a token names an unknown
    /// key.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILES", value_delimiter = ',')]
    pub jwt_public_key_files: Vec<std::path::PathBuf>,

    /// Shortest time between two re-fetches of the keys triggered by
    /// tokens with an unknown `kid`.
    #[arg(long, env = "JWT_KEY_REFRESH_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_key_refresh_interval: Duration,

    /// How long fetched keys are used before they are fetched again: a key
    /// the issuer stops publishing (retired) is refused at most this long
    /// (plus one fetch) later.
    #[arg(long, env = "JWT_KEYS_MAX_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwt_keys_max_age: Duration,
}

/// The token issuer (user-service) of a service that verifies tokens:
/// where it is, and where the verification keys come from (flattened into
/// the service's configuration).
#[derive(Debug, Clone, clap::Args)]
pub struct IssuerArgs {
    /// user-service: one endpoint URL, several separated by commas (calls
    /// are balanced over them), or `dns:///host:port` for every address of
    /// a DNS name, re-resolved every CLIENT_DNS_REFRESH_INTERVAL. The token
    /// verification keys come from there unless key files are given.
    #[arg(
        long,
        env = "USER_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub user_service_url: String,

    /// Where the token verification keys come from.
    #[command(flatten)]
    pub keys: KeySourceArgs,
}

impl IssuerArgs {
    /// A channel to user-service (with `client`'s settings), and the token
    /// keys: fetched over it, or read from the configured files. Start
    /// fetching with [`TokenKeys::fetch_in_background`].
    pub fn connect(
        &self,
        client: &crate::ClientArgs,
        expected: Expected<'_>,
    ) -> Result<(ClientChannel, TokenKeys), ConfigError> {
        let channel = crate::connect("user-service", &self.user_service_url, client)
            .map_err(|e| ConfigError(format!("USER_SERVICE_URL: {e}")))?;
        let keys = TokenKeys::new(&self.keys, expected, channel.clone())?;
        Ok((channel, keys))
    }
}

/// What the token claims must say: issuer, audience and clock skew.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// The only `iss` accepted.
    pub issuer: &'a str,
    /// The only `aud` accepted.
    pub audience: &'a str,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

impl<'a> Expected<'a> {
    /// Tokens of `issuer` for `audience`, with `leeway` of clock skew.
    pub fn new(issuer: &'a str, audience: &'a str, leeway: Duration) -> Expected<'a> {
        Expected {
            issuer,
            audience,
            leeway,
        }
    }
}

/// Where token verification keys come from.
#[derive(Debug, Clone)]
pub enum TokenKeys {
    /// `JWT_PUBLIC_KEY_FILES`: fixed keys.
    Local(Arc<TokenVerifier>),
    /// Fetched from the token issuer (the default), and again every
    /// `max_age`.
    Remote {
        /// The fetched keys.
        keys: Arc<RemoteKeys>,
        /// `JWT_KEYS_MAX_AGE`.
        max_age: Duration,
    },
}

impl TokenKeys {
    /// Fixed keys when `args` names key files, otherwise keys fetched over
    /// `issuer` (start fetching with [`TokenKeys::fetch_in_background`]).
    pub fn new(
        args: &KeySourceArgs,
        expected: Expected<'_>,
        issuer: ClientChannel,
    ) -> Result<TokenKeys, ConfigError> {
        if args.jwt_public_key_files.is_empty() {
            return Ok(TokenKeys::Remote {
                keys: Arc::new(RemoteKeys::new(
                    issuer,
                    expected.issuer,
                    expected.audience,
                    expected.leeway,
                    args.jwt_key_refresh_interval,
                )),
                max_age: args.jwt_keys_max_age,
            });
        }
        let mut keys = KeySet::new();
        for path in &args.jwt_public_key_files {
            keys.insert(
                VerificationKey::load(path)
                    .map_err(|e| ConfigError(format!("JWT_PUBLIC_KEY_FILES: {e}")))?,
            );
        }
        Ok(TokenKeys::Local(Arc::new(TokenVerifier::new(
            keys,
            expected.issuer,
            expected.audience,
            expected.leeway,
        ))))
    }

    /// True once keys are there to verify with.
    pub fn loaded(&self) -> bool {
        match self {
            TokenKeys::Local(_) => true,
            TokenKeys::Remote { keys, .. } => keys.is_loaded(),
        }
    }

    /// The verifier for the server's auth layer.
    pub fn verifier(&self) -> Arc<dyn VerifyToken> {
        match self {
            TokenKeys::Local(local) => local.clone(),
            TokenKeys::Remote { keys, .. } => keys.clone(),
        }
    }

    /// Starts fetching remote keys (retrying until the issuer answers, then
    /// again every `JWT_KEYS_MAX_AGE`) on a task that stops when the
    /// returned guard is dropped; nothing to do for fixed keys.
    pub fn fetch_in_background(&self) -> FetchGuard {
        FetchGuard(match self {
            TokenKeys::Remote { keys, max_age } => {
                let (keys, max_age) = (Arc::clone(keys), *max_age);
                Some(tokio::spawn(async move {
                    keys.fetch_with_retry().await;
                    keys.refresh_every(max_age).await;
                }))
            }
            TokenKeys::Local(_) => None,
        })
    }
}

/// Stops the background key fetch when dropped.
#[derive(Debug)]
pub struct FetchGuard(Option<tokio::task::JoinHandle<()>>);

impl Drop for FetchGuard {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientArgs, connect};

    #[tokio::test(flavor = "current_thread")]
    async fn start_up_fetch_keeps_trying_with_backoff() {
        // Nothing listens on port 1. The client's own retries give up
        // quickly (throttle, breaker); fetch_with_retry goes on, backing
        // off from 100 ms doubling: 100 + 200 + 400 ms (+20% at most) fits
        // four fetches in a second, never six.
        let channel = connect("users", "http://127.0.0.1:1", &ClientArgs::default()).unwrap();
        let keys = RemoteKeys::new(channel, "i", "a", Duration::ZERO, Duration::ZERO);
        let gave_up = tokio::time::timeout(Duration::from_millis(1_000), keys.fetch_with_retry());
        assert!(gave_up.await.is_err(), "no keys without a key service");
        assert!(!keys.is_loaded());
        assert!(
            (3..=5).contains(&keys.fetches()),
            "{} fetches",
            keys.fetches()
        );
    }
}
