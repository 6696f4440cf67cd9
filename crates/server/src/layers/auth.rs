//! Authentication and coarse authorization for every RPC.
//!
//! The layer looks up the called method in the policy table that shop-proto
//! generates from the protos' `(shop.options.v1.access)` options:
//!
//! - `PUBLIC`: passes; a valid bearer token, if sent, still yields a
//!   [`Principal`] for the handler.
//! - `AUTHENTICATED`: needs a valid bearer token (UNAUTHENTICATED otherwise).
//! - `ADMIN`: also needs the admin role (PERMISSION_DENIED otherwise).
//! - `SERVICE`: needs a service token in `x-service-token` (PERMISSION_DENIED
//!   without one, UNAUTHENTICATED for an invalid one): the calling service
//!   becomes a [`ServiceCaller`]; the end user's token, when forwarded in
//!   `authorization` and valid, still yields a [`Principal`] for audit.
//!
//! A service token is never a user's credential: in `authorization` it is
//! refused (UNAUTHENTICATED) wherever a user is expected.
//! - undeclared (`ACCESS_UNSPECIFIED`): refused, so a forgotten annotation
//!   fails closed.
//!
//! Methods of services outside the shop protos are answered UNIMPLEMENTED,
//! except infrastructure services the server registers as public (health,
//! reflection). Handlers do the fine-grained checks (self or admin) with the
//! [`Principal`] they find in the request extensions.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::{FutureExt as _, future::Either};
use http::{Request, Response, header::AUTHORIZATION};
use shop_auth::{BoxFuture, Principal, ServiceCaller, TokenError, VerifyError, VerifyToken};
use shop_proto::policy::{Access, MethodPolicy};
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

use super::protect::Refusal;

/// Tokens verified recently, so that a client sending the same token on
/// every call pays for the signature check once, not per call (an Ed25519
/// verification costs tens of microseconds). Entries expire with their
/// token and are dropped when the keys change (a retired key's tokens must
/// not outlive it here); the map is bounded.
#[derive(Default)]
struct VerifiedTokens {
    entries: std::sync::Mutex<VerifiedEntries>,
}

#[derive(Default)]
struct VerifiedEntries {
    /// The key generation the entries were verified under.
    generation: u64,
    by_token: std::collections::HashMap<String, Arc<Principal>, ByTail>,
}

/// Bytes at the end of a token that its hash covers: they lie in its
/// signature (86 characters for Ed25519).
const TOKEN_TAIL: usize = 64;

/// Hashes a token by its last [`TOKEN_TAIL`] bytes with the standard
/// library's keyed SipHash: the whole of a 470-byte token cost about 1,300
/// instructions a call, a seventh of what the auth layer costs (callgrind,
/// `scripts/bench.sh --instructions`). Keys are still compared whole. The
/// map resists collision attacks as well as before: only verified tokens
/// are stored, their signatures differ and nobody can choose them, and
/// the hash's key is random; a forged token with a stored token's tail
/// costs one extra comparison.
#[derive(Default, Clone)]
struct ByTail(std::hash::RandomState);

impl std::hash::BuildHasher for ByTail {
    type Hasher = Tail<std::hash::DefaultHasher>;

    fn build_hasher(&self) -> Self::Hasher {
        Tail(self.0.build_hasher())
    }
}

/// A hasher that hashes the last [`TOKEN_TAIL`] bytes of each write.
struct Tail<H>(H);

impl<H: std::hash::Hasher> std::hash::Hasher for Tail<H> {
    fn finish(&self) -> u64 {
        self.0.finish()
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0
            .write(&bytes[bytes.len().saturating_sub(TOKEN_TAIL)..]);
    }
}

/// Most tokens kept verified at once.
const VERIFIED_TOKENS_CAPACITY: usize = 10_000;

