//! Browsers on the gRPC port. gRPC-Web is translated to gRPC by tonic-web
//! outside every other layer, so auth, deadlines (`grpc-timeout`), limits,
//! metrics and traces see a native call (the metrics label it
//! `protocol="grpc-web"`, marked before the translation). CORS answers only for the origins
//! `CORS_ALLOWED_ORIGINS` names; with none (the default) no CORS header is
//! sent, and a page on another origin cannot read any answer.

use std::{str::FromStr, time::Duration};

use http::{HeaderName, HeaderValue, Method, Request, header};
use shop_telemetry::labels::Protocol;
use tonic::body::Body;
use tower::util::MapRequestLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The origins browsers may call from, e.g. `https://shop.example.com`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<HeaderValue>);

impl FromStr for AllowedOrigins {
    type Err = String;

    fn from_str(text: &str) -> Result<AllowedOrigins, String> {
        let mut origins = Vec::new();
        for origin in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if origin == "*" {
                return Err("`*` would let any web page call with its users' tokens; name the origins (https://shop.example.com)".into());
            }
            let (scheme, host) = origin
                .split_once("://")
                .ok_or_else(|| format!("{origin:?} is not an origin (scheme://host[:port])"))?;
            if !matches!(scheme, "http" | "https")
                || host.is_empty()
                || host.contains(['/', '?', '#', '@', ' '])
                || http::uri::Authority::from_str(host).is_err()
            {
                return Err(format!(
                    "{origin:?} is not an origin (http:// or https://, a host, an optional port, nothing after)"
                ));
            }
            let value = HeaderValue::from_str(origin).map_err(|e| format!("{origin:?}: {e}"))?;
            if !origins.contains(&value) {
                origins.push(value);
            }
        }
        Ok(AllowedOrigins(origins))
    }
}

impl AllowedOrigins {
    /// No origin is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Request headers a gRPC-Web client sends besides the simple ones.
const ALLOWED_HEADERS: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    HeaderName::from_static("x-grpc-web"),
    HeaderName::from_static("x-user-agent"),
    HeaderName::from_static("grpc-timeout"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
];

/// Response headers a page may read: the status of a trailers-only answer
/// comes in them.
const EXPOSED_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("grpc-status"),
    HeaderName::from_static("grpc-message"),
    HeaderName::from_static("grpc-status-details-bin"),
    HeaderName::from_static("x-request-id"),
];

/// The CORS layer for `origins`, or none when no origin is allowed.
pub fn cors(origins: &AllowedOrigins) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.0.iter().cloned()))
            // POST for gRPC-Web; the rest for the REST routes.
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(Duration::from_secs(24 * 60 * 60)),
    )
}

/// Marks each request with the [`Protocol`] it came in, before gRPC-Web
/// is translated away, for the `protocol` label of the server metrics.
pub type MarkProtocolLayer = MapRequestLayer<fn(Request<Body>) -> Request<Body>>;

/// The layer that marks requests with their protocol.
pub fn mark_protocol() -> MarkProtocolLayer {
    MapRequestLayer::new(mark as fn(Request<Body>) -> Request<Body>)
}

fn mark(mut request: Request<Body>) -> Request<Body> {
    let protocol = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map_or(Protocol::Grpc, |v| Protocol::of_content_type(v.as_bytes()));
    if protocol != Protocol::Grpc {
        request.extensions_mut().insert(protocol);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_and_mistakes_are_named() {
        assert!("".parse::<AllowedOrigins>().unwrap().is_empty());
        let two: AllowedOrigins =
            "https://shop.example.com, http://localhost:5173,https://shop.example.com"
                .parse()
                .unwrap();
        assert_eq!(two.0.len(), 2);
        for bad in [
            "*",
            "shop.example.com",
            "ftp://x",
            "https://",
            "https://x/path",
            "https://a b",
        ] {
            let error = bad.parse::<AllowedOrigins>().unwrap_err();
            assert!(error.contains("origin"), "{bad}: {error}");
        }
    }
}
