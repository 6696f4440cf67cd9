//! `shop.user.v1.UserService`.

use std::{pin::Pin, sync::Arc};

use chrono::{SubsecRound as _, Utc};
use shop_auth::{Password, Principal, Role};
use shop_middleware::auth::principal;
use shop_proto::user::v1::{
    self as pb, get_user_request::Identifier, user_service_server::UserService,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{
    Accounts,
    convert::{parse_id, role_from_proto, status_from_proto, user_to_proto},
};
use crate::{
    domain::{
        Bio, Email, NewUser, PersonName, User, UserFilter, UserPatch, UserStatus, Username,
        Violations,
    },
    error::ServiceError,
    repo::UserKey,
};

/// Default ListUsers page size.
const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest ListUsers page size; larger requests are clamped.
const MAX_PAGE_SIZE: u32 = 100;
/// Longest ListUsers search string, in characters.
const MAX_SEARCH_CHARS: usize = 100;

/// The UserService implementation.
#[derive(Debug, Clone)]
pub struct UserGrpc {
    accounts: Arc<Accounts>,
}

impl UserGrpc {
    /// A service over the shared account state.
    pub fn new(accounts: Arc<Accounts>) -> UserGrpc {
        UserGrpc { accounts }
    }

    async fn create(&self, req: pb::CreateUserRequest) -> Result<User, ServiceError> {
        let mut v = Violations::new();
        let email = v.check("email", Email::parse(&req.email));
        let username = v.check("username", Username::parse(&req.username));
        let password = v.check(
            "password",
            Password::parse(req.password).map_err(|e| e.to_string()),
        );
        let first_name = v.check("first_name", PersonName::parse(&req.first_name));
        let last_name = v.check("last_name", PersonName::parse(&req.last_name));
        v.into_result()?;
        let (Some(email), Some(username), Some(password), Some(first_name), Some(last_name)) =
            (email, username, password, first_name, last_name)
        else {
            unreachable!("every field parsed when there is no violation");
        };

        let password_hash = self
            .accounts
            .hasher
            .hash(&password)
            .await
            .map_err(|e| ServiceError::Internal(e.into()))?;
        let new = NewUser {
            id: Uuid::now_v7(),
            email,
            username,
            password_hash,
            first_name,
            last_name,
            roles: vec![Role::Customer],
            status: UserStatus::Active,
            now: Utc::now().trunc_subsecs(6),
        };
        let user = self.accounts.store.create_user(&new).await?;
        tracing::info!(user_id = %user.id, "user created");
        Ok(user)
    }

    async fn get(&self, caller: &Principal, req: pb::GetUserRequest) -> Result<User, ServiceError> {
        let email;
        let username;
        let key = match req.identifier {
            None => {
                return Err(ServiceError::invalid(
                    "identifier",
                    "set one of user_id, email or username",
                ));
            }
            Some(Identifier::UserId(id)) => {
                UserKey::Id(parse_id(&id).map_err(|e| ServiceError::invalid("user_id", &e))?)
            }
            Some(Identifier::Email(raw)) => {
                email = Email::parse(&raw).map_err(|e| ServiceError::invalid("email", &e))?;
                UserKey::Email(&email)
            }
            Some(Identifier::Username(raw)) => {
                username =
                    Username::parse(&raw).map_err(|e| ServiceError::invalid("username", &e))?;
                UserKey::Username(&username)
            }
        };
        self.accounts
            .store
            .find_user(key)
            .await?
            .filter(|user| user.is_visible() && caller.may_act_for(&user.id.to_string()))
            .ok_or(ServiceError::NotFound("user"))
    }

    async fn update(
        &self,
        caller: &Principal,
        req: pb::UpdateUserRequest,
    ) -> Result<User, ServiceError> {
        let mut v = Violations::new();
        let id = v.check("user_id", parse_id(&req.user_id));
        let mut patch = UserPatch {
            username: req
                .username
                .as_deref()
                .and_then(|u| v.check("username", Username::parse(u))),
            first_name: req
                .first_name
                .as_deref()
                .and_then(|n| v.check("first_name", PersonName::parse(n))),
            last_name: req
                .last_name
                .as_deref()
                .and_then(|n| v.check("last_name", PersonName::parse(n))),
            bio: req
                .bio
                .as_deref()
                .and_then(|b| v.check("bio", Bio::parse(b))),
            ..UserPatch::default()
        };
        if let Some(status) = req.status {
            match status_from_proto(status) {
                Ok(Some(UserStatus::Deleted)) => {
                    v.add("status", "cannot be DELETED; use DeleteUser")
                }
                Ok(Some(status)) => patch.status = Some(status),
                Ok(None) => v.add("status", "must be a status when set"),
                Err(e) => v.add("status", e),
            }
        }
        if let Some(set) = &req.roles {
            if set.roles.is_empty() {
                v.add("roles.roles", "must hold at least one role");
            }
            let mut roles = Vec::new();
            for (i, raw) in set.roles.iter().enumerate() {
                match role_from_proto(*raw) {
                    Ok(role) if !roles.contains(&role) => roles.push(role),
                    Ok(_) => {}
                    Err(e) => v.add(format!("roles.roles[{i}]"), e),
                }
            }
            patch.roles = Some(roles);
        }
        v.into_result()?;
        let Some(id) = id else {
            unreachable!("user_id parsed when there is no violation");
        };

        if !caller.may_act_for(&id.to_string()) {
            return Err(ServiceError::NotFound("user"));
        }
        if (patch.status.is_some() || patch.roles.is_some()) && !caller.is_admin() {
            return Err(ServiceError::PermissionDenied(
                "only admins may change status or roles",
            ));
        }
        let now = Utc::now().trunc_subsecs(6);
        let user = self
            .accounts
            .store
            .update_user(id, &patch, now)
            .await?
            .ok_or(ServiceError::NotFound("user"))?;
        if user.status != UserStatus::Active {
            // A disabled account keeps no session alive.
            self.accounts
                .store
                .revoke_user_refresh_tokens(id, now)
                .await?;
        }
        tracing::info!(user_id = %id, by = %caller.user_id, "user updated");
        Ok(user)
    }

    async fn delete(
        &self,
        caller: &Principal,
        req: pb::DeleteUserRequest,
    ) -> Result<(), ServiceError> {
        let id = parse_id(&req.user_id).map_err(|e| ServiceError::invalid("user_id", &e))?;
        if !caller.may_act_for(&id.to_string()) {
            return Err(ServiceError::NotFound("user"));
        }
        let now = Utc::now().trunc_subsecs(6);
        if !self.accounts.store.soft_delete_user(id, now).await? {
            return Err(ServiceError::NotFound("user"));
        }
        self.accounts
            .store
            .revoke_user_refresh_tokens(id, now)
            .await?;
        tracing::info!(user_id = %id, by = %caller.user_id, "user deleted");
        Ok(())
    }

    async fn list(&self, req: pb::ListUsersRequest) -> Result<pb::ListUsersResponse, ServiceError> {
        let mut v = Violations::new();
        let page_size = match req.page_size {
            n if n < 0 => {
                v.add("page_size", "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as u32).min(MAX_PAGE_SIZE),
        };
        let search = req.search.trim().to_lowercase();
        if search.chars().count() > MAX_SEARCH_CHARS {
            v.add(
                "search",
                format!("must be at most {MAX_SEARCH_CHARS} characters"),
            );
        }
        let status = v.check("status", status_from_proto(req.status)).flatten();
        let filter = UserFilter {
            status,
            search: (!search.is_empty()).then_some(search),
        };
        let scope = format!(
            "shop.user.v1.ListUsers|{}|{}",
            filter.status_str().unwrap_or(""),
            filter.search.as_deref().unwrap_or("")
        );
        let after = if req.page_token.is_empty() {
            None
        } else {
            match self
                .accounts
                .page_tokens
                .decode(scope.as_bytes(), &req.page_token)
            {
                Ok(cursor) => match Uuid::from_slice(&cursor) {
                    Ok(id) => Some(id),
                    Err(_) => {
                        v.add("page_token", "page_token is malformed");
                        None
                    }
                },
                Err(e) => {
                    v.add("page_token", e.to_string());
                    None
                }
            }
        };
        v.into_result()?;

        let store = &self.accounts.store;
        let (mut users, total) = tokio::try_join!(
            store.list_users(&filter, after, page_size + 1),
            store.count_users(&filter)
        )?;
        let next_page_token = if users.len() > page_size as usize {
            users.truncate(page_size as usize);
            let last = users.last().map(|u| u.id).unwrap_or(Uuid::nil());
            self.accounts
                .page_tokens
                .encode(scope.as_bytes(), last.as_bytes())
        } else {
            String::new()
        };
        Ok(pb::ListUsersResponse {
            users: users.iter().map(user_to_proto).collect(),
            next_page_token,
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        })
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl UserService for UserGrpc {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let user = self.create(request.into_inner()).await?;
        Ok(Response::new(user_to_proto(&user)))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = principal(&request)?.clone();
        let user = self.get(&caller, request.into_inner()).await?;
        Ok(Response::new(user_to_proto(&user)))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = principal(&request)?.clone();
        let user = self.update(&caller, request.into_inner()).await?;
        Ok(Response::new(user_to_proto(&user)))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = principal(&request)?.clone();
        self.delete(&caller, request.into_inner()).await?;
        Ok(Response::new(()))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    type StreamUsersStream = ResponseStream<pb::User>;

    async fn stream_users(
        &self,
        _request: Request<pb::StreamUsersRequest>,
    ) -> Result<Response<Self::StreamUsersStream>, Status> {
        Err(Status::unimplemented("StreamUsers is not implemented yet"))
    }

    async fn bulk_create_users(
        &self,
        _request: Request<Streaming<pb::CreateUserRequest>>,
    ) -> Result<Response<pb::BulkCreateUsersResponse>, Status> {
        Err(Status::unimplemented(
            "BulkCreateUsers is not implemented yet",
        ))
    }

    type UserActivityStream = ResponseStream<pb::UserActivityEvent>;

    async fn user_activity(
        &self,
        _request: Request<Streaming<pb::UserActivityRequest>>,
    ) -> Result<Response<Self::UserActivityStream>, Status> {
        Err(Status::unimplemented("UserActivity is not implemented yet"))
    }
}
