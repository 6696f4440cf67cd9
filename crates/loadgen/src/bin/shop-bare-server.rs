//! `shop-bare-server`: the yardstick for shop's numbers. Bare tonic, no
//! middleware, no database, no auth: `UserService.GetUser` answers a fixed
//! user (the same message shop's GetUser returns). `scripts/bench.sh` puts
//! the same load on it as on the real services, in the same run, so every
//! figure is also a ratio to what tonic alone does on that machine.

use std::net::SocketAddr;

use clap::Parser as _;
use shop_proto::user::v1::{
    self as pb,
    user_service_server::{UserService, UserServiceServer},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// A bare tonic UserService that answers GetUser with a fixed user.
#[derive(Debug, clap::Parser)]
#[command(name = "shop-bare-server", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "BARE_ADDR", default_value = "127.0.0.1:50060")]
    addr: SocketAddr,
}

#[derive(Default)]
struct Fixed;

#[tonic::async_trait]
impl UserService for Fixed {
    async fn create_user(
        &self,
        _: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Err(Status::unimplemented("bare server: GetUser only"))
    }
    async fn get_user(&self, _: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        Ok(Response::new(pb::User {
            id: "01a20000-0000-7000-8000-000000000000".into(),
            email: "bench@example.com".into(),
            username: "bench".into(),
            first_name: "Bench".into(),
            last_name: "Mark".into(),
            status: pb::UserStatus::Active as i32,
            roles: vec![pb::Role::Customer as i32],
            ..Default::default()
        }))
    }
    async fn update_user(
        &self,
        _: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Err(Status::unimplemented("bare server: GetUser only"))
    }
    async fn delete_user(&self, _: Request<pb::DeleteUserRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("bare server: GetUser only"))
    }
    async fn list_users(
        &self,
        _: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        Err(Status::unimplemented("bare server: GetUser only"))
    }
    type StreamUsersStream = ReceiverStream<Result<pb::User, Status>>;
    async fn stream_users(
        &self,
        _: Request<pb::StreamUsersRequest>,
    ) -> Result<Response<Self::StreamUsersStream>, Status> {
        Err(Status::unimplemented("bare server: GetUser only"))
    }
    async fn bulk_create_users(
        &self,
        _: Request<Streaming<pb::CreateUserRequest>>,
    ) -> Result<Response<pb::BulkCreateUsersResponse>, Status> {
        Err(Status::unimplemented("bare server: GetUser only"))
    }
    type UserActivityStream = ReceiverStream<Result<pb::UserActivityEvent, Status>>;
    async fn user_activity(
        &self,
        _: Request<Streaming<pb::UserActivityRequest>>,
    ) -> Result<Response<Self::UserActivityStream>, Status> {
        Err(Status::unimplemented("bare server: GetUser only"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    eprintln!("shop-bare-server: listening on {}", args.addr);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(UserServiceServer::new(Fixed))
        .serve_with_shutdown(args.addr, shop_middleware::server::shutdown_signal())
        .await?;
    Ok(())
}