impl VerifiedTokens {
    fn get(&self, token: &str, now: i64, generation: u64) -> Option<Arc<Principal>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.generation != generation {
            entries.by_token.clear();
            entries.generation = generation;
            return None;
        }
        entries
            .by_token
            .get(token)
            .filter(|p| p.expires_at > now)
            .cloned()
    }

    fn insert(&self, token: &str, principal: &Arc<Principal>, now: i64, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.generation != generation {
            entries.by_token.clear();
            entries.generation = generation;
        }
        if entries.by_token.len() >= VERIFIED_TOKENS_CAPACITY {
            entries.by_token.retain(|_, p| p.expires_at > now);
            if entries.by_token.len() >= VERIFIED_TOKENS_CAPACITY {
                entries.by_token.clear();
            }
        }
        entries
            .by_token
            .insert(token.to_owned(), Arc::clone(principal));
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Builds [`Auth`] services.
///
/// Everything behind one `Arc`: tonic clones the whole layer stack for
/// every call, so each `Arc` a layer holds is one more pair of atomic
/// operations a call.
#[derive(Clone)]
pub struct AuthLayer(Arc<AuthState>);

/// What every [`Auth`] service of a server shares.
struct AuthState {
    verifier: Arc<dyn VerifyToken>,
    public_services: Box<[&'static str]>,
    verified: VerifiedTokens,
}

impl AuthLayer {
    /// A layer that verifies tokens with `verifier` and lets calls to
    /// `public_services` (fully qualified service names, such as
    /// `grpc.health.v1.Health`) through without a token.
    pub fn new(verifier: Arc<dyn VerifyToken>, public_services: &[&'static str]) -> AuthLayer {
        AuthLayer(Arc::new(AuthState {
            verifier,
            public_services: public_services.into(),
            verified: VerifiedTokens::default(),
        }))
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] builds.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, ReqBody> Service<Request<ReqBody>> for Auth<S>
where
    S: Service<Request<ReqBody>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<
        Either<S::Future, Refusal<S::Error>>,
        BoxFuture<'static, Result<Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Nearly every call carries tokens verified before: decided here and
        // now from the verified tokens, the call goes on as the inner
        // service's own future, with nothing of this layer's to box.
        match self
            .layer
            .verdict(&req, Checking::CachedOnly)
            .now_or_never()
        {
            Some(Ok(verdict)) => {
                verdict.apply(&mut req);
                return Either::Left(Either::Left(self.inner.call(req)));
            }
            Some(Err(status)) => {
                return Either::Left(Either::Right(futures_util::future::ready(Ok(
                    status.into_http()
                ))));
            }
            None => {}
        }
        let layer = self.layer.clone();
        // The inner service was made ready for this call; take it and leave
        // a fresh clone behind (the usual tower pattern for async layers).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            match layer.verdict(&req, Checking::Full).await {
                Ok(verdict) => {
                    verdict.apply(&mut req);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        }))
    }
}

/// How a call's tokens are verified: from the verified tokens alone (a
/// token not among them leaves the verdict pending, and the call is
/// decided again in full), or in full (the signature checked when need be).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checking {
    CachedOnly,
    Full,
}

/// Who a call that passed is from: the calling service and the end user,
/// each when there is one.
struct Verdict {
    caller: Option<ServiceCaller>,
    principal: Option<Arc<Principal>>,
}

impl Verdict {
    /// Puts the caller where handlers and the access line find it: the
    /// access line names the end user when there is one, else the calling
    /// service (`service:order-service`).
    fn apply<B>(self, req: &mut Request<B>) {
        if let Some(slot) = super::call_facts::caller_slot_of(req) {
            match (&self.principal, &self.caller) {
                (Some(principal), _) => slot.set(principal.clone()),
                (None, Some(caller)) => slot.set(Arc::new(caller.clone())),
                (None, None) => {}
            }
        }
        if let Some(caller) = self.caller {
            req.extensions_mut().insert(caller);
        }
        if let Some(principal) = self.principal {
            req.extensions_mut().insert(principal);
        }
    }
}

