//! One spawn helper per service: the service running in this process with
//! what tests need (a bootstrap admin, bcrypt at its cheapest, a short
//! grace period, fast health checks), used by its own tests and by the
//! tests of every service and tool that calls it.

use std::{net::SocketAddr, path::Path};

use crate::{
    app::{App, config},
    stack::{ADMIN_EMAIL, ADMIN_PASSWORD},
};

/// Flags every in-process service gets.
const COMMON: [&str; 4] = ["--shutdown-grace", "2s", "--health-check-interval", "200ms"];

/// user-service on `database_url`, its keys in `data_dir`, with the
/// bootstrap admin [`ADMIN_EMAIL`] / [`ADMIN_PASSWORD`] and `flags`,
/// serving.
pub async fn user_service(database_url: &str, data_dir: &Path, flags: &[&str]) -> App {
    App::start(
        user_service::run,
        user_service_config(database_url, data_dir, flags),
    )
    .await
}

/// The configuration [`user_service`] runs with.
pub fn user_service_config(
    database_url: &str,
    data_dir: &Path,
    flags: &[&str],
) -> user_service::Config {
    user_service_config_with(
        database_url,
        data_dir,
        Some((ADMIN_EMAIL, ADMIN_PASSWORD)),
        flags,
    )
}

/// user-service's configuration with `bootstrap` as its bootstrap admin
/// (email, password), or none.
pub fn user_service_config_with(
    database_url: &str,
    data_dir: &Path,
    bootstrap: Option<(&str, &str)>,
    flags: &[&str],
) -> user_service::Config {
    let data_dir = data_dir.display().to_string();
    let mut args = vec!["--database-url", database_url, "--data-dir", &data_dir];
    // Fast hashes, unless the test asks for its own cost.
    if !flags.contains(&"--bcrypt-cost") {
        args.extend(["--bcrypt-cost", "4"]);
    }
    if let Some((email, password)) = bootstrap {
        args.extend([
            "--bootstrap-admin-email",
            email,
            "--bootstrap-admin-password",
            password,
        ]);
    }
    args.extend(COMMON);
    args.extend_from_slice(flags);
    config(&args)
}

/// order-service on `database_url`, its secrets in `data_dir`, calling the
/// user-service at `users` and the inventory-service at `inventory`, with
/// `flags`, serving.
pub async fn order_service(
    database_url: &str,
    data_dir: &Path,
    users: SocketAddr,
    inventory: SocketAddr,
    flags: &[&str],
) -> App {
    App::start(
        order_service::run,
        order_service_config(database_url, data_dir, users, inventory, flags),
    )
    .await
}

/// The configuration [`order_service`] runs with. Its service account
/// secret is `<data_dir>/service-accounts/order-service.secret` (its
/// default), generated at start: give user-service that directory as its
/// `--service-accounts-dir`.
pub fn order_service_config(
    database_url: &str,
    data_dir: &Path,
    users: SocketAddr,
    inventory: SocketAddr,
    flags: &[&str],
) -> order_service::Config {
    let data_dir = data_dir.display().to_string();
    let users = format!("http://{users}");
    let inventory = format!("http://{inventory}");
    let mut args = vec![
        "--database-url",
        database_url,
        "--data-dir",
        &data_dir,
        "--user-service-url",
        &users,
        "--inventory-service-url",
        &inventory,
    ];
    args.extend(COMMON);
    args.extend_from_slice(flags);
    config(&args)
}

/// inventory-service on `database_url`, its secrets in `data_dir`, with
/// token keys from the user-service at `users`, with `flags`, serving.
pub async fn inventory_service(
    database_url: &str,
    data_dir: &Path,
    users: SocketAddr,
    flags: &[&str],
) -> App {
    let data_dir = data_dir.display().to_string();
    let users = format!("http://{users}");
    let mut args = vec![
        "--database-url",
        database_url,
        "--data-dir",
        &data_dir,
        "--user-service-url",
        &users,
    ];
    args.extend(COMMON);
    args.extend_from_slice(flags);
    App::start(inventory_service::run, config(&args)).await
}

/// Puts `products` (sku, unit price in EUR cents, units on hand) into the
/// inventory database at `database_url` (migrating it first), for tests
/// that order them.
pub async fn seed_products(database_url: &str, products: &[(&str, i64, i64)]) {
    use inventory_service::domain::{ProductDraft, Sku, StockChange};
    // Two connections: on PostgreSQL the change listener holds one.
    let store = inventory_service::repo::connect(
        database_url,
        inventory_service::repo::ConnectOptions::new(2, None),
        inventory_service::repo::ProductCache::OFF,
    )
    .await
    .expect("inventory database");
    let inventory =
        inventory_service::app::Inventory::new(store, std::time::Duration::from_secs(300));
    for &(sku, price, units) in products {
        let sku = Sku::parse(sku).expect("a valid sku");
        inventory
            .put_product(&ProductDraft {
                sku: sku.clone(),
                name: format!("Test product {}", sku.as_str()),
                unit_price_cents: price,
                currency: shop_core::currency::CurrencyCode::parse("EUR").unwrap(),
                active: true,
            })
            .await
            .expect("PutProduct");
        inventory
            .adjust_stock(&StockChange {
                request_id: format!("seed-{}", sku.as_str()),
                sku,
                delta: units,
                reason: "test stock".into(),
            })
            .await
            .expect("AdjustStock");
    }
}
