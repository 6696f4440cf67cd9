//! Retries per gRFC A6, as a tower layer: up to `max_attempts` (capped at
//! 5), with full jitter, only on UNAVAILABLE (and RESOURCE_EXHAUSTED with
//! RetryInfo, after the delay it asks for), only before response headers
//! arrive, only for methods whose proto marks them idempotent or calls
//! marked with [`IdempotencyKey`]; one deadline covers every attempt (each
//! carries what is left of it); a retry throttle (10 tokens, 0.1 per
//! success, no retries at half) keeps a dead downstream from getting
//! multiplied load. Each attempt goes to the layer below (the breaker,
//! then the balancer, which picks an endpoint per attempt).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use shop_core::grpc_timeout;
use shop_telemetry::metrics::{count_retry, count_retry_throttled};
use tokio::time::Instant;
use tonic::{Status, body::Body};
use tower::{Layer, Service, ServiceExt as _};

use crate::{
    attempt::{AttemptError, Verdict, classify},
    backoff,
};

/// Marks a call as safe to retry although its method is not declared
/// idempotent, because the request carries an idempotency key the server
/// deduplicates on (such as a create call's `request_id`). Put it in the request's
/// extensions: `request.extensions_mut().insert(IdempotencyKey)`.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey;

/// Largest number of attempts a call may make, whatever is configured
/// (gRFC A6 caps it at 5 too).
pub const MAX_ATTEMPTS_CAP: u32 = 5;

/// How retries are spaced and bounded.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Ceiling of the first retry's random delay.
    pub initial_backoff: Duration,
    /// Largest ceiling.
    pub max_backoff: Duration,
    /// Growth of the ceiling per retry.
    pub multiplier: f64,
}

/// gRFC A6 retry throttling for one target: a bucket of `max_tokens`;
/// every retryable failure takes one token, every success gives back
/// `token_ratio`; retries stop while the bucket is at half or below.
pub struct RetryThrottle {
    max_tokens: f64,
    token_ratio: f64,
    tokens: Mutex<f64>,
}

impl RetryThrottle {
    /// A full bucket.
    pub fn new(max_tokens: u32, token_ratio: f64) -> RetryThrottle {
        RetryThrottle {
            max_tokens: f64::from(max_tokens),
            token_ratio,
            tokens: Mutex::new(f64::from(max_tokens)),
        }
    }

    /// An attempt failed with a retryable status.
    pub fn on_failure(&self) {
        let mut tokens = self.tokens.lock().expect("throttle lock");
        *tokens = (*tokens - 1.0).max(0.0);
    }

    /// An attempt succeeded.
    pub fn on_success(&self) {
        let mut tokens = self.tokens.lock().expect("throttle lock");
        *tokens = (*tokens + self.token_ratio).min(self.max_tokens);
    }

    /// May a failed call be retried now?
    pub fn allows_retry(&self) -> bool {
        *self.tokens.lock().expect("throttle lock") > self.max_tokens / 2.0
    }
}

/// Builds [`Retry`] services for one target; clones share the throttle.
#[derive(Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

struct Shared {
    target: String,
    policy: RetryPolicy,
    throttle: RetryThrottle,
}

impl RetryLayer {
    /// Retries calls to `target` with `policy`, throttled by `throttle`.
    pub fn new(target: &str, policy: RetryPolicy, throttle: RetryThrottle) -> RetryLayer {
        RetryLayer {
            shared: Arc::new(Shared {
                target: target.to_owned(),
                policy,
                throttle,
            }),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = AttemptError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each attempt waits for the layer below to be ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let inner = self.inner.clone();
        Box::pin(async move { Ok(shared.call(inner, request).await) })
    }
}

/// A request's body: kept for re-sending, or passed through once.
enum Payload {
    Buffered(Bytes),
    Once(Option<Body>),
}

impl Shared {
    async fn call<S>(&self, inner: S, request: Request<Body>) -> Response<Body>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = AttemptError> + Clone,
    {
        let path = request.uri().path().to_owned();
        let policy = shop_proto::policy::lookup(&path);
        let retry_safe = policy.is_some_and(|p| p.idempotency.is_retry_safe())
            || request.extensions().get::<IdempotencyKey>().is_some();
        // Only a request that is one message can be sent again.
        let single_message = policy.is_some_and(|p| !p.client_streaming);
        let max_attempts = if retry_safe && single_message {
            self.policy.max_attempts
        } else {
            1
        };
        let deadline = grpc_timeout::parse(request.headers()).map(|t| Instant::now() + t);

        let (parts, body) = request.into_parts();
        let mut payload = if max_attempts > 1 {
            match body.collect().await {
                Ok(collected) => Payload::Buffered(collected.to_bytes()),
                Err(_) => return Status::cancelled("request body failed").into_http(),
            }
        } else {
            Payload::Once(Some(body))
        };
        let mut extensions = Some(parts.extensions);

        let mut attempt = 1;
        loop {
            let mut builder = Request::builder()
                .method(parts.method.clone())
                .uri(parts.uri.clone())
                .version(parts.version);
            if let Some(headers) = builder.headers_mut() {
                *headers = parts.headers.clone();
                if let Some(deadline) = deadline {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Status::deadline_exceeded("deadline exceeded").into_http();
                    }
                    headers.insert(grpc_timeout::GRPC_TIMEOUT, grpc_timeout::encode(left));
                }
            }
            let body = match &mut payload {
                Payload::Buffered(bytes) => Body::new(Full::new(bytes.clone())),
                Payload::Once(body) => body.take().unwrap_or_default(),
            };
            let mut attempt_request = builder.body(body).expect("parts of a valid request");
            if let Some(extensions) = extensions.take() {
                *attempt_request.extensions_mut() = extensions;
            }

            let result = inner.clone().oneshot(attempt_request).await;
            let (response, pushback) = match classify(&self.target, result) {
                Verdict::Done(response) => {
                    self.throttle.on_success();
                    return response;
                }
                Verdict::Expired(response) | Verdict::Refused(response) => return response,
                Verdict::Retryable {
                    response, pushback, ..
                } => {
                    self.throttle.on_failure();
                    (response, pushback)
                }
            };
            if attempt >= max_attempts {
                return response;
            }
            if !self.throttle.allows_retry() {
                count_retry_throttled(&path);
                return response;
            }
            let delay = pushback.unwrap_or_else(|| {
                backoff::full_jitter(
                    self.policy.initial_backoff,
                    self.policy.max_backoff,
                    self.policy.multiplier,
                    attempt,
                )
            });
            if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                return response;
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
            count_retry(&path);
            tracing::debug!(
                target = %self.target,
                rpc.method = %path,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "retrying"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_stops_retries_at_half_and_successes_refill_it() {
        let throttle = RetryThrottle::new(10, 0.1);
        for _ in 0..4 {
            throttle.on_failure();
        }
        assert!(throttle.allows_retry(), "6 tokens left");
        throttle.on_failure();
        assert!(!throttle.allows_retry(), "5 tokens: at half");
        // Ten successes earn one token back.
        for _ in 0..10 {
            throttle.on_success();
        }
        assert!(throttle.allows_retry());
        // Never above the maximum: 100 successes, then 5 failures stop it.
        for _ in 0..100 {
            throttle.on_success();
        }
        for _ in 0..5 {
            throttle.on_failure();
        }
        assert!(!throttle.allows_retry());
    }
}
