//! The tower layers of every shop server, each in its own module, and
//! [`server_layers`], which stacks them (its doc comment says why in this
//! order) with the observation over [`policy_layers`]. They work on HTTP
//! requests and bodies, so they see unary calls and all three kinds of
//! stream alike.

pub mod auth;
pub mod call_facts;
pub mod context;
pub mod fault;
pub mod observe;
pub mod protect;
pub mod rest;
pub mod size;
pub mod stream_limits;
pub mod web;
pub mod write_lane;

use std::sync::Arc;

use shop_auth::VerifyToken;
use tower::{
    ServiceBuilder,
    layer::util::{Identity, Stack},
};

use self::{
    auth::AuthLayer,
    context::ContextLayer,
    fault::FaultLayer,
    observe::ObserveLayer,
    protect::{ConcurrencyLimitLayer, PanicGuardLayer, RateLimitLayer},
    size::RequestSizeLayer,
    stream_limits::{StreamAuthority, StreamLimitsLayer},
    write_lane::WriteLaneLayer,
};
use crate::{args::ServerArgs, streams::Streams};

/// The layers every shop server runs, outermost first: the observation,
/// then [`PolicyLayers`].
pub type ServerLayers = ServiceBuilder<Stack<PolicyLayers, Stack<ObserveLayer, Identity>>>;

/// The per-call policies below the observation, outermost first (see
/// [`server_layers`] for the order).
pub type PolicyLayers = ServiceBuilder<
    Stack<
        WriteLaneLayer,
        Stack<
            FaultLayer,
            Stack<
                PanicGuardLayer,
                Stack<
                    ConcurrencyLimitLayer,
                    Stack<
                        StreamLimitsLayer,
                        Stack<
                            RateLimitLayer,
                            Stack<
                                AuthLayer,
                                Stack<ContextLayer, Stack<RequestSizeLayer, Identity>>,
                            >,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

/// The server stack, outermost first, and why in this order:
///
/// 1. observe (request id, trace context, span, metrics, access log):
///    first, so that everything below, refusals included, is counted,
///    logged with the request id and traced;
/// 2. request size: every layer and handler below reads a body whose
///    messages are refused from their length prefix when larger than the
///    method declares;
/// 3. context (the deadline): covers all the work below it, and carries
///    the caller's token, request id and trace into outgoing calls;
/// 4. auth: refuse what the caller may not call before doing any work;
/// 5. rate limit: after auth, so that the bucket is the caller's own
///    (anonymous callers share their peer address's);
/// 6. stream limits: a streaming call takes its place among the stream
///    limits (after auth and the rate limit, so that it is counted as the
///    caller's), and is bounded in idle time, lifetime and standing;
/// 7. concurrency limit: sheds unary load that got this far, before it
///    reaches a handler (streams are bounded by the stream limits
///    instead, so that long-lived streams cannot starve unary calls);
/// 8. panic guard: right around the handler, so a panic there is one
///    INTERNAL answer;
/// 9. fault injection: next to the handler, so that it simulates a slow or
///    failing service (a caller's deadline still cuts it short);
/// 10. write lane: innermost, so that only the handler of a call with side
///     effects moves to the lower-priority threads, and everything above
///     (frames, auth, limits, the access line) runs at the serving
///     threads' priority.
///
/// The policies (layers 2 to 10) come from [`policy_layers`], apart so
/// that the stack benchmark can measure each part alone.
pub fn server_layers(policies: PolicyLayers) -> ServerLayers {
    ServiceBuilder::new().layer(ObserveLayer).layer(policies)
}

/// Layers 2 to 10 of [`server_layers`]: everything below the observation.
///
/// `public` names the services that answer without a token and without a
/// rate limit (health and reflection, see
/// [`crate::serve::infrastructure_services`]); streams take their places
/// in `streams`, and `authority` tells whether a stream's account still
/// stands. The write lane's threads start here, unless `WRITE_LANE_NICE`
/// is 0, and stop when the last service built from these layers is
/// dropped.
pub fn policy_layers(
    service: &str,
    args: &ServerArgs,
    verifier: Arc<dyn VerifyToken>,
    public: &[&'static str],
    streams: Streams,
    authority: Option<Arc<dyn StreamAuthority>>,
) -> PolicyLayers {
    ServiceBuilder::new()
        .layer(RequestSizeLayer::new(args.max_message_bytes))
        .layer(ContextLayer::new(args.request_timeout_cap))
        .layer(AuthLayer::new(verifier, public))
        .layer(RateLimitLayer::new(
            args.rate_limit_per_second,
            args.rate_limit_burst,
            public,
        ))
        .layer(StreamLimitsLayer::new(streams, &args.streams, authority))
        .layer(ConcurrencyLimitLayer::new(args.max_concurrent_requests))
        .layer(PanicGuardLayer)
        .layer(FaultLayer::new(
            service,
            args.fault_delay.clone(),
            args.fault_error.clone(),
        ))
        .layer(WriteLaneLayer::new(args.write_lane_nice))
}
