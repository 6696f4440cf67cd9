//! A user-service with a service account for order-service, and an
//! inventory-service that takes its token keys from it.

use shop_proto::{
    auth::v1::{IssueServiceTokenRequest, auth_service_client::AuthServiceClient},
    inventory::v1::{
        AdjustStockRequest, Product, PutProductRequest,
        inventory_service_client::InventoryServiceClient,
    },
};
use shop_testkit::{App, accounts, apps};
use tempfile::TempDir;
use tonic::transport::Channel;

pub(crate) use shop_testkit::{Backend, authed};

/// Both services, and tokens of each kind of caller.
pub(crate) struct Fixture {
    pub(crate) inventory: InventoryServiceClient<Channel>,
    pub(crate) admin: String,
    pub(crate) customer: String,
    /// order-service's service token.
    pub(crate) service: String,
    _services: (App, App),
    _dir: TempDir,
}

impl Fixture {
    /// Both services on SQLite with default settings.
    pub(crate) async fn spawn() -> Fixture {
        Fixture::spawn_with(Backend::Sqlite, &[]).await
    }

    /// inventory-service on `backend` with `flags`.
    pub(crate) async fn spawn_with(backend: Backend, flags: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let accounts_dir = dir.path().join("service-accounts");
        let secret: String =
            shop_auth::load_or_generate_secret(&accounts_dir.join("order-service.secret"))
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
        let users_db = format!("sqlite://{}", dir.path().join("users.db").display());
        let user_service = apps::user_service(
            &users_db,
            &dir.path().join("user-data"),
            &["--service-accounts-dir", accounts_dir.to_str().unwrap()],
        )
        .await;
        let inventory_db = backend.database_url("inventory", dir.path()).await;
        let inventory_service = apps::inventory_service(
            &inventory_db,
            &dir.path().join("inventory-data"),
            user_service.addr,
            flags,
        )
        .await;
        let service = AuthServiceClient::new(user_service.channel())
            .issue_service_token(IssueServiceTokenRequest {
                service_name: "order-service".into(),
                secret,
            })
            .await
            .expect("order-service's service token")
            .into_inner()
            .access_token;
        let admin = accounts::admin_token(user_service.channel()).await;
        let (_, customer) = accounts::customer(user_service.channel(), "shopper").await;
        Fixture {
            inventory: InventoryServiceClient::new(inventory_service.channel()),
            admin,
            customer,
            service,
            _services: (user_service, inventory_service),
            _dir: dir,
        }
    }

    /// Creates `sku` at `price` EUR cents with `stock` units on hand.
    pub(crate) async fn product(&self, sku: &str, price: i64, stock: i64) -> Product {
        let mut inventory = self.inventory.clone();
        inventory
            .put_product(authed(
                PutProductRequest {
                    sku: sku.into(),
                    name: format!("Product {sku}"),
                    unit_price_cents: price,
                    currency_code: "EUR".into(),
                    active: true,
                },
                &self.admin,
            ))
            .await
            .expect("PutProduct");
        inventory
            .adjust_stock(authed(
                AdjustStockRequest {
                    sku: sku.into(),
                    delta: stock,
                    reason: "initial stock".into(),
                    request_id: format!("initial-{sku}"),
                },
                &self.admin,
            ))
            .await
            .expect("AdjustStock")
            .into_inner()
    }

    /// `message` as order-service sends it: its own service token, and the
    /// customer's token for audit.
    pub(crate) fn as_service<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = authed(message, &self.customer);
        request
            .metadata_mut()
            .insert("x-service-token", self.service.parse().unwrap());
        request
    }

    /// The product now.
    pub(crate) async fn get(&self, sku: &str) -> Product {
        self.inventory
            .clone()
            .get_product(authed(
                shop_proto::inventory::v1::GetProductRequest { sku: sku.into() },
                &self.customer,
            ))
            .await
            .expect("GetProduct")
            .into_inner()
    }
}
