//! The one stand-in UserService of the workspace: GetUser answers a fixed
//! user (the same message shop's GetUser returns), or a status chosen at
//! run time, and calls are counted. It is the bare tonic server's service
//! (`shop-bare-server`, the yardstick of every benchmark), the handler of
//! the stack cost benchmark, and the scripted downstream of the client
//! kit's tests. Nothing here is a shop service: tests of shop services run
//! the real ones.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicI32, AtomicU32, Ordering},
    },
};

use shop_proto::user::v1::{self as pb, user_service_server::UserService};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

/// The user GetUser answers.
pub fn fixed_user() -> pb::User {
    pb::User {
        id: "01a20000-0000-7000-8000-000000000000".into(),
        email: "bench@example.com".into(),
        username: "bench".into(),
        first_name: "Bench".into(),
        last_name: "Mark".into(),
        status: pb::UserStatus::Active as i32,
        roles: vec![pb::Role::Customer as i32],
        ..Default::default()
    }
}

/// A UserService whose GetUser and CreateUser answer [`fixed_user`] (or
/// the code set with [`FixedUsers::answer_with`]) and count their calls;
/// every other method is UNIMPLEMENTED. Clones share the code and counts.
#[derive(Debug, Clone, Default)]
pub struct FixedUsers {
    code: Arc<AtomicI32>,
    get_user_calls: Arc<AtomicU32>,
    create_user_calls: Arc<AtomicU32>,
}

impl FixedUsers {
    /// Answer `code` from now on (`Code::Ok`: the fixed user).
    pub fn answer_with(&self, code: Code) {
        self.code.store(code as i32, Ordering::SeqCst);
    }

    /// GetUser calls so far.
    pub fn get_user_calls(&self) -> u32 {
        self.get_user_calls.load(Ordering::SeqCst)
    }

    /// CreateUser calls so far.
    pub fn create_user_calls(&self) -> u32 {
        self.create_user_calls.load(Ordering::SeqCst)
    }

    fn answer(&self) -> Result<Response<pb::User>, Status> {
        match Code::from(self.code.load(Ordering::Relaxed)) {
            Code::Ok => Ok(Response::new(fixed_user())),
            code => Err(Status::new(code, "scripted answer")),
        }
    }
}

/// The stream type of the streaming methods (never produced).
pub type NoStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented(
        "stand-in UserService: GetUser and CreateUser only",
    ))
}

#[tonic::async_trait]
impl UserService for FixedUsers {
    async fn create_user(
        &self,
        _: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        self.create_user_calls.fetch_add(1, Ordering::Relaxed);
        self.answer()
    }
    async fn get_user(&self, _: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        self.get_user_calls.fetch_add(1, Ordering::Relaxed);
        self.answer()
    }
    async fn update_user(
        &self,
        _: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        unimplemented()
    }
    async fn delete_user(&self, _: Request<pb::DeleteUserRequest>) -> Result<Response<()>, Status> {
        unimplemented()
    }
    async fn list_users(
        &self,
        _: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        unimplemented()
    }
    type StreamUsersStream = NoStream<pb::User>;
    async fn stream_users(
        &self,
        _: Request<pb::StreamUsersRequest>,
    ) -> Result<Response<Self::StreamUsersStream>, Status> {
        unimplemented()
    }
    async fn bulk_create_users(
        &self,
        _: Request<Streaming<pb::CreateUserRequest>>,
    ) -> Result<Response<pb::BulkCreateUsersResponse>, Status> {
        unimplemented()
    }
    type UserActivityStream = NoStream<pb::UserActivityEvent>;
    async fn user_activity(
        &self,
        _: Request<Streaming<pb::UserActivityRequest>>,
    ) -> Result<Response<Self::UserActivityStream>, Status> {
        unimplemented()
    }
}
