//! The client kit: the one way a shop service builds a channel to another
//! service, with no server stack in it.
//!
//! [`connect`] turns a target (a list of endpoints, or a DNS name) and the
//! [`ClientArgs`] every service binary flattens into a [`ClientChannel`]
//! that behaves like grpc-go with gRFC A6/A8. It is a stack of tower
//! layers that mirrors the server's, each in its own module:
//!
//! - **observe** ([`layers::observe`]): the client span, its trace context
//!   on the wire and the `grpc_client_*` metrics, once per call;
//! - **context** (`shop_core::context::Propagate`): the caller's remaining
//!   deadline, token, request id and trace headers; a spent budget fails
//!   at once;
//! - **retry** ([`layers::retry`]): gRFC A6 retries with backoff, jitter
//!   and a throttle, only where the protos (or an [`IdempotencyKey`]) say
//!   it is safe;
//! - **breaker** ([`layers::breaker`]): fail fast while a target keeps
//!   being unavailable;
//! - **balance** ([`balance`]): power of two choices over the ready
//!   endpoints; an endpoint whose connection fails is taken out and
//!   reconnected with gRPC's connection backoff (1 s, ×1.6, 120 s, ±20%);
//!   DNS targets are re-resolved periodically.
//!
//! [`keys`] verifies tokens with keys fetched from the token issuer over
//! such a channel.
//!
//! Metrics: `grpc_client_attempts_total` (attempts sent to an endpoint,
//! per method; calls refused by an open breaker or finding no endpoint
//! up make none),
//! `grpc_client_retries_total`, `grpc_client_retries_throttled_total`
//! (per method), `grpc_client_circuit_breaker_state` (0 closed, 1 half
//! open, 2 open) and `grpc_client_circuit_breaker_transitions_total`,
//! `grpc_client_endpoints{state="ready"|"down"}` (per target).

pub mod attempt;
pub mod backoff;
pub mod balance;
pub mod connection;
pub mod dial;
pub mod keys;
pub mod layers;
pub mod service_token;
pub mod target;
pub mod watched;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use shop_core::context::{Propagate, PropagateLayer};
use tonic::body::Body;
use tower::{Service, ServiceBuilder};

use self::{
    balance::{Balance, Endpoints, ReconnectBackoff, Resolve, SystemResolver},
    dial::{DialSettings, Dialer},
    layers::{
        breaker::{Breaker, BreakerLayer, CircuitBreaker},
        observe::{Observe, ObserveLayer},
        retry::{MAX_ATTEMPTS_CAP, Retry, RetryLayer, RetryPolicy, RetryThrottle},
    },
    target::Target,
};

pub use layers::retry::IdempotencyKey;

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
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ATTEMPTS_CAP)))]
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
    pub tls: shop_tls::ClientTlsArgs,
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

/// The layers of a channel, outermost first (see [`connect_with_resolver`]).
type Stack = Observe<Propagate<Retry<Breaker<Balance>>>>;

/// A channel to another service. Cheap to clone; clones share
/// connections, breaker and throttle.
#[derive(Clone)]
pub struct ClientChannel {
    stack: Stack,
    endpoints: Arc<Endpoints>,
    breaker: Arc<CircuitBreaker>,
}

impl ClientChannel {
    /// The endpoints behind this channel.
    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.endpoints
    }

    /// The circuit breaker of this channel's target.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }
}

impl std::fmt::Debug for ClientChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientChannel").finish_non_exhaustive()
    }
}

impl Service<Request<Body>> for ClientChannel {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        self.stack.call(request)
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
///
/// The stack, outermost first, and why in this order (the server's stack
/// mirrored):
///
/// 1. observe: first, so that every call is one span and one set of
///    `grpc_client_*` metrics whatever happens below (a spent budget, an
///    open breaker, three attempts), and its span's trace context is the
///    one sent;
/// 2. context: the caller's deadline bounds everything below, retries and
///    their waits included; the caller's token and request id go on every
///    attempt;
/// 3. retry: above the breaker, so that each attempt asks the breaker
///    again, and an open circuit ends the call at once instead of being
///    retried;
/// 4. breaker: counts attempts, not calls, so three unavailable attempts
///    are three failures;
/// 5. balance: each attempt picks its endpoint, so a retry goes elsewhere.
pub fn connect_with_resolver(
    name: &str,
    target: &str,
    args: &ClientArgs,
    resolver: Arc<dyn Resolve>,
) -> Result<ClientChannel, String> {
    let target = Target::parse(target)?;
    let tls = shop_tls::ClientTls::load(&args.tls, target.host_name())?;
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
    let retry = RetryLayer::new(
        name,
        RetryPolicy {
            max_attempts: args.client_retry_max_attempts.clamp(1, MAX_ATTEMPTS_CAP),
            initial_backoff: args.client_retry_initial_backoff,
            max_backoff: args.client_retry_max_backoff,
            multiplier: args.client_retry_backoff_multiplier,
        },
        RetryThrottle::new(
            args.client_retry_throttle_max_tokens,
            args.client_retry_throttle_token_ratio,
        ),
    );
    let stack = ServiceBuilder::new()
        .layer(ObserveLayer)
        .layer(PropagateLayer)
        .layer(retry)
        .layer(BreakerLayer::new(Arc::clone(&breaker)))
        .service(Balance::new(Arc::clone(&endpoints)));
    Ok(ClientChannel {
        stack,
        endpoints,
        breaker,
    })
}

#[cfg(test)]
mod tests;
