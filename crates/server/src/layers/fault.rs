//! Fault injection: added latency and injected errors per method, for demos,
//! tests and game days ("what happens to a service when the one it calls is
//! slow?").
//!
//! Off by default. Configured with two settings that every service exposes
//! (`FAULT_DELAY`, `FAULT_ERROR`), each a comma-separated list of
//! `method=value` rules, where `method` is a method name (`GetThing`), a
//! full path (`/shop.example.v1.ThingService/GetThing`) or `*`:
//!
//! - `FAULT_DELAY=GetThing=2s,*=10ms` sleeps before the handler runs.
//! - `FAULT_ERROR=GetThing=unavailable:0.25` answers that status instead of
//!   calling the handler, with the given probability (default 1), or
//!   deterministically for the first k of every n calls with `:k/n`
//!   (`unavailable:1/3`: calls 1, 4, 7, ...). The
//!   special code `panic` panics in the handler's place, to exercise the
//!   panic guard; `drop` runs the handler, throws its response away and
//!   answers UNAVAILABLE, like a connection lost after the work was done
//!   (to exercise idempotent retries).
//!
//! The first matching rule wins, exact paths before names before `*`. The
//! delay sits inside the deadline, so a caller's deadline still cuts it
//! short. When any rule is set, the service logs a warning at start-up.

use std::{
    future::Future,
    pin::Pin,
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::Either;
use http::{Request, Response};
use thiserror::Error;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

/// A fault configuration that does not parse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct FaultConfigError(String);

/// Which methods a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Path(String),
    Method(String),
    Any,
}

impl Matcher {
    fn parse(s: &str) -> Matcher {
        match s {
            "*" => Matcher::Any,
            s if s.starts_with('/') => Matcher::Path(s.to_owned()),
            s => Matcher::Method(s.to_owned()),
        }
    }

    /// Lower is more specific.
    fn rank(&self) -> u8 {
        match self {
            Matcher::Path(_) => 0,
            Matcher::Method(_) => 1,
            Matcher::Any => 2,
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Matcher::Path(p) => p == path,
            Matcher::Method(m) => path.rsplit('/').next() == Some(m.as_str()),
            Matcher::Any => true,
        }
    }
}

fn split_rules(s: &str) -> impl Iterator<Item = Result<(Matcher, &str), FaultConfigError>> {
    s.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|rule| {
            let (method, value) = rule
                .split_once('=')
                .ok_or_else(|| FaultConfigError(format!("{rule:?} is not method=value")))?;
            Ok((Matcher::parse(method.trim()), value.trim()))
        })
}

/// `FAULT_DELAY` rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultDelays(Vec<(Matcher, Duration)>);

impl FromStr for FaultDelays {
    type Err = FaultConfigError;

    fn from_str(s: &str) -> Result<FaultDelays, FaultConfigError> {
        let mut rules = split_rules(s)
            .map(|rule| {
                let (matcher, value) = rule?;
                let delay = humantime::parse_duration(value)
                    .map_err(|e| FaultConfigError(format!("delay {value:?}: {e}")))?;
                Ok((matcher, delay))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.sort_by_key(|(m, _)| m.rank());
        Ok(FaultDelays(rules))
    }
}

/// What an error rule injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Injected {
    /// Answer this status.
    Status(Code),
    /// Panic where the handler would run.
    Panic,
    /// Run the handler, then answer UNAVAILABLE instead of its response.
    DropResponse,
}

/// How often an error rule fires.
#[derive(Debug, Clone)]
enum Chance {
    /// At random, with this probability.
    Probability(f64),
    /// Deterministically, for the first `k` of every `n` matching calls
    /// (`k/n`), counted per rule: tests that need a fault to happen.
    Every {
        k: u64,
        n: u64,
        calls: Arc<std::sync::atomic::AtomicU64>,
    },
}

impl PartialEq for Chance {
    fn eq(&self, other: &Chance) -> bool {
        match (self, other) {
            (Chance::Probability(a), Chance::Probability(b)) => a == b,
            (Chance::Every { k, n, .. }, Chance::Every { k: k2, n: n2, .. }) => (k, n) == (k2, n2),
            _ => false,
        }
    }
}

impl Chance {
    fn parse(text: &str) -> Result<Chance, FaultConfigError> {
        if let Some((k, n)) = text.split_once('/') {
            let parse = |v: &str| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| FaultConfigError(format!("{text:?} is not k/n")))
            };
            let (k, n) = (parse(k)?, parse(n)?);
            if n == 0 || k > n {
                return Err(FaultConfigError(format!(
                    "{text:?}: k/n needs 0 <= k <= n and n > 0"
                )));
            }
            return Ok(Chance::Every {
                k,
                n,
                calls: Default::default(),
            });
        }
        let probability: f64 = text
            .parse()
            .map_err(|_| FaultConfigError(format!("probability {text:?}")))?;
        if !(0.0..=1.0).contains(&probability) {
            return Err(FaultConfigError(format!(
                "probability {probability} is not between 0 and 1"
            )));
        }
        Ok(Chance::Probability(probability))
    }

    fn fires(&self) -> bool {
        match self {
            Chance::Probability(p) => fastrand::f64() < *p,
            Chance::Every { k, n, calls } => {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n < *k
            }
        }
    }
}

