//! `shop.user.v1.UserService`.

use std::{collections::HashSet, sync::Arc};

use futures_util::StreamExt as _;
use shop_auth::{Password, Principal};
use shop_core::{
    pagination::{PageTokenCodec, page_size},
    validation::FieldViolation,
};
use shop_proto::user::v1::{
    self as pb, get_user_request::Identifier, user_activity_event, user_activity_request,
    user_service_server::UserService,
};
use shop_server::{
    principal, principal_of,
    streams::{ResponseStream, Streams, guarded},
};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Code, Request, Response, Status, Streaming};
use uuid::Uuid;

use super::convert::{
    parse_id, role_from_proto, status_from_proto, timestamp, user_into_proto, user_to_proto,
};
use crate::{
    activity::{ActivityEvent, ActivityKind},
    app::{Accounts, AppError, SignUp},
    domain::{Bio, Email, PersonName, UserFilter, UserPatch, UserStatus, Username, Violations},
    repo::UserKey,
};

/// Longest ListUsers search string, in characters.
const MAX_SEARCH_CHARS: usize = 100;
/// Default StreamUsers limit.
const DEFAULT_STREAM_LIMIT: u32 = 100;
/// Largest StreamUsers limit; more is INVALID_ARGUMENT.
const MAX_STREAM_LIMIT: u32 = 1000;
/// Most entries in an UpdateUser role set (there are two roles; a few
/// repeats are tolerated).
const MAX_ROLES: usize = 8;
/// Most items in one BulkCreateUsers stream; more and nothing is created.
pub(crate) const MAX_BULK_USERS: usize = 10_000;

/// Decodes every field of a CreateUserRequest at once.
fn decode_sign_up(req: pb::CreateUserRequest) -> Result<SignUp, Vec<FieldViolation>> {
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
    match (email, username, password, first_name, last_name) {
        (Some(email), Some(username), Some(password), Some(first_name), Some(last_name)) => {
            Ok(SignUp {
                email,
                username,
                password,
                first_name,
                last_name,
            })
        }
        _ => unreachable!("every field parsed when there is no violation"),
    }
}

/// Decodes an UpdateUserRequest into the user and the patch of its set
/// fields.
fn decode_update(req: pb::UpdateUserRequest) -> Result<(Uuid, UserPatch), AppError> {
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
            Ok(Some(UserStatus::Deleted)) => v.add("status", "cannot be DELETED; use DeleteUser"),
            Ok(Some(status)) => patch.status = Some(status),
            Ok(None) => v.add("status", "must be a status when set"),
            Err(e) => v.add("status", e),
        }
    }
    if let Some(set) = &req.roles {
        if set.roles.is_empty() {
            v.add("roles.roles", "must hold at least one role");
        } else if set.roles.len() > MAX_ROLES {
            // Checked before the entries, which are then not looked at.
            v.add(
                "roles.roles",
                format!(
                    "must hold at most {MAX_ROLES} roles, not {}",
                    set.roles.len()
                ),
            );
        } else {
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
    }
    v.into_result()?;
    let Some(id) = id else {
        unreachable!("user_id parsed when there is no violation");
    };
    Ok((id, patch))
}

/// The UserService implementation.
#[derive(Debug, Clone)]
pub struct UserGrpc {
    accounts: Arc<Accounts>,
    page_tokens: PageTokenCodec,
    streams: Streams,
}

impl UserGrpc {
    /// The service over the account use cases; `page_tokens` signs
    /// ListUsers cursors, `streams` keeps every stream in bounds.
    pub fn new(accounts: Arc<Accounts>, page_tokens: PageTokenCodec, streams: Streams) -> UserGrpc {
        UserGrpc {
            accounts,
            page_tokens,
            streams,
        }
    }

    async fn get(&self, caller: &Principal, req: pb::GetUserRequest) -> Result<pb::User, AppError> {
        let email;
        let username;
        let key = match req.identifier {
            None => {
                return Err(AppError::invalid(
                    "identifier",
                    "set one of user_id, email or username",
                ));
            }
            Some(Identifier::UserId(id)) => {
                UserKey::Id(parse_id(&id).map_err(|e| AppError::invalid("user_id", &e))?)
            }
            Some(Identifier::Email(raw)) => {
                email = Email::parse(&raw).map_err(|e| AppError::invalid("email", &e))?;
                UserKey::Email(&email)
            }
            Some(Identifier::Username(raw)) => {
                username = Username::parse(&raw).map_err(|e| AppError::invalid("username", &e))?;
                UserKey::Username(&username)
            }
        };
        Ok(user_into_proto(self.accounts.get(caller, key).await?))
    }

