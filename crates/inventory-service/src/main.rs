//! The inventory-service binary: the kit's `service_main` over
//! [`inventory_service::run`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_server::binary::service_main::<inventory_service::Config, _, _>(inventory_service::run)
        .await
}
