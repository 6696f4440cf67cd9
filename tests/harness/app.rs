//! One service running inside the test process, on sockets the test bound
//! first: the in-process twin of [`crate::Service`], for service tests that
//! call a service through its generated client without starting a binary.

use std::{future::Future, net::SocketAddr, time::Duration};

use shop_server::{Listeners, ServiceConfig, service::parse_from};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

use crate::health::wait_until_serving;

/// The shutdown signal an in-process service runs until.
pub type Stop = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A service running in this process.
pub struct App {
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its admin HTTP address.
    pub admin: SocketAddr,
    name: &'static str,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// `C` parsed from `flags` (after the program name), with the service's
/// defaults and the environment.
///
/// # Panics
/// When the flags do not parse.
pub fn config<C: ServiceConfig>(flags: &[&str]) -> C {
    let name = C::SERVICE.name;
    parse_from::<C, _, _>(std::iter::once(name).chain(flags.iter().copied()))
        .unwrap_or_else(|e| panic!("{name} flags {flags:?}: {e}"))
}

impl App {
    /// Runs the service `run` with `config` on two fresh loopback ports;
    /// returns once it answers SERVING.
    ///
    /// # Panics
    /// When it does not come up within 15 s (run with `TEST_LOG=1` to see
    /// why).
    pub async fn start<C, F, Fut>(run: F, config: C) -> App
    where
        C: ServiceConfig,
        F: FnOnce(C, Listeners, Stop) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listeners = Listeners::ephemeral().await.expect("two loopback ports");
        let app = App::launch(run, config, listeners);
        app.wait_until_serving().await;
        app
    }

    /// Runs the service `run` with `config` on `listeners`, without waiting
    /// for it to serve.
    pub fn launch<C, F, Fut>(run: F, config: C, listeners: Listeners) -> App
    where
        C: ServiceConfig,
        F: FnOnce(C, Listeners, Stop) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        crate::init_test_logging();
        let (addr, admin) = (listeners.grpc_addr(), listeners.admin_addr());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(run(
            config,
            listeners,
            Box::pin(async move {
                let _ = stopped.await;
            }),
        ));
        App {
            addr,
            admin,
            name: C::SERVICE.name,
            shutdown: Some(shutdown),
            handle: Some(handle),
        }
    }

    /// A lazily connected channel to it.
    pub fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_lazy()
    }

    /// Waits (health polling, 15 s at most) until it answers SERVING.
    ///
    /// # Panics
    /// When it does not, or exits first.
    pub async fn wait_until_serving(&self) {
        let handle = self.handle.as_ref().expect("started");
        let name = self.name;
        wait_until_serving(self.channel(), "", Duration::from_secs(15), || {
            if handle.is_finished() {
                Err(format!(
                    "{name} exited during start-up (run with TEST_LOG=1)"
                ))
            } else {
                Ok(())
            }
        })
        .await;
    }

    /// Signals shutdown and waits (10 s at most) for the service to return
    /// what `run` returned.
    ///
    /// # Panics
    /// When it was stopped before, does not stop in time, or panicked.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within 10 s", self.name))
            .unwrap_or_else(|e| panic!("{} panicked: {e}", self.name))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
