//! Every service of the stack as separate processes, wired to each other
//! the way docker-compose wires them. The services are one table
//! ([`SERVICES`]): a new service is one line there, and every test that
//! starts a stack starts it too.

use std::path::Path;

use shop_server::ServiceInfo;

use crate::{Backend, process::Service};

/// Every service, in start order (the token issuer first): its name, which
/// is also its binary's, default ports and database name.
pub const SERVICES: &[ServiceInfo] = &[
    user_service::SERVICE,
    inventory_service::SERVICE,
    order_service::SERVICE,
];

/// The bootstrap admin's email in every end-to-end stack.
pub const ADMIN_EMAIL: &str = "admin@e2e.test";
/// The bootstrap admin's password in every end-to-end stack.
pub const ADMIN_PASSWORD: &str = "e2e-admin-password";

/// How one service of a stack differs from the defaults.
#[derive(Debug, Clone)]
pub struct Spec {
    name: &'static str,
    env: Vec<(&'static str, String)>,
    replicas: usize,
}

impl Spec {
    /// The service `name` (one of [`SERVICES`]), one replica.
    pub fn new(name: &'static str) -> Spec {
        Spec {
            name,
            env: Vec::new(),
            replicas: 1,
        }
    }

    /// With the environment variable `key` set to `value`.
    pub fn env(mut self, key: &'static str, value: impl Into<String>) -> Spec {
        self.env.push((key, value.into()));
        self
    }

    /// With every `(key, value)` of `env` set.
    pub fn envs(self, env: &[(&'static str, &str)]) -> Spec {
        env.iter().fold(self, |spec, (k, v)| spec.env(k, *v))
    }

    /// Every service of [`SERVICES`] with `env` set.
    pub fn everyone(env: &[(&'static str, &str)]) -> Vec<Spec> {
        SERVICES
            .iter()
            .map(|s| Spec::new(s.name).envs(env))
            .collect()
    }

    /// With `n` replicas sharing one database (the services after it get
    /// every replica's address).
    pub fn replicas(mut self, n: usize) -> Spec {
        self.replicas = n.max(1);
        self
    }
}

/// What every service of an end-to-end stack is given, whether it has
/// the setting or not (a setting a service lacks is ignored): its
/// database, its data directory, the bootstrap admin, test-speed bcrypt
/// and a short grace period.
pub fn base_env(database_url: String, data_dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url),
        ("DATA_DIR", data_dir.display().to_string()),
        ("BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL.into()),
        ("BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
        // Test speed: bcrypt at its minimum cost.
        ("BCRYPT_COST", "4".into()),
        ("SHUTDOWN_GRACE", "5s".into()),
    ]
}

/// `user-service` -> `USER_SERVICE_URL`: the setting through which the
/// services after it find it.
pub fn url_setting(name: &str) -> String {
    format!("{}_URL", name.to_ascii_uppercase().replace('-', "_"))
}

/// The services of one end-to-end test.
pub struct Stack {
    /// Working directory of every process (databases, keys, logs).
    pub dir: tempfile::TempDir,
    services: Vec<(&'static str, Vec<Service>)>,
}

impl Stack {
    /// Starts every service in [`SERVICES`] on `backend`, each as `specs`
    /// says (a service without a spec gets the defaults). Each service is
    /// handed the URL of every service started before it.
    pub async fn start(backend: Backend, specs: &[Spec]) -> Stack {
        for spec in specs {
            assert!(
                SERVICES.iter().any(|s| s.name == spec.name),
                "no service named {}",
                spec.name
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let mut services: Vec<(&'static str, Vec<Service>)> = Vec::new();
        let mut upstream: Vec<(String, String)> = Vec::new();
        for info in SERVICES {
            let spec = specs
                .iter()
                .find(|s| s.name == info.name)
                .cloned()
                .unwrap_or_else(|| Spec::new(info.name));
            let database = backend
                .database_url(&format!("e2e_{}", info.database), dir.path())
                .await;
            let mut env = base_env(database, &dir.path().join(format!("{}-data", info.name)));
            // Service accounts as devstack has them: each caller's secret,
            // generated at its first start, in the directory user-service
            // reads; and the development catalogue to order from.
            let accounts = dir.path().join("service-accounts");
            env.push(("SERVICE_ACCOUNTS_DIR", accounts.display().to_string()));
            env.push((
                "SERVICE_SECRET_FILE",
                accounts
                    .join(format!("{}.secret", info.name))
                    .display()
                    .to_string(),
            ));
            env.push(("SEED_CATALOGUE", "true".into()));
            env.push(("SEED_CATALOGUE_UNITS", "1000000".into()));
            env.extend(upstream.iter().map(|(k, v)| (k.as_str(), v.clone())));
            env.extend(spec.env.iter().cloned());
            let mut replicas = Vec::new();
            for replica in 0..spec.replicas {
                let label = if spec.replicas == 1 {
                    info.name.to_owned()
                } else {
                    format!("{}-{}", info.name, replica + 1)
                };
                replicas.push(Service::start_as(&label, info.name, dir.path(), &env).await);
            }
            let urls: Vec<String> = replicas
                .iter()
                .map(|r| format!("http://{}", r.addr))
                .collect();
            upstream.push((url_setting(info.name), urls.join(",")));
            services.push((info.name, replicas));
        }
        Stack { dir, services }
    }

    /// The (first replica of the) service `name`.
    pub fn service(&self, name: &str) -> &Service {
        &self.replicas(name)[0]
    }

    /// The (first replica of the) service `name`, to stop or restart it.
    pub fn service_mut(&mut self, name: &str) -> &mut Service {
        &mut self.replicas_mut(name)[0]
    }

    /// Every replica of the service `name`.
    pub fn replicas(&self, name: &str) -> &[Service] {
        self.services
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.as_slice())
            .unwrap_or_else(|| panic!("no service named {name} in the stack"))
    }

    /// Every replica of the service `name`, to stop or restart them.
    pub fn replicas_mut(&mut self, name: &str) -> &mut [Service] {
        self.services
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.as_mut_slice())
            .unwrap_or_else(|| panic!("no service named {name} in the stack"))
    }
}

/// The rows of `deploy/services.tsv`: name, gRPC port, admin port,
/// database (what the deployment files are generated from).
pub fn deployment_table() -> Vec<(String, u16, u16, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/services.tsv");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cols.len(), 7, "{line:?}: seven columns");
            (
                cols[0].to_owned(),
                cols[1].parse().expect("a gRPC port"),
                cols[2].parse().expect("an admin port"),
                cols[3].to_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_and_the_deployment_table_list_the_same_services() {
        let ours: Vec<(String, u16, u16, String)> = SERVICES
            .iter()
            .map(|s| {
                (
                    s.name.to_owned(),
                    s.grpc_port,
                    s.admin_port,
                    s.database.to_owned(),
                )
            })
            .collect();
        assert_eq!(
            ours,
            deployment_table(),
            "deploy/services.tsv and shop_testkit::stack::SERVICES disagree"
        );
    }
}