impl AuthLayer {
    /// The verdict on `req`, read in place: its method, path and tokens
    /// (not its body, which need not be `Sync` to be held across the check).
    fn verdict<'a, B>(
        &'a self,
        req: &'a Request<B>,
        checking: Checking,
    ) -> impl Future<Output = Result<Verdict, Status>> + Send + 'a {
        let method = super::call_facts::method_of(req);
        self.verdict_on(req.uri().path(), method, req.headers(), checking)
    }

    async fn verdict_on(
        &self,
        path: &str,
        method: Option<&'static MethodPolicy>,
        headers: &http::HeaderMap,
        checking: Checking,
    ) -> Result<Verdict, Status> {
        // Only a service method reads the service token.
        let is_service_method = method.is_some_and(|m| m.access == Access::Service);
        let caller = match service_token(headers).filter(|_| is_service_method) {
            Some(service_token) => Some(self.authorize_service(service_token, checking).await?),
            None => None,
        };
        let principal = self
            .authorize(
                path,
                method,
                bearer_token(headers),
                caller.is_some(),
                checking,
            )
            .await?;
        Ok(Verdict { caller, principal })
    }

    /// The calling service of a service token.
    async fn authorize_service(
        &self,
        token: &str,
        checking: Checking,
    ) -> Result<ServiceCaller, Status> {
        let principal = self.verify(token, checking).await.map_err(|err| {
            tracing::debug!(error = %err, "service token refused");
            match err {
                VerifyError::KeysUnavailable => {
                    Status::unavailable("cannot verify tokens yet; retry shortly")
                }
                VerifyError::Token(_) => Status::unauthenticated("invalid service token"),
            }
        })?;
        match principal.service_name() {
            Some(name) => Ok(ServiceCaller {
                name: name.to_owned(),
            }),
            None => Err(Status::permission_denied(
                "x-service-token must be a service token",
            )),
        }
    }

    /// [`Self::authorize`] of a call to `path`, its policy looked up.
    #[cfg(test)]
    async fn authorize_path(
        &self,
        path: &str,
        token: Option<&str>,
        service_proven: bool,
        checking: Checking,
    ) -> Result<Option<Arc<Principal>>, Status> {
        let method = shop_proto::policy::lookup(path);
        self.authorize(path, method, token, service_proven, checking)
            .await
    }

    /// The end user of a call to `path`, whose policy is `method`;
    /// `service_proven` says whether a valid service token came with it (see [`Self::authorize_service`]).
    async fn authorize(
        &self,
        path: &str,
        method: Option<&'static MethodPolicy>,
        token: Option<&str>,
        service_proven: bool,
        checking: Checking,
    ) -> Result<Option<Arc<Principal>>, Status> {
        let Some(method) = method else {
            let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
            if self.0.public_services.contains(&service) {
                return Ok(None);
            }
            return Err(Status::unimplemented(format!("unknown method {path}")));
        };
        match method.access {
            Access::Public => match token {
                Some(t) => Ok(self.verify_user(t, checking).await.ok()),
                None => Ok(None),
            },
            Access::Service => {
                if !service_proven {
                    return Err(Status::permission_denied(
                        "this method is for shop services only",
                    ));
                }
                // For audit only: a missing or expired user token does not
                // stop a service (a retried release outlives the token).
                match token {
                    Some(t) => Ok(self.verify_user(t, checking).await.ok()),
                    None => Ok(None),
                }
            }
            Access::Authenticated => self.authenticate(token, checking).await.map(Some),
            Access::Admin => {
                let principal = self.authenticate(token, checking).await?;
                if principal.is_admin() {
                    Ok(Some(principal))
                } else {
                    Err(Status::permission_denied(
                        "this method requires the admin role",
                    ))
                }
            }
            Access::Unspecified => {
                tracing::error!(
                    method = path,
                    "RPC has no (shop.options.v1.access) option; refusing it"
                );
                Err(Status::permission_denied(
                    "this method declares no access rule",
                ))
            }
        }
    }

    async fn verify(&self, token: &str, checking: Checking) -> Result<Arc<Principal>, VerifyError> {
        let now = unix_now();
        let generation = self.0.verifier.generation();
        if let Some(principal) = self.0.verified.get(token, now, generation) {
            return Ok(principal);
        }
        if checking == Checking::CachedOnly {
            // Never ready: the caller decides again with `Checking::Full`.
            std::future::pending::<()>().await;
        }
        let principal = Arc::new(self.0.verifier.verify(token).await?);
        // Under the generation the token was checked against: if the keys
        // changed meanwhile, the entry is dropped at the next look.
        self.0.verified.insert(token, &principal, now, generation);
        Ok(principal)
    }

    /// [`Self::verify`], refusing service tokens: they never stand for a
    /// user.
    async fn verify_user(
        &self,
        token: &str,
        checking: Checking,
    ) -> Result<Arc<Principal>, VerifyError> {
        let principal = self.verify(token, checking).await?;
        if principal.service_name().is_some() {
            return Err(VerifyError::Token(TokenError::Malformed));
        }
        Ok(principal)
    }

    async fn authenticate(
        &self,
        token: Option<&str>,
        checking: Checking,
    ) -> Result<Arc<Principal>, Status> {
        let token = token.ok_or_else(|| {
            Status::unauthenticated("missing bearer token in the authorization metadata")
        })?;
        self.verify_user(token, checking).await.map_err(|err| {
            tracing::debug!(error = %err, "access token refused");
            match err {
                VerifyError::Token(TokenError::Expired) => {
                    Status::unauthenticated("access token expired")
                }
                VerifyError::Token(_) => Status::unauthenticated("invalid access token"),
                VerifyError::KeysUnavailable => {
                    Status::unavailable("cannot verify tokens yet; retry shortly")
                }
            }
        })
    }
}

