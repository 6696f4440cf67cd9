//! The calling service's own credential for services-only RPCs: a service
//! token from the token issuer's `AuthService/IssueServiceToken`, bought
//! with the secret in `SERVICE_SECRET_FILE` and sent as `x-service-token`
//! next to the end user's forwarded token.
//!
//! The token is fetched on first use and again once 80% of its life has
//! passed; concurrent callers share one fetch. The secret file is generated
//! on first start when missing (mode 0600), which is how devstack needs no
//! setup: user-service's `SERVICE_ACCOUNTS_DIR` is the directory the
//! callers' secrets are written to. Elsewhere, provision the same secret
//! to both sides.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use shop_proto::auth::v1::{IssueServiceTokenRequest, auth_service_client::AuthServiceClient};
use tokio::{sync::Mutex, time::Instant};
use tonic::{Request, Status, metadata::MetadataValue};

use crate::ClientChannel;

/// The metadata key of the service token.
pub const SERVICE_TOKEN_HEADER: &str = "x-service-token";

/// How long one IssueServiceToken may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a calling service's secret is.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceAccountArgs {
    /// File with this service's service account secret (64 hex digits),
    /// the same as `<SERVICE_ACCOUNTS_DIR>/<name>.secret` at user-service:
    /// it buys the service tokens that services-only RPCs require.
    /// Generated when missing. Default:
    /// `<DATA_DIR>/service-accounts/<name>.secret`.
    #[arg(long, env = "SERVICE_SECRET_FILE")]
    pub service_secret_file: Option<PathBuf>,
}

impl ServiceAccountArgs {
    /// The secret file of the service `name` whose data directory is
    /// `data_dir`.
    pub fn secret_path(&self, name: &str, data_dir: &Path) -> PathBuf {
        self.service_secret_file.clone().unwrap_or_else(|| {
            data_dir
                .join("service-accounts")
                .join(format!("{name}.secret"))
        })
    }
}

/// A service's token, fetched and renewed from the token issuer.
pub struct ServiceToken {
    name: String,
    secret: String,
    client: AuthServiceClient<ClientChannel>,
    current: Mutex<Option<(MetadataValue<tonic::metadata::Ascii>, Instant)>>,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ServiceToken {
    /// The service account `name` with the secret in `secret_file`
    /// (generated when missing), fetching tokens over `issuer` (a channel
    /// to user-service).
    pub fn load(name: &str, secret_file: &Path, issuer: ClientChannel) -> Result<Self, String> {
        let secret = shop_auth::load_or_generate_secret(secret_file)
            .map_err(|e| format!("SERVICE_SECRET_FILE: {e}"))?;
        Ok(ServiceToken {
            name: name.to_owned(),
            secret: secret.iter().map(|b| format!("{b:02x}")).collect(),
            client: AuthServiceClient::new(issuer),
            current: Mutex::new(None),
        })
    }

    /// Puts the service token on `request`, fetching one first when there
    /// is none or it is old.
    pub async fn attach<T>(&self, request: &mut Request<T>) -> Result<(), Status> {
        let token = self.token().await?;
        request.metadata_mut().insert(SERVICE_TOKEN_HEADER, token);
        Ok(())
    }

    async fn token(&self) -> Result<MetadataValue<tonic::metadata::Ascii>, Status> {
        let mut current = self.current.lock().await;
        if let Some((token, renew_at)) = current.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let mut request = Request::new(IssueServiceTokenRequest {
            service_name: self.name.clone(),
            secret: self.secret.clone(),
        });
        request.set_timeout(FETCH_TIMEOUT);
        let issued = self
            .client
            .clone()
            .issue_service_token(request)
            .await
            .map_err(|status| {
                tracing::warn!(
                    service = self.name,
                    code = ?status.code(),
                    message = status.message(),
                    "no service token: is this service an account in user-service's \
                     SERVICE_ACCOUNTS_DIR with the secret of SERVICE_SECRET_FILE?"
                );
                Status::unavailable("this service cannot prove its identity yet")
            })?
            .into_inner();
        let token: MetadataValue<_> = issued
            .access_token
            .parse()
            .map_err(|_| Status::internal("the service token is not valid metadata"))?;
        let life = Duration::from_secs(issued.expires_in.max(0) as u64);
        *current = Some((token.clone(), Instant::now() + life.mul_f64(0.8)));
        Ok(token)
    }
}
