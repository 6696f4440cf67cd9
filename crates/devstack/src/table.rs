//! The services devstack runs: one line each. A service crate that follows
//! the kit (a `SERVICE` [`ServiceInfo`], a `Config` implementing
//! [`ServiceConfig`], a `run(config, listeners, shutdown)`) joins the stack
//! with one [`Entry::of`] in [`services`], in start order (the token issuer
//! first).

use std::{future::Future, pin::Pin};

use shop_server::{
    Listeners, ServiceConfig, ServiceInfo, binary::Shutdown, service::parse_with_overrides,
};

/// A service's `run`, configured and ready to be spawned.
pub(crate) type Serving = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

type Start = Box<dyn Fn(&[(String, String)], Listeners, Shutdown) -> anyhow::Result<Serving>>;

/// One service of the stack.
pub(crate) struct Entry {
    /// Its name, default ports and database.
    pub(crate) info: ServiceInfo,
    /// What it serves besides health and reflection, for the banner.
    pub(crate) serves: &'static str,
    /// Parses its configuration from the environment with devstack's
    /// settings on top, and returns its `run`.
    pub(crate) start: Start,
}

impl Entry {
    /// The service configured by `C` and run by `run`.
    pub(crate) fn of<C, F, Fut>(serves: &'static str, run: F) -> Entry
    where
        C: ServiceConfig,
        F: Fn(C, Listeners, Shutdown) -> Fut + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Entry {
            info: C::SERVICE,
            serves,
            start: Box::new(move |settings, listeners, shutdown| {
                let config = parse_with_overrides::<C>(settings)?;
                Ok(Box::pin(run(config, listeners, shutdown)))
            }),
        }
    }
}

/// Every service of the stack, in start order.
pub(crate) fn services() -> Vec<Entry> {
    vec![
        Entry::of::<user_service::Config, _, _>("UserService, AuthService, ", user_service::run),
        Entry::of::<inventory_service::Config, _, _>("InventoryService, ", inventory_service::run),
        Entry::of::<order_service::Config, _, _>("OrderService, ", order_service::run),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devstack_runs_every_service_of_the_deployment_table() {
        let ours: Vec<(String, u16, u16, String)> = services()
            .iter()
            .map(|e| {
                (
                    e.info.name.to_owned(),
                    e.info.grpc_port,
                    e.info.admin_port,
                    e.info.database.to_owned(),
                )
            })
            .collect();
        assert_eq!(
            ours,
            shop_testkit::stack::deployment_table(),
            "deploy/services.tsv and devstack's table disagree"
        );
    }
}