    async fn list(&self, req: pb::ListUsersRequest) -> Result<pb::ListUsersResponse, AppError> {
        let mut v = Violations::new();
        let page_size = page_size(req.page_size, &mut v);
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
        let after = self
            .page_tokens
            .decode_id(scope.as_bytes(), &req.page_token, &mut v);
        v.into_result()?;

        let (mut users, total) = self.accounts.list(&filter, after, page_size + 1).await?;
        let next_page_token =
            self.page_tokens
                .next_page(scope.as_bytes(), &mut users, page_size, |u| u.id);
        Ok(pb::ListUsersResponse {
            users: users.iter().map(user_to_proto).collect(),
            next_page_token,
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        })
    }
}

impl UserGrpc {
    /// Validates a StreamUsers request into a filter and a limit.
    fn stream_request(req: &pb::StreamUsersRequest) -> Result<(UserFilter, u32), AppError> {
        let mut v = Violations::new();
        let limit = match req.limit {
            n if n < 0 => {
                v.add("limit", "must not be negative");
                0
            }
            0 => DEFAULT_STREAM_LIMIT,
            n if n as u32 > MAX_STREAM_LIMIT => {
                v.add("limit", format!("must be at most {MAX_STREAM_LIMIT}"));
                0
            }
            n => n as u32,
        };
        let search = req.search.trim().to_lowercase();
        if search.chars().count() > MAX_SEARCH_CHARS {
            v.add(
                "search",
                format!("must be at most {MAX_SEARCH_CHARS} characters"),
            );
        }
        let status = v.check("status", status_from_proto(req.status)).flatten();
        v.into_result()?;
        Ok((
            UserFilter {
                status,
                search: (!search.is_empty()).then_some(search),
            },
            limit,
        ))
    }

    /// Reads a BulkCreateUsers stream: every item validated as it arrives,
    /// nothing stored until the stream ends within the limit, then each
    /// valid item created in stream order.
    async fn bulk_create(
        accounts: Arc<Accounts>,
        mut inbound: Streaming<pb::CreateUserRequest>,
    ) -> Result<pb::BulkCreateUsersResponse, Status> {
        let mut response = pb::BulkCreateUsersResponse::default();
        let mut valid = Vec::new();
        let mut index = 0usize;
        while let Some(item) = inbound.message().await? {
            if index == MAX_BULK_USERS {
                return Err(Status::invalid_argument(format!(
                    "a bulk creation holds at most {MAX_BULK_USERS} users; nothing was created"
                )));
            }
            let email = item.email.clone();
            match decode_sign_up(item) {
                Ok(sign_up) => valid.push((index, email, sign_up)),
                Err(violations) => response.errors.push(pb::BulkCreateUserError {
                    index: index as i32,
                    email,
                    code: Code::InvalidArgument as i32,
                    message: violations
                        .iter()
                        .map(|v| format!("{}: {}", v.field, v.description))
                        .collect::<Vec<_>>()
                        .join("; "),
                }),
            }
            index += 1;
        }

        // bcrypt is the slow part: hash on half the hashing pool (the rest
        // stays free for logins and sign-ups), keep stream order.
        let parallel = (accounts.hasher.concurrency() / 2).max(1);
        let mut hashed = futures_util::stream::iter(valid)
            .map(|(index, email, sign_up)| {
                let accounts = Arc::clone(&accounts);
                async move { (index, email, accounts.new_user(sign_up).await) }
            })
            .buffered(parallel);
        while let Some((index, email, new)) = hashed.next().await {
            let created = match new {
                Ok(new) => accounts.create(&new).await,
                Err(e) => Err(e),
            };
            match created {
                Ok(user) => response.users.push(user_to_proto(&user)),
                Err(AppError::AlreadyExists(message)) => {
                    response.errors.push(pb::BulkCreateUserError {
                        index: index as i32,
                        email,
                        code: Code::AlreadyExists as i32,
                        message: message.into(),
                    });
                }
                Err(other) => return Err(other.into()),
            }
        }
        response.errors.sort_by_key(|e| e.index);
        response.created_count = response.users.len() as i32;
        response.failed_count = response.errors.len() as i32;
        tracing::info!(
            created = response.created_count,
            failed = response.failed_count,
            "bulk creation"
        );
        Ok(response)
    }
}

