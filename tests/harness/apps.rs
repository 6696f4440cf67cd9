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
/// user-service at `users`, with `flags`, serving.
pub async fn order_service(
    database_url: &str,
    data_dir: &Path,
    users: SocketAddr,
    flags: &[&str],
) -> App {
    App::start(
        order_service::run,
        order_service_config(database_url, data_dir, users, flags),
    )
    .await
}

/// The configuration [`order_service`] runs with.
pub fn order_service_config(
    database_url: &str,
    data_dir: &Path,
    users: SocketAddr,
    flags: &[&str],
) -> order_service::Config {
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
