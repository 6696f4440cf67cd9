//! Building `tonic::Status` the same way in every service.
//!
//! INVALID_ARGUMENT carries every bad field at once as
//! `google.rpc.BadRequest` field violations; unexpected failures are logged
//! with their cause and answered INTERNAL with a generic message, so no
//! database or library text reaches a caller. [`grpc_status`] reads the
//! status a response carries, and [`normalize_status`] fixes the one code
//! tonic gets wrong. [`to_proto`] and [`from_proto`] carry a status inside
//! an answer, as one of several calls' outcomes.

use std::{fmt::Display, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt as _};

use crate::validation;

/// INVALID_ARGUMENT with one `google.rpc.BadRequest` field violation per
/// invalid field. The message lists them too, for clients that do not read
/// details.
pub fn invalid_argument(
    violations: impl IntoIterator<Item = validation::FieldViolation>,
) -> Status {
    let violations: Vec<FieldViolation> = violations
        .into_iter()
        .map(|v| FieldViolation::new(v.field, v.description))
        .collect();
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {message}"),
        ErrorDetails::with_bad_request(violations),
    )
}

/// FAILED_PRECONDITION with one `google.rpc.PreconditionFailure`
/// violation per unmet condition, given as (type, subject, description).
pub fn failed_preconditions(
    message: &str,
    violations: impl IntoIterator<Item = (String, String, String)>,
) -> Status {
    let violations: Vec<PreconditionViolation> = violations
        .into_iter()
        .map(|(kind, subject, description)| PreconditionViolation::new(kind, subject, description))
        .collect();
    Status::with_error_details(
        Code::FailedPrecondition,
        message,
        ErrorDetails::with_precondition_failure(violations),
    )
}

/// INTERNAL with a generic message; `cause` is logged, never sent.
pub fn internal(cause: impl Display) -> Status {
    tracing::error!(error = %cause, "internal error");
    Status::internal("internal error")
}

/// UNAVAILABLE for a dependency (such as the database) that cannot be
/// reached; `cause` is logged, never sent. Clients may retry.
pub fn unavailable(cause: impl Display) -> Status {
    tracing::warn!(error = %cause, "dependency unavailable");
    Status::unavailable("service temporarily unavailable, retry later")
}

/// RESOURCE_EXHAUSTED saying what ran out and, as `google.rpc.RetryInfo`,
/// when to come back.
pub fn resource_exhausted(what: &str, retry_after: Duration) -> Status {
    let wait = retry_after.max(Duration::from_millis(1));
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("{what}; retry in {} ms", wait.as_millis()),
        ErrorDetails::with_retry_info(Some(wait)),
    )
}

/// The `google.rpc.RetryInfo` delay `status` carries, if any: when the
/// server said to come back.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
}

/// `status` as a `google.rpc.Status` message (code, message and details),
/// for an answer that carries several outcomes (ReserveStocks' results);
/// [`from_proto`] turns it back into the status.
pub fn to_proto(status: &Status) -> tonic_types::pb::Status {
    let mut proto = if status.details().is_empty() {
        tonic_types::pb::Status::default()
    } else {
        prost::Message::decode(status.details()).unwrap_or_default()
    };
    proto.code = status.code() as i32;
    proto.message = status.message().to_owned();
    proto
}

/// The status a `google.rpc.Status` message ([`to_proto`]) stands for,
/// its details readable with `tonic_types::StatusExt`.
pub fn from_proto(proto: tonic_types::pb::Status) -> Status {
    let code = Code::from(proto.code);
    let message = proto.message.clone();
    Status::with_details(code, message, prost::Message::encode_to_vec(&proto).into())
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The `grpc-status` in `headers` (response headers of a trailers-only
/// answer, or trailers), if there is one. Read on every call, several
/// times: the name is not parsed again and a code of one or two digits
/// (all of gRPC's) is read from its digits.
pub fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get(GRPC_STATUS)?;
    let code = match *value.as_bytes() {
        [digit @ b'0'..=b'9'] => i32::from(digit - b'0'),
        [tens @ b'0'..=b'9', ones @ b'0'..=b'9'] => {
            i32::from(tens - b'0') * 10 + i32::from(ones - b'0')
        }
        _ => value.to_str().ok()?.parse::<i32>().ok()?,
    };
    Some(Code::from(code))
}

/// tonic answers a message over the size limit with OUT_OF_RANGE; gRPC's
/// status code guide (and every other implementation) says
/// RESOURCE_EXHAUSTED. Rewrites it in place, so callers, metrics and logs
/// all see RESOURCE_EXHAUSTED. Returns the status the headers carry then,
/// as [`grpc_status`] reads it.
pub fn normalize_status(headers: &mut HeaderMap) -> Option<Code> {
    let code = grpc_status(headers);
    if code != Some(Code::OutOfRange) {
        return code;
    }
    let too_large = headers
        .get(GRPC_MESSAGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| {
            m.contains("message%20length%20too%20large") || m.contains("message length too large")
        });
    if !too_large {
        return code;
    }
    headers.insert(GRPC_STATUS, HeaderValue::from_static("8"));
    Some(Code::ResourceExhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_code_reads_as_its_text_parsed_as_a_number_would() {
        let parsed = |text: &str| text.parse::<i32>().ok().map(Code::from);
        let mut texts: Vec<String> = (0..=120).map(|n| n.to_string()).collect();
        texts.extend(
            [
                "00",
                "07",
                "+1",
                "-3",
                "",
                "x",
                "1x",
                " 1",
                "9 ",
                "2147483648",
                "٣",
            ]
            .map(String::from),
        );
        for text in texts {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", HeaderValue::from_str(&text).unwrap());
            assert_eq!(grpc_status(&headers), parsed(&text), "{text:?}");
        }
        assert_eq!(grpc_status(&HeaderMap::new()), None);
    }

    #[test]
    fn a_status_in_a_message_keeps_its_code_message_and_details() {
        let short = failed_preconditions(
            "stock is short",
            [("STOCK".into(), "sku-1".into(), "2 left".into())],
        );
        let back = from_proto(to_proto(&short));
        assert_eq!(back.code(), Code::FailedPrecondition);
        assert_eq!(back.message(), "stock is short");
        let violations = back.get_details_precondition_failure().unwrap().violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].subject, "sku-1");

        let plain = from_proto(to_proto(&Status::already_exists("taken")));
        assert_eq!(
            (plain.code(), plain.message()),
            (Code::AlreadyExists, "taken")
        );
    }

    #[test]
    fn invalid_argument_lists_every_field_in_details() {
        let mut v = validation::Violations::new();
        v.add("email", "is not valid");
        v.add("username", "is too short");
        let status = invalid_argument(v.into_result().unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("BadRequest details");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["email", "username"]);
        assert!(status.message().contains("email: is not valid"));
    }

    #[test]
    fn internal_hides_the_cause() {
        let status = internal("duplicate key value violates constraint users_pkey");
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("users_pkey"));
    }

    #[test]
    fn oversized_message_status_becomes_resource_exhausted() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("Error,%20decoded%20message%20length%20too%20large"),
        );
        assert_eq!(normalize_status(&mut h), Some(Code::ResourceExhausted));
        assert_eq!(grpc_status(&h), Some(Code::ResourceExhausted));

        let mut other = HeaderMap::new();
        other.insert("grpc-status", HeaderValue::from_static("11"));
        assert_eq!(normalize_status(&mut other), Some(Code::OutOfRange));
        assert_eq!(normalize_status(&mut HeaderMap::new()), None);
        assert_eq!(
            grpc_status(&other),
            Some(Code::OutOfRange),
            "only the size error"
        );
    }
}