/// The proto form of an activity event.
fn activity_to_proto(event: &ActivityEvent) -> pb::UserActivityEvent {
    use user_activity_event::Type;
    let kind = match event.kind {
        ActivityKind::Created => Type::Created,
        ActivityKind::Updated => Type::Updated,
        ActivityKind::Deleted => Type::Deleted,
        ActivityKind::LoggedIn => Type::LoggedIn,
    };
    pb::UserActivityEvent {
        user_id: event.user.id.to_string(),
        r#type: kind as i32,
        user: Some(user_to_proto(&event.user)),
        occurred_at: Some(timestamp(event.at)),
    }
}

/// Applies one UserActivity request to the subscription set; an invalid or
/// unauthorized request ends the stream with its status.
async fn change_subscription(
    accounts: &Accounts,
    caller: &Principal,
    subscribed: &mut HashSet<Uuid>,
    req: pb::UserActivityRequest,
) -> Result<(), Status> {
    use user_activity_request::Action;
    let id = parse_id(&req.user_id).map_err(|e| AppError::invalid("user_id", &e))?;
    match Action::try_from(req.action) {
        Ok(Action::Subscribe) => {
            if !accounts.may_watch(caller, id).await? {
                return Err(AppError::NotFound("user").into());
            }
            subscribed.insert(id);
            Ok(())
        }
        Ok(Action::Unsubscribe) => {
            subscribed.remove(&id);
            Ok(())
        }
        _ => Err(AppError::invalid("action", "must be SUBSCRIBE or UNSUBSCRIBE").into()),
    }
}

