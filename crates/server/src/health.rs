//! `grpc.health.v1` as the health checking protocol specifies it, plus the
//! readiness that `/readyz` and the health statuses share.
//!
//! tonic-health answers Watch for an unknown service with NOT_FOUND; the
//! protocol says a Watch must instead send SERVICE_UNKNOWN and stay open.
//! [`Health`] does that. Its statuses follow [`Readiness`]: a service is
//! SERVING only while its dependencies (the database) answer and the
//! process is not draining.
//!
//! Health is public, so nothing a caller sends may stay behind: the names
//! served are the ones registered before serving, a Check or Watch of any
//! other name is answered without being remembered, a name longer than
//! [`MAX_SERVICE_NAME_BYTES`] is INVALID_ARGUMENT, and every Watch is a
//! stream like any other (admitted by the stream limits layer under the
//! caller's address, with backpressure and an end on shutdown through
//! [`Streams`]).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{Health as HealthApi, HealthServer},
};

use crate::streams::{ResponseStream, Streams};

/// Longest service name a health request may carry (a fully qualified
/// gRPC service name is far shorter).
pub const MAX_SERVICE_NAME_BYTES: usize = 256;

/// The health statuses of one server, by service name (`""` is the server
/// as a whole).
#[derive(Debug, Clone)]
pub struct Health {
    services: Arc<Mutex<HashMap<String, watch::Sender<ServingStatus>>>>,
    streams: Streams,
}

impl Health {
    /// An empty registry whose Watch streams are kept within `streams`.
    pub fn new(streams: Streams) -> Health {
        Health {
            services: Arc::default(),
            streams,
        }
    }

    /// Sets (and registers) `service`'s status; watchers see it at once.
    /// Each change (and the first status) is counted in
    /// `grpc_server_health_status_changes_total{grpc_service, status}`, and
    /// `grpc_server_health_serving{grpc_service}` is 1 while SERVING.
    pub fn set(&self, service: &str, status: ServingStatus) {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match services.get(service) {
            Some(tx) => tx.send_if_modified(|current| {
                let changed = *current != status;
                *current = status;
                changed
            }),
            None => {
                services.insert(service.to_owned(), watch::channel(status).0);
                true
            }
        };
        if changed {
            let grpc_service = service.to_owned();
            metrics::counter!("grpc_server_health_status_changes_total",
                "grpc_service" => grpc_service.clone(),
                "status" => status.as_str_name())
            .increment(1);
            metrics::gauge!("grpc_server_health_serving", "grpc_service" => grpc_service).set(
                if status == ServingStatus::Serving {
                    1.0
                } else {
                    0.0
                },
            );
        }
    }

    fn status(&self, service: &str) -> Option<ServingStatus> {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services.get(service).map(|tx| *tx.borrow())
    }

    /// The updates of a registered service; `None` for any other name,
    /// which is not remembered.
    fn subscribe(&self, service: &str) -> Option<watch::Receiver<ServingStatus>> {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services.get(service).map(watch::Sender::subscribe)
    }

    /// How many names the registry holds (what a caller could grow).
    pub fn names(&self) -> usize {
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The `grpc.health.v1.Health` service for a tonic router.
    pub fn service(&self) -> HealthServer<Health> {
        HealthServer::new(self.clone())
    }
}

/// The requested name, if it is not too long to be one.
fn service_name(request: &Request<HealthCheckRequest>) -> Result<&str, Status> {
    let name = request.get_ref().service.as_str();
    if name.len() > MAX_SERVICE_NAME_BYTES {
        return Err(Status::invalid_argument(format!(
            "service name longer than {MAX_SERVICE_NAME_BYTES} bytes"
        )));
    }
    Ok(name)
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl HealthApi for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match self.status(service_name(&request)?) {
            Some(ServingStatus::ServiceUnknown) | None => Err(Status::not_found("unknown service")),
            Some(status) => Ok(Response::new(response(status))),
        }
    }

    type WatchStream = ResponseStream<HealthCheckResponse>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let updates = self.subscribe(service_name(&request)?);
        let stream = self.streams.open(move |tx| async move {
            let Some(mut updates) = updates else {
                // Served names are fixed once serving: this one stays
                // unknown until the caller leaves or the server drains.
                if tx
                    .send(response(ServingStatus::ServiceUnknown))
                    .await
                    .is_ok()
                {
                    tx.closed().await;
                }
                return Ok(());
            };
            loop {
                let status = *updates.borrow_and_update();
                if tx.send(response(status)).await.is_err() || updates.changed().await.is_err() {
                    return Ok(());
                }
            }
        })?;
        Ok(Response::new(stream))
    }
}

/// Whether this process should get traffic: its dependencies answer and it
/// is not draining. Shared by `/readyz` and the health statuses.
#[derive(Debug, Clone)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Debug)]
struct ReadinessInner {
    dependencies_ok: AtomicBool,
    draining: AtomicBool,
    health: Health,
    services: Mutex<Vec<String>>,
}