/// `FAULT_ERROR` rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultErrors(Vec<(Matcher, Injected, Chance)>);

impl FromStr for FaultErrors {
    type Err = FaultConfigError;

    fn from_str(s: &str) -> Result<FaultErrors, FaultConfigError> {
        let mut rules = split_rules(s)
            .map(|rule| {
                let (matcher, value) = rule?;
                let (code, chance) = match value.split_once(':') {
                    Some((code, chance)) => (code, Chance::parse(chance)?),
                    None => (value, Chance::Probability(1.0)),
                };
                let injected = if code.eq_ignore_ascii_case("panic") {
                    Injected::Panic
                } else if code.eq_ignore_ascii_case("drop") {
                    Injected::DropResponse
                } else {
                    Injected::Status(parse_code(code)?)
                };
                Ok((matcher, injected, chance))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.sort_by_key(|(m, _, _)| m.rank());
        Ok(FaultErrors(rules))
    }
}

fn parse_code(name: &str) -> Result<Code, FaultConfigError> {
    let code = match name.to_ascii_lowercase().replace('-', "_").as_str() {
        "cancelled" => Code::Cancelled,
        "unknown" => Code::Unknown,
        "invalid_argument" => Code::InvalidArgument,
        "deadline_exceeded" => Code::DeadlineExceeded,
        "not_found" => Code::NotFound,
        "already_exists" => Code::AlreadyExists,
        "permission_denied" => Code::PermissionDenied,
        "resource_exhausted" => Code::ResourceExhausted,
        "failed_precondition" => Code::FailedPrecondition,
        "aborted" => Code::Aborted,
        "out_of_range" => Code::OutOfRange,
        "unimplemented" => Code::Unimplemented,
        "internal" => Code::Internal,
        "unavailable" => Code::Unavailable,
        "data_loss" => Code::DataLoss,
        "unauthenticated" => Code::Unauthenticated,
        other => {
            return Err(FaultConfigError(format!(
                "{other:?} is not a gRPC status code name"
            )));
        }
    };
    Ok(code)
}

/// Builds [`Fault`] services.
#[derive(Debug, Clone, Default)]
pub struct FaultLayer {
    /// None without rules (the usual case): nothing to count per call when
    /// tonic clones the stack for it, nothing to look up.
    rules: Option<Arc<(FaultDelays, FaultErrors)>>,
}

impl FaultLayer {
    /// A layer applying `delays` and `errors`; logs a warning when either
    /// has rules, so that nobody runs with faults by accident.
    pub fn new(service: &str, delays: FaultDelays, errors: FaultErrors) -> FaultLayer {
        if delays.0.is_empty() && errors.0.is_empty() {
            return FaultLayer { rules: None };
        }
        tracing::warn!(
            service,
            delays = ?delays.0,
            errors = ?errors.0,
            "FAULT INJECTION IS ON: calls will be delayed or failed on purpose"
        );
        FaultLayer {
            rules: Some(Arc::new((delays, errors))),
        }
    }

    fn delay_for(&self, path: &str) -> Option<Duration> {
        let (delays, _) = &**self.rules.as_ref()?;
        delays
            .0
            .iter()
            .find(|(m, _)| m.matches(path))
            .map(|(_, d)| *d)
    }

    fn error_for(&self, path: &str) -> Option<Injected> {
        let (_, errors) = &**self.rules.as_ref()?;
        let (_, injected, chance) = errors.0.iter().find(|(m, _, _)| m.matches(path))?;
        chance.fires().then_some(*injected)
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`FaultLayer`] builds.
#[derive(Debug, Clone)]
pub struct Fault<S> {
    inner: S,
    layer: FaultLayer,
}

impl<S, ReqBody> Service<Request<ReqBody>> for Fault<S>
where
    S: Service<Request<ReqBody>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    /// The call as it is (no fault for its method, the usual case), or
    /// the fault around it.
    type Future =
        Either<S::Future, Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        let delay = self.layer.delay_for(path);
        let error = self.layer.error_for(path);
        if delay.is_none() && error.is_none() {
            return Either::Left(self.inner.call(req));
        }
        tracing::info!(rpc.method = %path, ?delay, error = ?error, "injecting fault");
        // The inner service was made ready for this call; take it and
        // leave a fresh clone behind (the usual tower pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            match error {
                Some(Injected::Status(code)) => Ok(Status::new(code, "injected fault").into_http()),
                Some(Injected::Panic) => panic!("injected panic (FAULT_ERROR)"),
                Some(Injected::DropResponse) => {
                    let response = inner.call(req).await?;
                    drop(response);
                    Ok(Status::unavailable("injected fault: response dropped").into_http())
                }
                None => inner.call(req).await,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_the_most_specific_wins() {
        let delays: FaultDelays = "*=10ms, GetUser=2s, /shop.user.v1.UserService/GetUser=3s"
            .parse()
            .unwrap();
        let layer = FaultLayer::new("test", delays, FaultErrors::default());
        assert_eq!(
            layer.delay_for("/shop.user.v1.UserService/GetUser"),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            layer.delay_for("/other.Service/GetUser"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            layer.delay_for("/shop.user.v1.UserService/ListUsers"),
            Some(Duration::from_millis(10))
        );
    }

    #[test]
    fn errors_parse_with_optional_probability() {
        let errors: FaultErrors = "GetUser=unavailable, ListUsers=RESOURCE_EXHAUSTED:0"
            .parse()
            .unwrap();
        let layer = FaultLayer::new("test", FaultDelays::default(), errors);
        assert_eq!(
            layer.error_for("/shop.user.v1.UserService/GetUser"),
            Some(Injected::Status(Code::Unavailable))
        );
        assert!(
            layer
                .error_for("/shop.user.v1.UserService/ListUsers")
                .is_none()
        );
        assert!(
            layer
                .error_for("/shop.user.v1.UserService/CreateUser")
                .is_none()
        );
    }

    #[test]
    fn a_k_of_n_rule_fires_deterministically() {
        let errors: FaultErrors = "CreateOrder=drop:1/3".parse().unwrap();
        let layer = FaultLayer::new("test", FaultDelays::default(), errors);
        let fired: Vec<bool> = (0..7)
            .map(|_| layer.error_for("/x.Y/CreateOrder").is_some())
            .collect();
        assert_eq!(fired, [true, false, false, true, false, false, true]);
    }

    #[test]
    fn panic_is_a_fault_too() {
        let errors: FaultErrors = "GetUser=panic".parse().unwrap();
        let layer = FaultLayer::new("test", FaultDelays::default(), errors);
        assert_eq!(layer.error_for("/x.Y/GetUser"), Some(Injected::Panic));
    }

    #[tokio::test]
    async fn a_dropped_response_comes_after_the_handler_ran() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use tower::ServiceExt as _;

        let ran = Arc::new(AtomicU32::new(0));
        let handler = {
            let ran = Arc::clone(&ran);
            tower::service_fn(move |_: Request<Body>| {
                ran.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, std::convert::Infallible>(Response::new(Body::empty())) }
            })
        };
        let errors: FaultErrors = "CreateOrder=drop".parse().unwrap();
        let layer = FaultLayer::new("test", FaultDelays::default(), errors);
        let request = Request::builder()
            .uri("/shop.order.v1.OrderService/CreateOrder")
            .body(Body::empty())
            .unwrap();
        let response = layer.layer(handler).oneshot(request).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the handler ran");
        assert_eq!(
            shop_core::status::grpc_status(response.headers()),
            Some(Code::Unavailable)
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!("GetUser".parse::<FaultDelays>().is_err());
        assert!("GetUser=soon".parse::<FaultDelays>().is_err());
        assert!("GetUser=teapot".parse::<FaultErrors>().is_err());
        assert!("GetUser=internal:1.5".parse::<FaultErrors>().is_err());
        assert!("GetUser=internal:2/1".parse::<FaultErrors>().is_err());
        assert!("GetUser=internal:1/0".parse::<FaultErrors>().is_err());
        assert_eq!("".parse::<FaultDelays>().unwrap(), FaultDelays::default());
    }
}
