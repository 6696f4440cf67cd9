//! The one way a shop service builds a channel to another service.
//!
//! [`connect`] turns a target (a list of endpoints, or a DNS name) and the
//! [`ClientArgs`] every service binary flattens into a [`ClientChannel`]
//! that behaves like grpc-go with gRFC A6/A8:
//!
//! - **Balancing** ([`balance`]): power of two choices over the ready
//!   endpoints; an endpoint whose connection fails is taken out and
//!   reconnected with gRPC's connection backoff (1 s, ×1.6, 120 s, ±20%);
//!   DNS targets are re-resolved periodically.
//! - **Retries** ([`retry`]): up to `max_attempts` (capped at 5), with full
//!   jitter, only on UNAVAILABLE (and RESOURCE_EXHAUSTED with RetryInfo,
//!   after the delay it asks for), only before response headers arrive,
//!   only for methods whose proto marks them idempotent or calls marked
//!   with [`IdempotencyKey`]; one deadline covers every attempt; a retry
//!   throttle (10 tokens, 0.1 per success, no retries at half) keeps a dead
//!   downstream from getting multiplied load.
//! - **Circuit breaking** ([`breaker`]): after N consecutive
//!   unavailabilities calls fail fast with UNAVAILABLE until a probe
//!   succeeds.
//! - **Context** ([`crate::context::Propagate`]), outermost: deadline,
//!   token, request id and trace headers, the client span and the
//!   `grpc_client_*` metrics (one per call, not per attempt).
//!
//! Metrics: `grpc_client_attempts_total` (attempts sent to an endpoint,
//! per method; calls refused by an open breaker or finding no endpoint
//! up make none),
//! `grpc_client_retries_total`, `grpc_client_retries_throttled_total`
//! (per method), `grpc_client_circuit_breaker_state` (0 closed, 1 half
//! open, 2 open) and `grpc_client_circuit_breaker_transitions_total`,
//! `grpc_client_endpoints{state="ready"|"down"}` (per target).

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod dial;
pub mod retry;
pub mod target;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use tokio::time::Instant;
use tonic::{Status, body::Body};
use tower::Service;

use crate::{context::Propagate, grpc_timeout, observe};

use self::{
    balance::{Endpoints, ReconnectBackoff, Resolve, SystemResolver},
    breaker::{Admission, CircuitBreaker, Outcome},
    dial::{DialSettings, Dialer},
    retry::{RetryPolicy, RetryThrottle, Verdict},
    target::Target,
};

/// A channel to another service: context propagation around retries,
/// circuit breaking and balancing. Cheap to clone; clones share
/// connections, breaker and throttle.
pub type ClientChannel = Propagate<ResilientChannel>;

/// Marks a call as safe to retry although its method is not declared
/// idempotent, because the request carries an idempotency key the server
/// deduplicates on (CreateOrder's `request_id`). Put it in the request's
/// extensions: `request.extensions_mut().insert(IdempotencyKey)`.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey;

fn parse_keepalive(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < Duration::from_secs(10) {
        return Err("at least 10s (servers treat more frequent PINGs as abuse)".into());
    }
    Ok(interval)
}

fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// Settings of every outgoing channel of a service (flattened into each
/// binary's configuration).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Longest wait for a connection to an endpoint to be established.
    #[arg(long, env = "CLIENT_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub client_connect_timeout: Duration,

    /// HTTP/2 keepalive PING interval (at least 10s): finds dead
    /// connections that TCP would keep for minutes.
    #[arg(long, env = "CLIENT_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_keepalive)]
    pub client_keepalive_interval: Duration,

    /// How long a keepalive PING may go unanswered before the connection is
    /// dropped.
    #[arg(long, env = "CLIENT_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub client_keepalive_timeout: Duration,

    /// First delay before reconnecting to an endpoint whose connection
    /// failed (gRPC connection backoff).
    #[arg(long, env = "CLIENT_RECONNECT_BACKOFF_INITIAL", default_value = "1s", value_parser = parse_duration)]
    pub client_reconnect_backoff_initial: Duration,

    /// Longest delay between reconnection attempts.
    #[arg(long, env = "CLIENT_RECONNECT_BACKOFF_MAX", default_value = "120s", value_parser = parse_duration)]
    pub client_reconnect_backoff_max: Duration,

    /// Growth of the reconnect delay per failed attempt.
    #[arg(
        long,
        env = "CLIENT_RECONNECT_BACKOFF_MULTIPLIER",
        default_value_t = 1.6
    )]
    pub client_reconnect_backoff_multiplier: f64,

    /// Randomisation of each reconnect delay (0.2 = ±20%).
    #[arg(long, env = "CLIENT_RECONNECT_BACKOFF_JITTER", default_value_t = 0.2)]
    pub client_reconnect_backoff_jitter: f64,

    /// How often a `dns:///host:port` target is resolved again.
    #[arg(long, env = "CLIENT_DNS_REFRESH_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub client_dns_refresh_interval: Duration,

    /// Attempts per call, the first included (1 disables retries; at most
    /// 5).
    #[arg(long, env = "CLIENT_RETRY_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(retry::MAX_ATTEMPTS_CAP)))]
    pub client_retry_max_attempts: u32,

    /// Ceiling of the first retry's random delay (full jitter).
    #[arg(long, env = "CLIENT_RETRY_INITIAL_BACKOFF", default_value = "50ms", value_parser = parse_duration)]
    pub client_retry_initial_backoff: Duration,

    /// Largest ceiling of a retry delay.
    #[arg(long, env = "CLIENT_RETRY_MAX_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub client_retry_max_backoff: Duration,

    /// Growth of the retry delay ceiling per retry.
    #[arg(long, env = "CLIENT_RETRY_BACKOFF_MULTIPLIER", default_value_t = 2.0)]
    pub client_retry_backoff_multiplier: f64,

    /// Retry throttle bucket size (gRFC A6 `maxTokens`): a failure takes
    /// one token, retries stop at half.
    #[arg(long, env = "CLIENT_RETRY_THROTTLE_MAX_TOKENS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub client_retry_throttle_max_tokens: u32,

    /// Tokens a successful attempt gives back (gRFC A6 `tokenRatio`).
    #[arg(long, env = "CLIENT_RETRY_THROTTLE_TOKEN_RATIO", default_value_t = 0.1)]
    pub client_retry_throttle_token_ratio: f64,

    /// Consecutive unavailable attempts that open the circuit breaker (0
    /// disables it).
    #[arg(long, env = "CLIENT_BREAKER_FAILURES", default_value_t = 5)]
    pub client_breaker_failures: u32,

    /// First wait of an open circuit before a probe is let through.
    #[arg(long, env = "CLIENT_BREAKER_BACKOFF_INITIAL", default_value = "1s", value_parser = parse_duration)]
    pub client_breaker_backoff_initial: Duration,

    /// Longest wait of an open circuit before a probe.
    #[arg(long, env = "CLIENT_BREAKER_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub client_breaker_backoff_max: Duration,

    /// TLS and mTLS of outgoing channels.
    #[command(flatten)]
    pub tls: crate::tls::ClientTlsArgs,
}

impl Default for ClientArgs {
    /// The documented defaults (environment variables ignored).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            args: ClientArgs,
        }
        let command = <Only as clap::CommandFactory>::command();
        let matches = command
            .mut_args(|a| a.env(None::<&str>))
            .get_matches_from(["client"]);
        <Only as clap::FromArgMatches>::from_arg_matches(&matches)
            .expect("defaults parse")
            .args
    }
}

/// Builds the channel to the service `name` at `target` (see
/// [`Target::parse`]). Must be called inside a tokio runtime (DNS targets
/// resolve on a background task, TLS files are watched on another).
/// Connections are made on first use, over TLS when `CLIENT_TLS_CA_FILE`
/// is set (then plain `http://` endpoints are TLS too).
pub fn connect(name: &str, target: &str, args: &ClientArgs) -> Result<ClientChannel, String> {
    connect_with_resolver(name, target, args, Arc::new(SystemResolver))
}