impl Readiness {
    /// Readiness that drives the statuses of `services` (and `""`) in
    /// `health`. Starts not ready until the first dependency check passes.
    pub fn new(health: Health, services: &[&str]) -> Readiness {
        let readiness = Readiness {
            inner: Arc::new(ReadinessInner {
                dependencies_ok: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                health,
                services: Mutex::new(vec![String::new()]),
            }),
        };
        for service in services {
            readiness.register(service);
        }
        readiness.publish();
        readiness
    }

    /// Adds `service` to the statuses this readiness drives.
    pub fn register(&self, service: &str) {
        self.inner
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(service.to_owned());
        self.publish();
    }

    /// True when ready for traffic.
    pub fn is_ready(&self) -> bool {
        self.inner.dependencies_ok.load(Ordering::SeqCst)
            && !self.inner.draining.load(Ordering::SeqCst)
    }

    /// True once draining has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Records whether the dependencies answer.
    pub fn set_dependencies_ok(&self, ok: bool) {
        let was = self.inner.dependencies_ok.swap(ok, Ordering::SeqCst);
        if was != ok {
            if ok {
                tracing::info!("dependencies reachable: serving");
            } else {
                tracing::warn!("a dependency is unreachable: NOT_SERVING until it answers again");
            }
        }
        self.publish();
    }

    /// Marks the process draining: NOT_SERVING from now on.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.publish();
    }

    fn publish(&self) {
        let status = if self.is_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let services = self
            .inner
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for service in services.iter() {
            self.inner.health.set(service, status);
        }
    }

    /// Checks the dependencies with `check` every `interval` (every 250 ms
    /// at most while they are not answering yet, so that start-up and
    /// recovery are noticed quickly) until the returned task is aborted.
    pub fn watch_dependencies<F, Fut>(
        &self,
        interval: Duration,
        check: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let readiness = self.clone();
        tokio::spawn(async move {
            loop {
                let ok = tokio::time::timeout(interval.max(Duration::from_secs(1)), check())
                    .await
                    .unwrap_or(false);
                readiness.set_dependencies_ok(ok);
                let pause = if ok {
                    interval
                } else {
                    interval.min(Duration::from_millis(250))
                };
                tokio::time::sleep(pause).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;
    use crate::streams::StreamArgs;

    fn health() -> Health {
        Health::new(Streams::new("test", &StreamArgs::default()))
    }

    fn request(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest {
            service: service.into(),
        })
    }

    #[tokio::test]
    async fn watch_follows_a_registered_service() {
        let health = health();
        health.set("a.Service", ServingStatus::NotServing);
        let mut watch = health
            .watch(request("a.Service"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            watch.next().await.unwrap().unwrap().status,
            ServingStatus::NotServing as i32
        );
        health.set("a.Service", ServingStatus::Serving);
        assert_eq!(
            watch.next().await.unwrap().unwrap().status,
            ServingStatus::Serving as i32
        );
    }

    #[tokio::test]
    async fn unknown_names_are_answered_and_never_remembered() {
        let health = health();
        health.set("", ServingStatus::Serving);
        for i in 0..100 {
            let name = format!("unknown.Service{i}");
            let mut watch = health.watch(request(&name)).await.unwrap().into_inner();
            assert_eq!(
                watch.next().await.unwrap().unwrap().status,
                ServingStatus::ServiceUnknown as i32
            );
            let check = health.check(request(&name)).await.unwrap_err();
            assert_eq!(check.code(), tonic::Code::NotFound);
        }
        assert_eq!(health.names(), 1, "only the registered name is kept");
    }

    #[tokio::test]
    async fn a_long_name_is_refused_without_being_echoed() {
        let health = health();
        let long = "x".repeat(MAX_SERVICE_NAME_BYTES + 1);
        let refused = health.check(request(&long)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(!refused.message().contains(&long[..32]));
        let Err(refused) = health.watch(request(&long)).await else {
            panic!("a watch of a long name was accepted");
        };
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn readiness_drives_every_status() {
        let health = health();
        let readiness = Readiness::new(health.clone(), &["a.Service"]);
        assert!(!readiness.is_ready());
        assert_eq!(health.status("a.Service"), Some(ServingStatus::NotServing));
        readiness.set_dependencies_ok(true);
        assert_eq!(health.status(""), Some(ServingStatus::Serving));
        readiness.set_dependencies_ok(false);
        assert_eq!(health.status("a.Service"), Some(ServingStatus::NotServing));
        readiness.set_dependencies_ok(true);
        readiness.start_draining();
        assert!(!readiness.is_ready());
        assert_eq!(health.status("a.Service"), Some(ServingStatus::NotServing));
    }
}