#[tonic::async_trait]
impl UserService for UserGrpc {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let from = shop_server::peer::caller_address(&request);
        let sign_up = decode_sign_up(request.into_inner()).map_err(AppError::from)?;
        let user = self.accounts.sign_up(sign_up, &from).await?;
        Ok(Response::new(user_to_proto(&user)))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        // The message without the caller's copy: the principal stays
        // where the auth layer put it.
        let (_, extensions, message) = request.into_parts();
        let caller = principal_of(&extensions)?;
        Ok(Response::new(self.get(caller, message).await?))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = principal(&request)?.clone();
        let (id, patch) = decode_update(request.into_inner())?;
        let user = self.accounts.update(&caller, id, &patch).await?;
        Ok(Response::new(user_to_proto(&user)))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = principal(&request)?;
        let id =
            parse_id(&request.get_ref().user_id).map_err(|e| AppError::invalid("user_id", &e))?;
        self.accounts.delete(caller, id).await?;
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
        request: Request<pb::StreamUsersRequest>,
    ) -> Result<Response<Self::StreamUsersStream>, Status> {
        principal(&request)?;
        let (filter, limit) = Self::stream_request(request.get_ref())?;
        let accounts = Arc::clone(&self.accounts);
        let stream = self.streams.open(move |tx| async move {
            // Rows come from the database cursor as the client reads them.
            let mut rows = std::pin::pin!(accounts.stream_users(filter, limit));
            while let Some(row) = rows.next().await {
                let user = row?;
                if tx.send(user_to_proto(&user)).await.is_err() {
                    break;
                }
            }
            Ok(())
        })?;
        Ok(Response::new(stream))
    }

    async fn bulk_create_users(
        &self,
        request: Request<Streaming<pb::CreateUserRequest>>,
    ) -> Result<Response<pb::BulkCreateUsersResponse>, Status> {
        principal(&request)?;
        let accounts = Arc::clone(&self.accounts);
        let inbound = request.into_inner();
        let response = guarded(UserGrpc::bulk_create(accounts, inbound)).await?;
        Ok(Response::new(response))
    }

    type UserActivityStream = ResponseStream<pb::UserActivityEvent>;

    async fn user_activity(
        &self,
        request: Request<Streaming<pb::UserActivityRequest>>,
    ) -> Result<Response<Self::UserActivityStream>, Status> {
        let caller = principal(&request)?.clone();
        let mut inbound = request.into_inner();
        let accounts = Arc::clone(&self.accounts);
        let mut events = accounts.activity.subscribe();
        let stream = self.streams.open(move |tx| async move {
            let mut subscribed = HashSet::new();
            let mut requests_open = true;
            loop {
                tokio::select! {
                    req = inbound.message(), if requests_open => match req? {
                        Some(req) => change_subscription(&accounts, &caller, &mut subscribed, req).await?,
                        // The client stopped sending requests; keep sending events.
                        None => requests_open = false,
                    },
                    event = events.recv() => match event {
                        Ok(event) if subscribed.contains(&event.user.id) => {
                            if tx.send(activity_to_proto(&event)).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(missed)) => {
                            return Err(Status::resource_exhausted(format!(
                                "the subscriber fell {missed} events behind; resubscribe"
                            )));
                        }
                        Err(RecvError::Closed) => {
                            return Err(Status::unavailable("activity feed closed"));
                        }
                    },
                    _ = tx.closed() => return Ok(()),
                }
            }
        })?;
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use shop_auth::password::MAX_PASSWORD_BYTES;
    use shop_core::pagination::MAX_TOKEN_CHARS;

    use super::*;

    /// The `max_request_bytes` the proto declares for `method`.
    fn declared(method: &str) -> usize {
        shop_proto::policy::lookup(&format!("/shop.user.v1.UserService/{method}"))
            .expect("a declared method")
            .max_request_bytes as usize
    }

    /// The widest character UTF-8 has: 4 bytes.
    const WIDE: char = '\u{1D11E}';

    fn wide(chars: usize) -> String {
        WIDE.to_string().repeat(chars)
    }

    /// A valid address of the longest length accepted.
    fn longest_email() -> String {
        let email = format!(
            "{}@{}.{}.{}.ee",
            "a".repeat(64),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(58)
        );
        assert_eq!(email.len(), Email::MAX_LEN);
        email
    }

    #[test]
    fn the_largest_valid_requests_fit_their_declared_limits() {
        let sign_up = pb::CreateUserRequest {
            email: longest_email(),
            username: format!("u{}", "9".repeat(Username::MAX_LEN - 1)),
            password: "p".repeat(MAX_PASSWORD_BYTES),
            first_name: wide(PersonName::MAX_CHARS),
            last_name: wide(PersonName::MAX_CHARS),
        };
        assert!(decode_sign_up(sign_up.clone()).is_ok(), "valid");
        for method in ["CreateUser", "BulkCreateUsers"] {
            assert!(sign_up.encoded_len() <= declared(method), "{method}");
        }

        let update = pb::UpdateUserRequest {
            user_id: Uuid::now_v7().to_string(),
            username: Some(sign_up.username.clone()),
            first_name: Some(wide(PersonName::MAX_CHARS)),
            last_name: Some(wide(PersonName::MAX_CHARS)),
            bio: Some(wide(Bio::MAX_CHARS)),
            status: Some(pb::UserStatus::Suspended as i32),
            roles: Some(pb::RoleSet {
                roles: vec![pb::Role::Admin as i32; MAX_ROLES],
            }),
        };
        assert!(decode_update(update.clone()).is_ok(), "valid");
        assert!(update.encoded_len() <= declared("UpdateUser"));

        let list = pb::ListUsersRequest {
            page_size: i32::MAX,
            page_token: "A".repeat(MAX_TOKEN_CHARS),
            status: i32::MAX,
            search: wide(MAX_SEARCH_CHARS),
        };
        assert!(list.encoded_len() <= declared("ListUsers"));
        let stream = pb::StreamUsersRequest {
            status: i32::MAX,
            search: wide(MAX_SEARCH_CHARS),
            limit: i32::MAX,
        };
        assert!(stream.encoded_len() <= declared("StreamUsers"));

        let by_email = pb::GetUserRequest {
            identifier: Some(pb::get_user_request::Identifier::Email(longest_email())),
        };
        assert!(by_email.encoded_len() <= declared("GetUser"));
        let activity = pb::UserActivityRequest {
            action: i32::MAX,
            user_id: Uuid::now_v7().to_string(),
        };
        assert!(activity.encoded_len() <= declared("UserActivity"));
        assert!(
            pb::DeleteUserRequest {
                user_id: Uuid::now_v7().to_string()
            }
            .encoded_len()
                <= declared("DeleteUser")
        );
    }

    #[test]
    fn a_huge_role_set_is_one_violation_and_its_entries_are_not_looked_at() {
        let update = pb::UpdateUserRequest {
            user_id: Uuid::now_v7().to_string(),
            roles: Some(pb::RoleSet {
                roles: vec![99; 1_000_000],
            }),
            ..Default::default()
        };
        let Err(AppError::InvalidArgument(report)) = decode_update(update) else {
            panic!("a million roles were accepted");
        };
        assert_eq!(report.len(), 1, "{report:?}");
        assert_eq!(report[0].field, "roles.roles");
    }
}