/// [`connect`] with another name resolver (tests).
pub fn connect_with_resolver(
    name: &str,
    target: &str,
    args: &ClientArgs,
    resolver: Arc<dyn Resolve>,
) -> Result<ClientChannel, String> {
    let target = Target::parse(target)?;
    let tls = crate::tls::ClientTls::load(&args.tls, target.host_name())?;
    if target.wants_tls() && tls.is_none() {
        return Err("https:// endpoints need TLS settings (CLIENT_TLS_CA_FILE)".into());
    }
    let dialer = Dialer::new(
        DialSettings {
            connect_timeout: args.client_connect_timeout,
            keepalive_interval: args.client_keepalive_interval,
            keepalive_timeout: args.client_keepalive_timeout,
        },
        tls,
    );
    let breaker = CircuitBreaker::new(
        name,
        args.client_breaker_failures,
        args.client_breaker_backoff_initial,
        args.client_breaker_backoff_max,
    );
    let recovered = Arc::downgrade(&breaker);
    let endpoints = Endpoints::new(
        name,
        target,
        dialer,
        ReconnectBackoff {
            initial: args.client_reconnect_backoff_initial,
            max: args.client_reconnect_backoff_max,
            multiplier: args.client_reconnect_backoff_multiplier,
            jitter: args.client_reconnect_backoff_jitter,
        },
        resolver,
        args.client_dns_refresh_interval,
        Box::new(move || {
            if let Some(breaker) = recovered.upgrade() {
                breaker.endpoint_recovered();
            }
        }),
    );
    let shared = Shared {
        target: name.to_owned(),
        endpoints,
        breaker,
        policy: RetryPolicy {
            max_attempts: args
                .client_retry_max_attempts
                .clamp(1, retry::MAX_ATTEMPTS_CAP),
            initial_backoff: args.client_retry_initial_backoff,
            max_backoff: args.client_retry_max_backoff,
            multiplier: args.client_retry_backoff_multiplier,
        },
        throttle: RetryThrottle::new(
            args.client_retry_throttle_max_tokens,
            args.client_retry_throttle_token_ratio,
        ),
    };
    Ok(Propagate::new(ResilientChannel {
        shared: Arc::new(shared),
    }))
}

/// Retries, circuit breaking and balancing for one target (the inner part
/// of [`ClientChannel`]).
#[derive(Clone)]
pub struct ResilientChannel {
    shared: Arc<Shared>,
}

impl ResilientChannel {
    /// The endpoints behind this channel.
    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.shared.endpoints
    }

    /// The circuit breaker of this channel's target.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.shared.breaker
    }
}

struct Shared {
    target: String,
    endpoints: Arc<Endpoints>,
    breaker: Arc<CircuitBreaker>,
    policy: RetryPolicy,
    throttle: RetryThrottle,
}

impl Service<Request<Body>> for ResilientChannel {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { Ok(shared.call(request).await) })
    }
}

/// A request's body: kept for re-sending, or passed through once.
enum Payload {
    Buffered(Bytes),
    Once(Option<Body>),
}

impl Shared {
    async fn call(&self, request: Request<Body>) -> Response<Body> {
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

            let permit = match self.breaker.admit() {
                Admission::Allowed(permit) => permit,
                Admission::Rejected => {
                    return Status::unavailable(format!(
                        "{}: circuit open after repeated failures; failing fast",
                        self.target
                    ))
                    .into_http();
                }
            };
            let result = self.endpoints.call(attempt_request).await;
            let (response, pushback) = match retry::classify(&self.target, result) {
                Verdict::Done(response) => {
                    permit.record(Outcome::Success);
                    self.throttle.on_success();
                    return response;
                }
                Verdict::Expired(response) => {
                    permit.record(Outcome::Neutral);
                    return response;
                }
                Verdict::Retryable {
                    response,
                    pushback,
                    unavailable,
                } => {
                    permit.record(if unavailable {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    });
                    self.throttle.on_failure();
                    (response, pushback)
                }
            };
            if attempt >= max_attempts {
                return response;
            }
            if !self.throttle.allows_retry() {
                observe::count_retry_throttled(&path);
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
            observe::count_retry(&path);
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
mod tests;