/// The token of an `authorization: Bearer <token>` header (scheme matched
/// case-insensitively), if there is one.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The metadata key a calling service's own token travels in (besides the
/// end user's `authorization`).
pub const SERVICE_TOKEN_HEADER: &str = "x-service-token";

/// [`SERVICE_TOKEN_HEADER`] as a header name, not parsed again per call.
const SERVICE_TOKEN: http::HeaderName = http::HeaderName::from_static(SERVICE_TOKEN_HEADER);

/// The service token of a request, if there is one.
pub fn service_token(headers: &http::HeaderMap) -> Option<&str> {
    let token = headers.get(SERVICE_TOKEN)?.to_str().ok()?.trim();
    (!token.is_empty()).then_some(token)
}

/// The calling service of a request to an `ACCESS_SERVICE` method that
/// passed the auth layer; PERMISSION_DENIED otherwise (a wiring bug must
/// not turn into open access).
pub fn service_caller<T>(request: &tonic::Request<T>) -> Result<&ServiceCaller, Status> {
    request
        .extensions()
        .get::<ServiceCaller>()
        .ok_or_else(|| Status::permission_denied("this method is for shop services only"))
}

/// The caller of a request that passed the auth layer.
///
/// Returns UNAUTHENTICATED when there is none, which for an
/// `AUTHENTICATED` or `ADMIN` method only happens if the layer is missing
/// from the server: a wiring bug that must not turn into open access.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<&Principal, Status> {
    principal_of(request.extensions())
}

/// [`principal`], from the extensions of a request taken apart
/// (`tonic::Request::into_parts`): a handler that moves its message out
/// reads the caller without copying it.
pub fn principal_of(extensions: &http::Extensions) -> Result<&Principal, Status> {
    principal_in(extensions).ok_or_else(|| Status::new(Code::Unauthenticated, "not authenticated"))
}

