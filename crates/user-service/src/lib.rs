//! user-service: user accounts, sign-up, login and tokens over gRPC.
//!
//! Layout (the same in every shop service):
//! - [`config`]: flags and environment variables.
//! - [`domain`]: account rules, no gRPC and no SQL.
//! - [`repo`]: the storage traits with PostgreSQL and SQLite backends.
//! - [`grpc`]: the tonic services (`shop.user.v1.UserService` and
//!   `shop.auth.v1.AuthService`).
//! - [`error`]: the one mapping from failures to gRPC statuses.
//!
//! [`run`] wires them together; the binary only parses the configuration,
//! binds the socket and passes the shutdown signal.

pub mod activity;
mod bootstrap;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod repo;

use std::{future::Future, sync::Arc};

use anyhow::Context as _;
use shop_auth::{KeySet, PasswordHasher, SigningKey, TokenIssuer, TokenVerifier, VerificationKey};
use shop_middleware::{
    pagination::PageTokenCodec,
    server::{serve_with_grace, server_layers, with_infrastructure},
    streams::Streams,
};
use shop_proto::{
    auth::v1::auth_service_server::AuthServiceServer,
    user::v1::user_service_server::UserServiceServer,
};
use tokio::net::TcpListener;
use tonic::{server::NamedService, transport::Server};
use tonic_health::ServingStatus;

use activity::ActivityFeed;
pub use config::Config;
use grpc::{Accounts, AuthGrpc, UserGrpc};

pub use shop_middleware::config::ConfigError;

/// Runs user-service on `listener` until `shutdown` completes: opens and
/// migrates the database, loads (or generates) the signing key, creates the
/// bootstrap admin, then serves UserService, AuthService, health and
/// reflection. On shutdown, health turns NOT_SERVING and in-flight calls
/// get `config.server.shutdown_grace` to finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = repo::connect(&config.database_url, config.database_max_connections)
        .await
        .with_context(|| {
            format!(
                "opening {}",
                shop_middleware::config::redact_url(&config.database_url)
            )
        })?;

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
        &config.jwt_issuer,
        &config.jwt_audience,
        config.jwt_leeway,
    ));
    let hasher = PasswordHasher::new(config.bcrypt_cost)
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

    let streams = Streams::new("user-service", &config.server.streams);
    let accounts = Arc::new(Accounts {
        store: Arc::clone(&store),
        hasher,
        issuer: TokenIssuer::new(
            Arc::clone(&signing_key),
            config.jwt_issuer.clone(),
            config.jwt_audience.clone(),
            config.access_token_ttl,
        ),
        verifier: Arc::clone(&verifier),
        page_tokens: PageTokenCodec::new(signing_key.derive_secret("shop.user.v1 page tokens")),
        refresh_token_ttl: config.refresh_token_ttl,
        activity: ActivityFeed::new(config.activity_buffer),
        streams: streams.clone(),
    });

    let max_message = config.server.max_message_bytes;
    let router = Server::builder()
        .layer(server_layers("user-service", &config.server, verifier))
        .add_service(
            UserServiceServer::new(UserGrpc::new(Arc::clone(&accounts)))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            AuthServiceServer::new(AuthGrpc::new(accounts))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        );
    let (router, health) = with_infrastructure(
        router,
        config.server.grpc_reflection,
        &[
            <UserServiceServer<UserGrpc> as NamedService>::NAME,
            <AuthServiceServer<AuthGrpc> as NamedService>::NAME,
        ],
    )?;
    health.set_serving::<UserServiceServer<UserGrpc>>().await;
    health.set_serving::<AuthServiceServer<AuthGrpc>>().await;
    health.set_service_status("", ServingStatus::Serving).await;

    tracing::info!(
        addr = %listener.local_addr()?,
        database = store.backend(),
        kid = signing_key.kid(),
        "user-service serving"
    );
    let draining = async move {
        shutdown.await;
        health
            .set_not_serving::<UserServiceServer<UserGrpc>>()
            .await;
        health
            .set_not_serving::<AuthServiceServer<AuthGrpc>>()
            .await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        tracing::info!("user-service draining");
    };
    serve_with_grace(router, listener, draining, config.server.shutdown_grace).await?;
    tracing::info!("user-service stopped");
    Ok(())
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
