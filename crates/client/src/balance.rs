//! The endpoints of one target and the choice among them.
//!
//! Each endpoint has its own HTTP/2 connection ([`Connection`]). A call
//! goes to the less busy of two ready endpoints picked at random (power of
//! two choices), among those with an open connection when there are any. An
//! endpoint whose connection fails is taken out at once and reconnected in
//! the background with gRPC's connection backoff; it takes traffic again as
//! soon as a connection succeeds. An endpoint whose connection ends (the
//! server's GOAWAY, say, when it shuts down gracefully) is reconnected in
//! the background at once (and again with backoff while that fails), and
//! meanwhile gets no calls while another endpoint is connected
//! ([`crate::watched`]): a restarting replica's vanished address never
//! holds a call for the connect timeout. A DNS target is re-resolved
//! periodically: new addresses are connected in the background and get
//! traffic, vanished ones stop getting it.
//!
//! [`Balance`] is the innermost service of a client channel: one attempt,
//! one endpoint.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{Request, Response, Uri};
use tokio::sync::watch;
use tonic::body::Body;
use tower::{Service, ServiceExt as _};

use crate::{
    attempt::AttemptError, backoff::ConnectionBackoff, connection::Connection, dial::Dialer,
    target::Target, watched::ConnectionWatch,
};

/// One address of the target.
pub struct EndpointSlot {
    uri: Uri,
    connection: Mutex<Current>,
    /// Numbers the channels this endpoint has had, so that the end of an
    /// old channel's connection is told from the current one's.
    generations: AtomicU64,
    up: AtomicBool,
    removed: AtomicBool,
    /// A background reconnect after a connection ended is under way.
    reconnecting: AtomicBool,
    in_flight: AtomicUsize,
}

/// An endpoint's current connection and what watches its byte streams.
struct Current {
    channel: Connection,
    watch: ConnectionWatch,
    generation: u64,
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

    /// Its channel has an open connection.
    pub fn is_connected(&self) -> bool {
        self.connection
            .lock()
            .expect("connection lock")
            .watch
            .is_live()
    }