/// The caller the auth layer put in `extensions`, if any (kept there as an
/// `Arc<Principal>`, shared with its verified-token entry).
pub fn principal_in(extensions: &http::Extensions) -> Option<&Principal> {
    extensions.get::<Arc<Principal>>().map(|p| &**p)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shop_auth::{KeySet, Role, SigningKey, TokenIssuer, TokenVerifier};

    use super::*;

    fn layer_with_issuer() -> (AuthLayer, TokenIssuer) {
        let key = Arc::new(SigningKey::generate());
        let keys: KeySet = [key.verification_key().clone()].into_iter().collect();
        let verifier = TokenVerifier::new(keys, "iss", "aud", Duration::from_secs(30));
        let issuer = TokenIssuer::new(key, "iss", "aud", Duration::from_secs(60));
        (
            AuthLayer::new(Arc::new(verifier), &["grpc.health.v1.Health"]),
            issuer,
        )
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        let mut h = http::HeaderMap::new();
        h.insert(AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        // What is not visible ASCII is no token.
        h.insert(
            AUTHORIZATION,
            http::HeaderValue::from_bytes("Bearer ab\u{e9}c".as_bytes()).unwrap(),
        );
        assert_eq!(bearer_token(&h), None);
        h.insert(
            AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer ab\xffc").unwrap(),
        );
        assert_eq!(bearer_token(&h), None);
    }

    #[tokio::test]
    async fn public_methods_need_no_token() {
        let (layer, _) = layer_with_issuer();
        let r = layer
            .authorize_path(
                "/shop.user.v1.UserService/CreateUser",
                None,
                false,
                Checking::Full,
            )
            .await;
        assert_eq!(r.unwrap(), None);
        // A bad token on a public method is ignored, not an error.
        let r = layer
            .authorize_path(
                "/shop.auth.v1.AuthService/Login",
                Some("junk"),
                false,
                Checking::Full,
            )
            .await;
        assert_eq!(r.unwrap(), None);
    }

    #[tokio::test]
    async fn authenticated_methods_need_a_valid_token() {
        let (layer, issuer) = layer_with_issuer();
        let path = "/shop.user.v1.UserService/GetUser";
        let err = layer
            .authorize_path(path, None, false, Checking::Full)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = layer
            .authorize_path(path, Some("x.y.z"), false, Checking::Full)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);

        let token = issuer.issue("u1", &[Role::Customer]).unwrap().token;
        let p = layer
            .authorize_path(path, Some(&token), false, Checking::Full)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.user_id, "u1");
    }

    #[tokio::test]
    async fn admin_methods_need_the_admin_role() {
        let (layer, issuer) = layer_with_issuer();
        let path = "/shop.user.v1.UserService/ListUsers";
        let customer = issuer.issue("u1", &[Role::Customer]).unwrap().token;
        let err = layer
            .authorize_path(path, Some(&customer), false, Checking::Full)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let admin = issuer
            .issue("a", &[Role::Customer, Role::Admin])
            .unwrap()
            .token;
        assert!(
            layer
                .authorize_path(path, Some(&admin), false, Checking::Full)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn service_methods_need_a_service_token_and_user_tokens_never_are_one() {
        let (layer, issuer) = layer_with_issuer();
        let path = "/shop.inventory.v1.InventoryService/ReserveStock";
        let customer = issuer.issue("u1", &[Role::Customer]).unwrap().token;
        let admin = issuer.issue("a", &[Role::Admin]).unwrap().token;
        let service = issuer
            .issue("service:order-service", &[Role::Service])
            .unwrap()
            .token;

        // A customer's or an admin's token alone is not a service.
        for token in [&customer, &admin] {
            let err = layer
                .authorize_path(path, Some(token), false, Checking::Full)
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied);
        }
        // A user token offered as the service token is refused.
        for token in [&customer, &admin] {
            let err = layer
                .authorize_service(token, Checking::Full)
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied);
        }
        let err = layer
            .authorize_service("x.y.z", Checking::Full)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);

        // A service token proves the service; the user's token rides along.
        let caller = layer
            .authorize_service(&service, Checking::Full)
            .await
            .unwrap();
        assert_eq!(caller.name, "order-service");
        let user = layer
            .authorize_path(path, Some(&customer), true, Checking::Full)
            .await
            .unwrap();
        assert_eq!(user.unwrap().user_id, "u1");

        // And a service token is no user anywhere else.
        let get_user = "/shop.user.v1.UserService/GetUser";
        let err = layer
            .authorize_path(get_user, Some(&service), false, Checking::Full)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }

    #[tokio::test]
    async fn a_verified_token_is_decided_at_once_and_a_new_one_in_full() {
        let (layer, issuer) = layer_with_issuer();
        let path = "/shop.user.v1.UserService/GetUser";
        let token = issuer.issue("u1", &[Role::Customer]).unwrap().token;
        let call = |token: Option<&str>| {
            let mut req = Request::builder().uri(path);
            if let Some(token) = token {
                req = req.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            req.body(()).unwrap()
        };
        let with_token = call(Some(&token));
        assert!(
            layer
                .verdict(&with_token, Checking::CachedOnly)
                .now_or_never()
                .is_none(),
            "a token not verified yet waits for the full check"
        );
        let full = layer.verdict(&with_token, Checking::Full).await.unwrap();
        assert_eq!(full.principal.unwrap().user_id, "u1");
        let at_once = layer
            .verdict(&with_token, Checking::CachedOnly)
            .now_or_never()
            .expect("a verified token is decided at once")
            .unwrap();
        assert_eq!(at_once.principal.unwrap().user_id, "u1");

        // A refusal that needs no signature is decided at once too.
        let refused = layer
            .verdict(&call(None), Checking::CachedOnly)
            .now_or_never()
            .expect("decided at once")
            .err()
            .expect("refused");
        assert_eq!(refused.code(), Code::Unauthenticated);
        // And a bad token never is: it is checked in full, and refused.
        let junk = call(Some("x.y.z"));
        assert!(
            layer
                .verdict(&junk, Checking::CachedOnly)
                .now_or_never()
                .is_none()
        );
        let refused = layer.verdict(&junk, Checking::Full).await.err().unwrap();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }

    #[test]
    fn verified_tokens_expire_with_the_token_and_stay_bounded() {
        let cache = VerifiedTokens::default();
        let principal = |exp| Principal {
            user_id: "u".into(),
            roles: vec![],
            token_id: "t".into(),
            expires_at: exp,
        };
        cache.insert("t1", &Arc::new(principal(100)), 50, 0);
        assert!(cache.get("t1", 99, 0).is_some());
        assert!(cache.get("t1", 100, 0).is_none(), "expired");
        for i in 0..VERIFIED_TOKENS_CAPACITY + 10 {
            cache.insert(&format!("k{i}"), &Arc::new(principal(1_000)), 50, 0);
        }
        assert!(cache.entries.lock().unwrap().by_token.len() <= VERIFIED_TOKENS_CAPACITY);
    }

    #[test]
    fn tokens_sharing_their_tail_are_kept_apart() {
        let cache = VerifiedTokens::default();
        let principal = |user: &str| Principal {
            user_id: user.into(),
            roles: vec![],
            token_id: "t".into(),
            expires_at: 1_000,
        };
        let tail = "s".repeat(TOKEN_TAIL);
        let (first, second) = (format!("a.{tail}"), format!("b.{tail}"));
        cache.insert(&first, &Arc::new(principal("first")), 50, 0);
        assert_eq!(cache.get(&first, 60, 0).unwrap().user_id, "first");
        assert!(cache.get(&second, 60, 0).is_none(), "only its tail matches");
        cache.insert(&second, &Arc::new(principal("second")), 50, 0);
        assert_eq!(cache.get(&first, 60, 0).unwrap().user_id, "first");
        assert_eq!(cache.get(&second, 60, 0).unwrap().user_id, "second");
    }

    #[test]
    fn verified_tokens_are_forgotten_when_the_keys_change() {
        let cache = VerifiedTokens::default();
        let principal = Arc::new(Principal {
            user_id: "u".into(),
            roles: vec![],
            token_id: "t".into(),
            expires_at: 1_000,
        });
        cache.insert("t1", &principal, 50, 7);
        assert!(cache.get("t1", 60, 7).is_some());
        assert!(cache.get("t1", 60, 8).is_none(), "a key was retired");
        assert!(cache.get("t1", 60, 7).is_none(), "and the entry is gone");
    }

    #[tokio::test]
    async fn unknown_methods_are_unimplemented_but_infrastructure_passes() {
        let (layer, _) = layer_with_issuer();
        let err = layer
            .authorize_path(
                "/shop.user.v1.UserService/Nope",
                None,
                false,
                Checking::Full,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        let err = layer
            .authorize_path("/other.Svc/Call", None, false, Checking::Full)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        assert!(
            layer
                .authorize_path("/grpc.health.v1.Health/Check", None, false, Checking::Full)
                .await
                .is_ok()
        );
    }
}
