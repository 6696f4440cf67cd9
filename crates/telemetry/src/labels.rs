//! The labels of a call: method labels from the generated method table,
//! never from the request (so a caller cannot create label values), and
//! the go-grpc-prometheus spelling of status codes.

use tonic::Code;

/// How a call reached the server: the `protocol` label of the
/// `grpc_server_*` metrics. gRPC-Web is translated to gRPC before the
/// layers run; the request says which it was with this extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Native gRPC over HTTP/2.
    #[default]
    Grpc,
    /// gRPC-Web (HTTP/1.1 or HTTP/2), from browsers.
    GrpcWeb,
    /// REST/JSON, from the protos' `google.api.http` routes.
    Http,
}

impl Protocol {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Http => "http",
        }
    }

    /// Which protocol a request with this `content-type` speaks.
    pub fn of_content_type(content_type: &[u8]) -> Protocol {
        if content_type.starts_with(b"application/grpc-web") {
            Protocol::GrpcWeb
        } else {
            Protocol::Grpc
        }
    }
}

/// The metric labels of a method: static strings from the generated
/// method table (or `unknown`), so a caller cannot create label values.
#[derive(Debug, Clone, Copy)]
pub struct MethodLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// `package.Service`.
    pub grpc_service: &'static str,
    /// `Method`.
    pub grpc_method: &'static str,
    /// Dense index of the method (shop methods, then [`OTHER_METHODS`],
    /// then `unknown`), for per-method tables.
    pub(crate) slot: usize,
}

/// Methods outside the shop protos that every service serves.
const OTHER_METHODS: [(&str, &str, &str, &str); 2] = [
    (
        "/grpc.health.v1.Health/Check",
        "unary",
        "grpc.health.v1.Health",
        "Check",
    ),
    (
        "/grpc.health.v1.Health/Watch",
        "server_stream",
        "grpc.health.v1.Health",
        "Watch",
    ),
];

impl MethodLabels {
    /// The declared policy of the method, when a shop proto declares it.
    pub fn declared(&self) -> Option<&'static shop_proto::policy::MethodPolicy> {
        shop_proto::policy::methods().get(self.slot)
    }

    /// Labels for the method at `path`; methods outside the shop protos
    /// (health, reflection) get their well-known names or `unknown`.
    pub fn of(path: &str) -> MethodLabels {
        if let Some(slot) = shop_proto::policy::position(path) {
            let m = &shop_proto::policy::methods()[slot];
            let grpc_type = match (m.client_streaming, m.server_streaming) {
                (false, false) => "unary",
                (true, false) => "client_stream",
                (false, true) => "server_stream",
                (true, true) => "bidi_stream",
            };
            return MethodLabels {
                grpc_type,
                grpc_service: m.service,
                grpc_method: m.method,
                slot,
            };
        }
        let shop = shop_proto::policy::methods().len();
        for (i, (p, t, s, m)) in OTHER_METHODS.into_iter().enumerate() {
            if p == path {
                return MethodLabels {
                    grpc_type: t,
                    grpc_service: s,
                    grpc_method: m,
                    slot: shop + i,
                };
            }
        }
        MethodLabels {
            grpc_type: "unknown",
            grpc_service: "unknown",
            grpc_method: "unknown",
            slot: shop + OTHER_METHODS.len(),
        }
    }

    /// How many distinct slots there are.
    pub(crate) fn slots() -> usize {
        shop_proto::policy::methods().len() + OTHER_METHODS.len() + 1
    }
}

/// The go-grpc-prometheus spelling of a status code (`OK`, `NotFound`, ...).
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_method_table() {
        let l = MethodLabels::of("/shop.order.v1.OrderService/WatchOrder");
        assert_eq!(
            (l.grpc_type, l.grpc_service, l.grpc_method),
            ("server_stream", "shop.order.v1.OrderService", "WatchOrder")
        );
        let u = MethodLabels::of("/attacker.Controlled/Name");
        assert_eq!(u.grpc_method, "unknown");
        assert_eq!(code_label(Code::NotFound), "NotFound");
    }
}