    fn channel(&self) -> Connection {
        self.connection
            .lock()
            .expect("connection lock")
            .channel
            .clone()
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

impl ReconnectBackoff {
    /// A fresh backoff with these settings.
    fn start(self) -> ConnectionBackoff {
        ConnectionBackoff::new(self.initial, self.max, self.multiplier, self.jitter)
    }
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
        match slot.channel().oneshot(request).await {
            Ok(response) => Ok(response),
            Err(error) => {
                self.take_out(&slot, &*error);
                Err(AttemptError::Transport(error))
            }
        }
    }

    /// Power of two choices among the ready endpoints, those connected
    /// when there are any.
    fn pick(&self) -> Option<Arc<EndpointSlot>> {
        let slots = self.slots.read().expect("endpoints lock");
        let mut ready: Vec<&Arc<EndpointSlot>> = slots.iter().filter(|s| s.is_up()).collect();
        if ready.iter().any(|s| s.is_connected()) {
            ready.retain(|s| s.is_connected());
        }
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
    fn take_out(
        self: &Arc<Self>,
        slot: &Arc<EndpointSlot>,
        error: &(dyn std::error::Error + 'static),
    ) {
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
            let mut backoff = settings.start();
            loop {
                tokio::time::sleep(backoff.next_delay()).await;
                let Some(endpoints) = endpoints.upgrade() else {
                    return;
                };
                if slot.removed.load(Ordering::Acquire) {
                    return;
                }
                let (watch, generation) = endpoints.watch(&slot);
                match endpoints.dialer.connect(&slot.uri, watch.clone()).await {
                    Ok(channel) => {
                        slot.install(channel, watch, generation);
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
                        error = %error_chain(&*error),
                        "reconnect failed"
                    ),
                }
            }
        });
    }

    /// A watch for the next channel of `slot`, and that channel's
    /// generation: when one of its connections ends, the endpoint is
    /// reconnected ([`Endpoints::connection_ended`]).
    fn watch(self: &Arc<Self>, slot: &Arc<EndpointSlot>) -> (ConnectionWatch, u64) {
        let generation = slot.generations.fetch_add(1, Ordering::AcqRel);
        (self.watch_of(Arc::downgrade(slot), generation), generation)
    }

    fn watch_of(self: &Arc<Self>, slot: Weak<EndpointSlot>, generation: u64) -> ConnectionWatch {
        let endpoints = Arc::downgrade(self);
        ConnectionWatch::new(move || {
            if let (Some(endpoints), Some(slot)) = (endpoints.upgrade(), slot.upgrade()) {
                endpoints.connection_ended(&slot, generation);
            }
        })
    }

    /// A connection of `slot`'s channel number `generation` ended. If that
    /// is the endpoint's current channel and it has no other connection,
    /// a new one is opened in the background; until then the endpoint gets
    /// calls only when no other is connected. An endpoint taken out is left
    /// to its reconnect loop.
    fn connection_ended(self: &Arc<Self>, slot: &Arc<EndpointSlot>, generation: u64) {
        if slot.removed.load(Ordering::Acquire) || !slot.is_up() {
            return;
        }
        {
            let connection = slot.connection.lock().expect("connection lock");
            if connection.generation != generation || connection.watch.is_live() {
                return;
            }
        }
        tracing::info!(target = %self.target, endpoint = %slot.uri, "connection ended; reconnecting in the background");
        self.connect_in_background(slot);
    }

    /// Opens a new connection to `slot` on a background task and makes it
    /// the endpoint's channel, trying again with the reconnect backoff while
    /// it fails. Meanwhile the endpoint stays in rotation, unconnected: it
    /// gets calls only when no endpoint is connected, and then its channel
    /// reconnects inside the call as tonic does (a lone endpoint that
    /// restarts is back as soon as it listens). The attempts stop once the
    /// endpoint is connected (by them or by such a call), taken out (its
    /// reconnect loop takes over) or removed.
    fn connect_in_background(self: &Arc<Self>, slot: &Arc<EndpointSlot>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if slot.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (endpoints, slot) = (Arc::downgrade(self), Arc::clone(slot));
        let settings = self.reconnect;
        runtime.spawn(async move {
            let mut backoff = settings.start();
            loop {
                let Some(strong) = endpoints.upgrade() else {
                    break;
                };
                let (watch, generation) = strong.watch(&slot);
                let dialer = strong.dialer.clone();
                drop(strong);
                let result = dialer.connect(&slot.uri, watch.clone()).await;
                let gone = slot.removed.load(Ordering::Acquire) || !slot.is_up();
                match result {
                    Ok(channel) if !gone => {
                        slot.install(channel, watch, generation);
                        break;
                    }
                    Ok(_) => break,
                    Err(error) => {
                        if gone || slot.is_connected() {
                            break;
                        }
                        tracing::debug!(
                            endpoint = %slot.uri,
                            error = %error_chain(&*error),
                            "background connect failed; trying again"
                        );
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
            slot.reconnecting.store(false, Ordering::Release);
        });
    }

    /// Makes the endpoint set `uris`: new ones join (connected in the
    /// background, and lazily by a call that finds no connected endpoint),
    /// missing ones leave, the others keep their connection and state.
    fn replace(self: &Arc<Self>, uris: Vec<Uri>) {
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
            let slot = Arc::new_cyclic(|slot| {
                let watch = self.watch_of(slot.clone(), 0);
                EndpointSlot {
                    connection: Mutex::new(Current {
                        channel: self.dialer.lazy(&uri, watch.clone()),
                        watch,
                        generation: 0,
                    }),
                    generations: AtomicU64::new(1),
                    uri,
                    up: AtomicBool::new(true),
                    removed: AtomicBool::new(false),
                    reconnecting: AtomicBool::new(false),
                    in_flight: AtomicUsize::new(0),
                }
            });
            self.connect_in_background(&slot);
            slots.push(slot);
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

impl EndpointSlot {
    /// Makes `channel` (number `generation`, watched by `watch`) the one
    /// calls use; the one it replaces closes when its last call ends.
    fn install(&self, channel: Connection, watch: ConnectionWatch, generation: u64) {
        let new = Current {
            channel,
            watch,
            generation,
        };
        let old = std::mem::replace(&mut *self.connection.lock().expect("connection lock"), new);
        // Dropped outside the lock: the end of its connection calls back
        // into `connection_ended`, which takes it.
        drop(old);
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
