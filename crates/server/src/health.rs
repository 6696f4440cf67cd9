//! `grpc.health.v1` as the health checking protocol specifies it, plus the
//! readiness that `/readyz` and the health statuses share.
//!
//! tonic-health answers Watch for an unknown service with NOT_FOUND; the
//! protocol says a Watch must instead send SERVICE_UNKNOWN and stay open,
//! sending the status once the service is registered. [`Health`] does
//! that. Its statuses follow [`Readiness`]: a service is SERVING only while
//! its dependencies (the database) answer and the process is not draining.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tokio_stream::{Stream, wrappers::WatchStream};
use tonic::{Request, Response, Status};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{Health as HealthApi, HealthServer},
};

/// The health statuses of one server, by service name (`""` is the server
/// as a whole).
#[derive(Debug, Clone, Default)]
pub struct Health {
    services: Arc<Mutex<HashMap<String, watch::Sender<ServingStatus>>>>,
}

impl Health {
    /// An empty registry.
    pub fn new() -> Health {
        Health::default()
    }

    /// Sets (and registers) `service`'s status; watchers see it at once.
    pub fn set(&self, service: &str, status: ServingStatus) {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        match services.get(service) {
            Some(tx) => {
                tx.send_if_modified(|current| {
                    let changed = *current != status;
                    *current = status;
                    changed
                });
            }
            None => {
                services.insert(service.to_owned(), watch::channel(status).0);
            }
        }
    }

    fn status(&self, service: &str) -> Option<ServingStatus> {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services.get(service).map(|tx| *tx.borrow())
    }

    fn subscribe(&self, service: &str) -> watch::Receiver<ServingStatus> {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services
            .entry(service.to_owned())
            // Unknown so far: watchers see SERVICE_UNKNOWN until it is set.
            .or_insert_with(|| watch::channel(ServingStatus::ServiceUnknown).0)
            .subscribe()
    }

    /// The `grpc.health.v1.Health` service for a tonic router.
    pub fn service(&self) -> HealthServer<Health> {
        HealthServer::new(self.clone())
    }
}

type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HealthApi for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match self.status(&request.get_ref().service) {
            Some(ServingStatus::ServiceUnknown) | None => Err(Status::not_found("unknown service")),
            Some(status) => Ok(Response::new(HealthCheckResponse {
                status: status as i32,
            })),
        }
    }

    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let updates = WatchStream::new(self.subscribe(&request.get_ref().service));
        let stream = tokio_stream::StreamExt::map(updates, |status| {
            Ok(HealthCheckResponse {
                status: status as i32,
            })
        });
        Ok(Response::new(Box::pin(stream)))
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

    #[tokio::test]
    async fn watch_of_an_unknown_service_says_so_and_follows_its_registration() {
        let health = Health::new();
        let mut watch = health
            .watch(Request::new(HealthCheckRequest {
                service: "later.Service".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            watch.next().await.unwrap().unwrap().status,
            ServingStatus::ServiceUnknown as i32
        );
        health.set("later.Service", ServingStatus::Serving);
        assert_eq!(
            watch.next().await.unwrap().unwrap().status,
            ServingStatus::Serving as i32
        );
        let check = health
            .check(Request::new(HealthCheckRequest {
                service: "nope".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(check.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn readiness_drives_every_status() {
        let health = Health::new();
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
