//! What the observe layer establishes about a call once, for the layers
//! below it: when the call came in, the method's declared policy (looked
//! up in the generated table by path), the request id (the caller's when
//! sane, else a new one) and where the auth layer names the caller for the
//! access line.
//!
//! Five layers ask what a call's method is (streaming? who may call it?
//! how large a request? side effects?) and the context layer needs the
//! request id the observe layer settled. Each finding them again cost a
//! table search or a header look-up and validation per layer per call;
//! the observe layer leaves [`CallFacts`] in the request's extensions
//! instead, all in one entry: each entry of a request's extensions is a
//! boxed value in a map that grows as they come, and a call carries eight
//! or so. A layer serving without the observe layer above it (its own
//! tests, a host application's stack) finds them itself.

use http::{HeaderValue, Request};
use shop_proto::policy::{self, MethodPolicy};
use shop_telemetry::call::CallerSlot;
use tokio::time::Instant;

/// When a call came in, its method policy and request id, as the observe
/// layer found them, and the slot its access line names the caller from.
#[derive(Debug, Clone)]
pub struct CallFacts {
    /// When the call came in: its handling time and its deadline count
    /// from here (one read of the clock for both). tokio's clock, as the
    /// deadline's timer reads it (a test's paused clock included).
    pub started: Instant,
    /// The method's declared policy; `None` for a path no shop proto
    /// declares (health, reflection, unknown).
    pub method: Option<&'static MethodPolicy>,
    /// The request id the call runs under (also in its `x-request-id`).
    pub request_id: HeaderValue,
    /// Where the auth layer puts the authenticated caller for the call's
    /// access line (`CallerSlot::of` the call's record).
    pub caller: CallerSlot,
}

/// When `req`'s call came in (now, without the observe layer above).
pub fn started_of<B>(req: &Request<B>) -> Instant {
    match req.extensions().get::<CallFacts>() {
        Some(facts) => facts.started,
        None => Instant::now(),
    }
}

/// The declared policy of `req`'s method.
pub fn method_of<B>(req: &Request<B>) -> Option<&'static MethodPolicy> {
    match req.extensions().get::<CallFacts>() {
        Some(facts) => facts.method,
        None => policy::lookup(req.uri().path()),
    }
}

/// Where the access line of `req`'s call names its caller; `None` when no
/// observe layer is above (nothing logs the call).
pub fn caller_slot_of<B>(req: &Request<B>) -> Option<&CallerSlot> {
    req.extensions()
        .get::<CallFacts>()
        .map(|facts| &facts.caller)
}

/// The request id `req` runs under (see `shop_core::context::request_id_of`).
pub fn request_id_of<B>(req: &Request<B>) -> HeaderValue {
    match req.extensions().get::<CallFacts>() {
        Some(facts) => facts.request_id.clone(),
        None => shop_core::context::request_id_of(req.headers()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET_USER: &str = "/shop.user.v1.UserService/GetUser";

    fn request(path: &str, request_id: &str) -> Request<()> {
        Request::builder()
            .uri(format!("http://test{path}"))
            .header(shop_core::context::REQUEST_ID, request_id)
            .body(())
            .unwrap()
    }

    #[test]
    fn without_facts_each_is_found_from_the_request() {
        let req = request(GET_USER, "caller-1");
        assert_eq!(method_of(&req).map(|m| m.path), Some(GET_USER));
        assert_eq!(request_id_of(&req), "caller-1");
        let req = request("/grpc.health.v1.Health/Check", "two words");
        assert!(method_of(&req).is_none());
        assert_ne!(request_id_of(&req), "two words", "an insane id is replaced");
    }

    #[test]
    fn facts_left_in_the_request_are_what_the_layers_read() {
        let mut req = request(GET_USER, "caller-1");
        let create_user = policy::lookup("/shop.user.v1.UserService/CreateUser");
        let started = Instant::now();
        req.extensions_mut().insert(CallFacts {
            started,
            method: create_user,
            request_id: HeaderValue::from_static("settled-1"),
            caller: CallerSlot::default(),
        });
        assert_eq!(
            method_of(&req).map(|m| m.path),
            create_user.map(|m| m.path),
            "the facts, not the path, answer"
        );
        assert_eq!(request_id_of(&req), "settled-1");
        assert_eq!(started_of(&req), started);
    }
}
