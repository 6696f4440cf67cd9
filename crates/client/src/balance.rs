//! The endpoints of one target and the choice among them.
//!
//! Each endpoint has its own HTTP/2 connection (a tonic [`Channel`]). A call
//! goes to the less busy of two ready endpoints picked at random (power of
//! two choices). An endpoint whose connection fails is taken out at once and
//! reconnected in the background with gRPC's connection backoff; it takes
//! traffic again as soon as a connection succeeds. A DNS target is
//! re-resolved periodically: new addresses get traffic, vanished ones stop
//! getting it.
//!
//! [`Balance`] is the innermost service of a client channel: one attempt,
//! one endpoint.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{Request, Response, Uri};
use tokio::sync::watch;
use tonic::{body::Body, transport::Channel};
use tower::{Service, ServiceExt as _};

use crate::{attempt::AttemptError, backoff::ConnectionBackoff, dial::Dialer, target::Target};

/// One address of the target.
pub struct EndpointSlot {
    uri: Uri,
    channel: Mutex<Channel>,
    up: AtomicBool,
    removed: AtomicBool,
    in_flight: AtomicUsize,
}

impl EndpointSlot {
    /// The endpoint's address.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Takes calls.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// Decrements an endpoint's in-flight count when the attempt ends.
struct InFlight(Arc<EndpointSlot>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The endpoints of a target.
pub struct Endpoints {
    target: String,
    dialer: Dialer,
    reconnect: ReconnectBackoff,
    slots: RwLock<Vec<Arc<EndpointSlot>>>,
    resolved: watch::Sender<bool>,
    on_recovered: Box<dyn Fn() + Send + Sync>,
}

/// Settings of the reconnect backoff.
#[derive(Debug, Clone, Copy)]
pub struct ReconnectBackoff {
    /// First delay.
    pub initial: Duration,
    /// Ceiling.
    pub max: Duration,
    /// Growth per failed attempt.
    pub multiplier: f64,
    /// ± randomisation (0.2 = ±20%).
    pub jitter: f64,
}

impl Endpoints {
    /// The endpoints of `target`; a DNS target is resolved now and every
    /// `refresh` on a background task that ends with the last clone of the
    /// returned handle. `on_recovered` runs whenever a taken-out endpoint
    /// is reconnected.
    pub fn new(
        name: &str,
        target: Target,
        dialer: Dialer,
        reconnect: ReconnectBackoff,
        resolver: Arc<dyn Resolve>,
        refresh: Duration,
        on_recovered: Box<dyn Fn() + Send + Sync>,
    ) -> Arc<Endpoints> {
        let endpoints = Arc::new(Endpoints {
            target: name.to_owned(),
            dialer,
            reconnect,
            slots: RwLock::new(Vec::new()),
            resolved: watch::Sender::new(false),
            on_recovered,
        });
        match target {
            Target::Static(uris) => {
                endpoints.replace(uris);
                endpoints.resolved.send_replace(true);
            }
            Target::Dns { host, port } => {
                let weak = Arc::downgrade(&endpoints);
                tokio::spawn(resolve_periodically(weak, resolver, host, port, refresh));
            }
        }
        endpoints
    }

    /// Every endpoint (for tests and logs).
    pub fn slots(&self) -> Vec<Arc<EndpointSlot>> {
        self.slots.read().expect("endpoints lock").clone()
    }

    /// Sends `request` to a ready endpoint.
    pub async fn call(
        self: &Arc<Self>,
        request: Request<Body>,
    ) -> Result<Response<Body>, AttemptError> {
        let mut resolved = self.resolved.subscribe();
        // A DNS target has no endpoints before its first resolution; wait
        // for it (the caller's deadline bounds the wait).
        if resolved.wait_for(|done| *done).await.is_err() {
            return Err(AttemptError::NoEndpoint);
        }
        let slot = self.pick().ok_or(AttemptError::NoEndpoint)?;
        shop_telemetry::metrics::count_attempt(request.uri().path());
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        let _in_flight = InFlight(Arc::clone(&slot));
        let channel = slot.channel.lock().expect("channel lock").clone();
        match channel.oneshot(request).await {
            Ok(response) => Ok(response),
            Err(error) if shop_core::context::is_timeout(&error) => Err(AttemptError::Timeout),
            Err(error) => {
                self.take_out(&slot, &error);
                Err(AttemptError::Transport(error))
            }
        }
    }

    /// Power of two choices among the ready endpoints.
    fn pick(&self) -> Option<Arc<EndpointSlot>> {
        let slots = self.slots.read().expect("endpoints lock");
        let ready: Vec<&Arc<EndpointSlot>> = slots.iter().filter(|s| s.is_up()).collect();
        match ready.len() {
            0 => None,
            1 => Some(Arc::clone(ready[0])),
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (ready[a], ready[b]);
                let busier = |s: &EndpointSlot| s.in_flight.load(Ordering::Acquire);
                Some(Arc::clone(if busier(b) < busier(a) { b } else { a }))
            }
        }
    }

    /// Takes `slot` out of the rotation and reconnects it in the
    /// background.
    fn take_out(self: &Arc<Self>, slot: &Arc<EndpointSlot>, error: &tonic::transport::Error) {
        if !slot.up.swap(false, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            target = %self.target,
            endpoint = %slot.uri,
            error = %error_chain(error),
            "endpoint taken out of rotation; reconnecting with backoff"
        );
        self.export_counts();
        let endpoints = Arc::downgrade(self);
        let slot = Arc::clone(slot);
        let settings = self.reconnect;
        tokio::spawn(async move {
            let mut backoff = ConnectionBackoff::new(
                settings.initial,
                settings.max,
                settings.multiplier,
                settings.jitter,
            );
            loop {
                tokio::time::sleep(backoff.next_delay()).await;
                let Some(endpoints) = endpoints.upgrade() else {
                    return;
                };
                if slot.removed.load(Ordering::Acquire) {
                    return;
                }
                match endpoints.dialer.connect(&slot.uri).await {
                    Ok(channel) => {
                        *slot.channel.lock().expect("channel lock") = channel;
                        slot.up.store(true, Ordering::Release);
                        tracing::info!(
                            target = %endpoints.target,
                            endpoint = %slot.uri,
                            "endpoint reconnected; back in rotation"
                        );
                        endpoints.export_counts();
                        (endpoints.on_recovered)();
                        return;
                    }
                    Err(error) => tracing::debug!(
                        target = %endpoints.target,
                        endpoint = %slot.uri,
                        error = %error_chain(&error),
                        "reconnect failed"
                    ),
                }
            }
        });
    }

    /// Makes the endpoint set `uris`: new ones join (lazily connected),
    /// missing ones leave, the others keep their connection and state.
    fn replace(&self, uris: Vec<Uri>) {
        let mut slots = self.slots.write().expect("endpoints lock");
        let wanted: BTreeSet<String> = uris.iter().map(|u| u.to_string()).collect();
        slots.retain(|slot| {
            let keep = wanted.contains(&slot.uri.to_string());
            if !keep {
                slot.removed.store(true, Ordering::Release);
                tracing::info!(target = %self.target, endpoint = %slot.uri, "endpoint removed");
            }
            keep
        });
        for uri in uris {
            if slots.iter().any(|s| s.uri == uri) {
                continue;
            }
            tracing::info!(target = %self.target, endpoint = %uri, "endpoint added");
            slots.push(Arc::new(EndpointSlot {
                channel: Mutex::new(self.dialer.lazy(&uri)),
                uri,
                up: AtomicBool::new(true),
                removed: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
            }));
        }
        drop(slots);
        self.export_counts();
    }

    fn export_counts(&self) {
        let slots = self.slots.read().expect("endpoints lock");
        let ready = slots.iter().filter(|s| s.is_up()).count();
        metrics::gauge!("grpc_client_endpoints", "target" => self.target.clone(), "state" => "ready")
            .set(ready as f64);
        metrics::gauge!("grpc_client_endpoints", "target" => self.target.clone(), "state" => "down")
            .set((slots.len() - ready) as f64);
    }
}

/// Name resolution, replaceable in tests.
#[async_trait::async_trait]
pub trait Resolve: Send + Sync + 'static {
    /// The addresses `host:port` stands for now.
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo` through tokio).
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

async fn resolve_periodically(
    endpoints: Weak<Endpoints>,
    resolver: Arc<dyn Resolve>,
    host: String,
    port: u16,
    refresh: Duration,
) {
    loop {
        let result = resolver.resolve(&host, port).await;
        let Some(endpoints) = endpoints.upgrade() else {
            return;
        };
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                let mut addrs: Vec<SocketAddr> = addrs;
                addrs.sort();
                addrs.dedup();
                let uris = addrs
                    .iter()
                    .filter_map(|a| format!("http://{a}").parse::<Uri>().ok())
                    .collect();
                endpoints.replace(uris);
            }
            // Keep what we have: a resolver hiccup must not empty the set.
            Ok(_) => {
                tracing::warn!(target = %endpoints.target, %host, "DNS name resolved to no address; keeping the current endpoints")
            }
            Err(error) => {
                tracing::warn!(target = %endpoints.target, %host, %error, "DNS resolution failed; keeping the current endpoints")
            }
        }
        endpoints.resolved.send_replace(true);
        // Nothing to call yet: try again soon rather than a whole interval
        // later.
        let empty = endpoints.slots.read().expect("endpoints lock").is_empty();
        drop(endpoints);
        let wait = if empty {
            refresh.min(Duration::from_secs(1))
        } else {
            refresh
        };
        tokio::time::sleep(wait).await;
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// The endpoints of a target as a tower service: each call is one attempt
/// on one endpoint.
#[derive(Clone)]
pub struct Balance {
    endpoints: Arc<Endpoints>,
}

impl Balance {
    /// Attempts on `endpoints`.
    pub fn new(endpoints: Arc<Endpoints>) -> Balance {
        Balance { endpoints }
    }
}

impl Service<Request<Body>> for Balance {
    type Response = Response<Body>;
    type Error = AttemptError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, AttemptError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), AttemptError>> {
        // Readiness is per endpoint, decided when the attempt picks one.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let endpoints = Arc::clone(&self.endpoints);
        Box::pin(async move { endpoints.call(request).await })
    }
}
