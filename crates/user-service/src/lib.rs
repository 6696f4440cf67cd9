//! user-service: user accounts, sign-up, login and tokens over gRPC.
//!
//! Layout (the same in every shop service):
//! - [`config`]: flags and environment variables.
//! - [`domain`]: account rules, no gRPC and no SQL.
//! - [`app`]: the use cases (sign-up, accounts, login, refresh), free of
//!   gRPC types.
//! - [`repo`]: the storage traits, one SQL text for SQLite and PostgreSQL.
//! - [`grpc`]: the tonic services (`shop.user.v1.UserService` and
//!   `shop.auth.v1.AuthService`): decode, call a use case, encode.
//! - [`error`]: what storage failures mean to callers.
//!
//! [`run`] wires them together; the binary is the kit's `service_main`.

pub mod activity;
pub mod app;
mod bootstrap;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod repo;

use std::{future::Future, sync::Arc};

use shop_auth::{KeySet, PasswordHasher, SigningKey, TokenIssuer, TokenVerifier, VerificationKey};
use shop_proto::{
    auth::v1::auth_service_server::AuthServiceServer,
    user::v1::user_service_server::UserServiceServer,
};
use shop_server::{Listeners, Server, ServiceInfo, layers::protect::KeyedLimit};

use activity::ActivityFeed;
use app::Accounts;
pub use config::Config;
use grpc::{AuthGrpc, UserGrpc};

pub use shop_server::ConfigError;

/// user-service as the kit, devstack and deployments know it.
pub const SERVICE: ServiceInfo = ServiceInfo::new("user-service", 50051, 9101, "users");

/// Runs user-service on `listeners` until `shutdown` completes: opens and
/// migrates the database, loads (or generates) the signing key, creates the
/// bootstrap admin, then serves UserService, AuthService, health and
/// reflection. On shutdown, health turns NOT_SERVING and in-flight calls
/// get `SHUTDOWN_GRACE` to finish.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = repo::connect(
        &config.service.database_url(&SERVICE),
        config.service.database_options(),
        config.user_cache(),
    )
    .await?;

    let tokens = &config.service.tokens;
    let signing_key = Arc::new(load_signing_key(&config)?);
    let mut keys: KeySet = [signing_key.verification_key().clone()]
        .into_iter()
        .collect();
    for path in &config.jwt_extra_public_key_files {
        keys.insert(
            VerificationKey::load(path)
                .map_err(|e| ConfigError(format!("JWT_EXTRA_PUBLIC_KEY_FILES: {e}")))?,
        );
    }
    let verifier = Arc::new(TokenVerifier::new(
        keys,
        &tokens.jwt_issuer,
        &tokens.jwt_audience,
        tokens.jwt_leeway,
    ));
    let hasher = PasswordHasher::new(
        config.bcrypt_cost,
        config.password_hash_concurrency as usize,
    )
    .map_err(|e| ConfigError(format!("BCRYPT_COST: {e}")))?;
    hasher.prepare().await?;

    if let (Some(email), Some(password)) = (
        &config.bootstrap_admin_email,
        &config.bootstrap_admin_password,
    ) {
        bootstrap::ensure_admin(
            store.as_ref(),
            &hasher,
            email,
            password,
            &config.bootstrap_admin_username,
        )
        .await?;
    }

    let mut server = Server::new(SERVICE, &config.service, verifier.clone());
    server.stream_authority(Arc::new(app::AccountStanding(Arc::clone(&store))));
    let accounts = Arc::new(Accounts {
        store: Arc::clone(&store),
        hasher,
        issuer: TokenIssuer::new(
            Arc::clone(&signing_key),
            tokens.jwt_issuer.clone(),
            tokens.jwt_audience.clone(),
            config.access_token_ttl,
        ),
        verifier,
        refresh_token_ttl: config.refresh_token_ttl,
        service_accounts_dir: config.service_accounts_dir.clone(),
        activity: ActivityFeed::new(config.activity_buffer),
        login_limit: per_minute(
            config.login_attempts_per_minute,
            "login attempts for this account from this address",
        ),
        account_login_limit: per_minute(
            config.login_attempts_per_account_per_minute,
            "login attempts for this account",
        ),
        address_limit: per_minute(
            config.credential_calls_per_address_per_minute,
            "calls of this method from this address",
        ),
    });
    let page_tokens = config.service.page_tokens(&SERVICE)?;
    let users = UserGrpc::new(Arc::clone(&accounts), page_tokens, server.streams());
    server
        .add(UserServiceServer::new(users))
        .add(AuthServiceServer::new(AuthGrpc::new(accounts)));
    tracing::info!(
        database = store.backend(),
        kid = signing_key.kid(),
        "user-service starting"
    );
    let ready = move || {
        let store = Arc::clone(&store);
        async move { store.ping().await.is_ok() }
    };
    server.serve(listeners, ready, shutdown).await
}

fn load_signing_key(config: &Config) -> anyhow::Result<SigningKey> {
    let (path, generated_default) = config.signing_key_path();
    if !generated_default {
        return SigningKey::load(&path)
            .map_err(|e| ConfigError(format!("JWT_PRIVATE_KEY_FILE: {e}")).into());
    }
    let (key, generated) =
        SigningKey::load_or_generate(&path).map_err(|e| ConfigError(format!("DATA_DIR: {e}")))?;
    if generated {
        tracing::warn!(
            path = %path.display(),
            "generated a new token signing key; set JWT_PRIVATE_KEY_FILE to share one key between replicas"
        );
    }
    Ok(key)
}

/// A bucket of `n` calls a minute, all of which may come at once.
fn per_minute(n: u32, what: &'static str) -> KeyedLimit {
    KeyedLimit::new(f64::from(n) / 60.0, n, what)
}
