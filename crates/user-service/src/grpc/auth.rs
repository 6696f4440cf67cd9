//! `shop.auth.v1.AuthService`: login, refresh-token rotation, logout and the
//! public keys that other services verify tokens with.

use std::sync::Arc;

use shop_auth::password::MAX_PASSWORD_BYTES;
use shop_proto::auth::v1::{self as pb, auth_service_server::AuthService};
use shop_server::peer::caller_address;
use tonic::{Request, Response, Status};

use crate::{
    app::{Accounts, AppError, MAX_SERVICE_NAME_CHARS, Tokens},
    domain::{Email, Violations},
};

/// Longest refresh token accepted before hashing; ours are 43 characters.
const MAX_REFRESH_TOKEN_CHARS: usize = 256;
/// Longest service secret accepted; ours are 64 hex digits.
const MAX_SERVICE_SECRET_CHARS: usize = 128;

/// The AuthService implementation.
#[derive(Debug, Clone)]
pub struct AuthGrpc {
    accounts: Arc<Accounts>,
}

impl AuthGrpc {
    /// The service over the account use cases.
    pub fn new(accounts: Arc<Accounts>) -> AuthGrpc {
        AuthGrpc { accounts }
    }

    fn token_pair(&self, tokens: Tokens) -> pb::TokenPair {
        pb::TokenPair {
            access_token: tokens.access.token,
            refresh_token: tokens.refresh_token,
            token_type: "Bearer".into(),
            expires_in: tokens.access.expires_in.as_secs() as i64,
            refresh_expires_in: self.accounts.refresh_token_ttl.as_secs() as i64,
        }
    }
}

/// Decodes a LoginRequest: the identifier, lower-cased, and the password.
fn decode_login(req: &pb::LoginRequest) -> Result<String, AppError> {
    let mut v = Violations::new();
    let identifier = req.identifier.trim().to_ascii_lowercase();
    if identifier.is_empty() {
        v.add("identifier", "is required");
    } else if identifier.len() > Email::MAX_LEN {
        v.add(
            "identifier",
            format!("must be at most {} characters", Email::MAX_LEN),
        );
    }
    if req.password.is_empty() {
        v.add("password", "is required");
    } else if req.password.len() > MAX_PASSWORD_BYTES {
        v.add(
            "password",
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        );
    }
    v.into_result()?;
    Ok(identifier)
}

/// Checks the refresh token field: present, and not absurdly long (which
/// is refused like any other unknown token).
fn check_refresh_token_field(token: &str) -> Result<(), AppError> {
    if token.is_empty() {
        return Err(AppError::invalid("refresh_token", "is required"));
    }
    if token.len() > MAX_REFRESH_TOKEN_CHARS {
        return Err(AppError::Unauthenticated(crate::app::INVALID_REFRESH_TOKEN));
    }
    Ok(())
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let from = caller_address(&request);
        let req = request.into_inner();
        let identifier = decode_login(&req)?;
        let tokens = self
            .accounts
            .login(&identifier, &req.password, &from)
            .await?;
        Ok(Response::new(self.token_pair(tokens)))
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let presented = &request.get_ref().refresh_token;
        check_refresh_token_field(presented)?;
        let tokens = self
            .accounts
            .refresh(presented, &caller_address(&request))
            .await?;
        Ok(Response::new(self.token_pair(tokens)))
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Result<Response<()>, Status> {
        let presented = &request.get_ref().refresh_token;
        check_refresh_token_field(presented)?;
        self.accounts.logout(presented).await?;
        Ok(Response::new(()))
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::ServiceToken>, Status> {
        let from = caller_address(&request);
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.service_name.is_empty() {
            v.add("service_name", "is required");
        } else if req.service_name.len() > MAX_SERVICE_NAME_CHARS {
            v.add(
                "service_name",
                format!("must be at most {MAX_SERVICE_NAME_CHARS} characters"),
            );
        }
        if req.secret.is_empty() {
            v.add("secret", "is required");
        } else if req.secret.len() > MAX_SERVICE_SECRET_CHARS {
            v.add(
                "secret",
                format!("must be at most {MAX_SERVICE_SECRET_CHARS} characters"),
            );
        }
        v.into_result().map_err(AppError::from)?;
        let token = self
            .accounts
            .issue_service_token(&req.service_name, &req.secret, &from)
            .await?;
        Ok(Response::new(pb::ServiceToken {
            access_token: token.token,
            expires_in: token.expires_in.as_secs() as i64,
        }))
    }

    async fn get_public_keys(
        &self,
        _request: Request<()>,
    ) -> Result<Response<pb::PublicKeys>, Status> {
        let keys = self
            .accounts
            .verifier
            .keys()
            .iter()
            .map(|k| pb::PublicKey {
                kid: k.kid().to_owned(),
                algorithm: k.algorithm().to_owned(),
                public_key_pem: k.public_key_pem().to_owned(),
            })
            .collect();
        Ok(Response::new(pb::PublicKeys { keys }))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn declared(method: &str) -> usize {
        shop_proto::policy::lookup(&format!("/shop.auth.v1.AuthService/{method}"))
            .expect("a declared method")
            .max_request_bytes as usize
    }

    #[test]
    fn the_largest_valid_requests_fit_their_declared_limits() {
        let login = pb::LoginRequest {
            identifier: "i".repeat(Email::MAX_LEN),
            password: "p".repeat(MAX_PASSWORD_BYTES),
        };
        assert!(decode_login(&login).is_ok(), "valid");
        assert!(login.encoded_len() <= declared("Login"));
        let refresh = "r".repeat(MAX_REFRESH_TOKEN_CHARS);
        assert!(check_refresh_token_field(&refresh).is_ok(), "valid");
        let refresh = pb::RefreshTokenRequest {
            refresh_token: refresh,
        };
        assert!(refresh.encoded_len() <= declared("RefreshToken"));
        assert!(refresh.encoded_len() <= declared("Logout"));
        assert!(declared("GetPublicKeys") > 0);
        let service = pb::IssueServiceTokenRequest {
            service_name: "s".repeat(MAX_SERVICE_NAME_CHARS),
            secret: "x".repeat(MAX_SERVICE_SECRET_CHARS),
        };
        assert!(service.encoded_len() <= declared("IssueServiceToken"));
    }
}
