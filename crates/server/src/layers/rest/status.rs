//! gRPC statuses as REST answers: the HTTP status `google/rpc/code.proto`
//! gives each code, a `google.rpc.Status` JSON body with the status's
//! details, `Retry-After` from its `RetryInfo`, and `WWW-Authenticate` on
//! 401.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use tonic::{Code, Status, body::Body};
use tonic_types::StatusExt as _;

/// The HTTP status of a gRPC code, as `google/rpc/code.proto` maps it.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a status code"),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `status` as the JSON of a `google.rpc.Status`: `code`, `message` and
/// `details`, each detail with its `@type`. Details whose type `pool` does
/// not know are left out rather than failing the answer.
pub fn status_json(status: &Status, pool: &DescriptorPool) -> serde_json::Value {
    let mut body = serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": [],
    });
    if status.details().is_empty() {
        return body;
    }
    let Some(desc) = pool.get_message_by_name("google.rpc.Status") else {
        return body;
    };
    let Ok(decoded) = DynamicMessage::decode(desc, status.details()) else {
        return body;
    };
    let mut details = Vec::new();
    if let Some(Value::List(items)) = decoded.get_field_by_name("details").as_deref() {
        for item in items {
            let Value::Message(any) = item else { continue };
            if let Ok(json) = serde_json::to_value(any) {
                details.push(json);
            }
        }
    }
    body["details"] = serde_json::Value::Array(details);
    body
}

/// The REST answer for a failed call: the code's HTTP status, the status as
/// JSON, and `extra` headers (the call's response headers without its
/// gRPC ones).
pub fn error_response(status: &Status, pool: &DescriptorPool, extra: HeaderMap) -> Response<Body> {
    let body = status_json(status, pool).to_string();
    let mut response = Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
    *response.status_mut() = http_status(status.code());
    let headers = response.headers_mut();
    for (name, value) in &extra {
        headers.append(name, value.clone());
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        // Whole seconds, rounded up: a client waiting that long is not early.
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    if status.code() == Code::Unauthenticated {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use tonic_types::ErrorDetails;

    /// The mapping is read back from `google/rpc/code.proto` itself: each
    /// code's "HTTP Mapping" comment must be what `http_status` answers.
    #[test]
    fn every_code_maps_as_code_proto_says() {
        let source = include_str!("../../../../../proto/google/rpc/code.proto");
        let mut mapped = 0;
        let mut expected = None;
        for line in source.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("// HTTP Mapping: ") {
                expected = rest.split(' ').next().and_then(|n| n.parse::<u16>().ok());
            } else if let Some((name, number)) = line.split_once(" = ")
                && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            {
                let number: i32 = number.trim_end_matches(';').parse().unwrap();
                let http = expected
                    .take()
                    .unwrap_or_else(|| panic!("{name}: no mapping"));
                assert_eq!(
                    http_status(Code::from_i32(number)).as_u16(),
                    http,
                    "{name} ({number})"
                );
                mapped += 1;
            }
        }
        assert_eq!(mapped, 17);
    }

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn details_become_typed_json_and_retry_info_a_retry_after() {
        let mut details = ErrorDetails::with_retry_info(Some(Duration::from_millis(1500)));
        details.add_bad_request_violation("email", "is not an email address");
        let status = Status::with_error_details(Code::ResourceExhausted, "slow down", details);
        let json = status_json(&status, &pool());
        assert_eq!(json["code"], 8);
        assert_eq!(json["message"], "slow down");
        let types: Vec<&str> = json["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["@type"].as_str().unwrap())
            .collect();
        assert!(
            types.contains(&"type.googleapis.com/google.rpc.RetryInfo"),
            "{json}"
        );
        assert!(
            types.contains(&"type.googleapis.com/google.rpc.BadRequest"),
            "{json}"
        );
        let bad = json["details"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
            .unwrap();
        assert_eq!(
            bad["fieldViolations"][0],
            serde_json::json!({"field": "email", "description": "is not an email address"})
        );

        let response = error_response(&status, &pool(), HeaderMap::new());
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn a_status_without_details_has_an_empty_list_and_401_asks_for_a_bearer() {
        let status = Status::unauthenticated("missing token");
        assert_eq!(
            status_json(&status, &pool()),
            serde_json::json!({"code": 16, "message": "missing token", "details": []})
        );
        let response = error_response(&status, &pool(), HeaderMap::new());
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
