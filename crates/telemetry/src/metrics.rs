//! The grpc-ecosystem (go-grpc-prometheus) metrics of calls: names per
//! side, handles registered once per method, and the client-side event
//! counters (attempts, retries, throttled retries).

use std::sync::{Arc, OnceLock};

use tonic::Code;

use metrics::Label;

use crate::labels::{MethodLabels, Protocol, code_label};

/// Which side of a call is being observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This process serves the call.
    Server,
    /// This process makes the call.
    Client,
}

/// The metric handles of one method on one side. Building a labelled key
/// and finding it in the registry costs more than the update itself, so
/// each method's handles are registered once and kept (see
/// [`MethodMetrics::of`]).
#[derive(Debug)]
pub(crate) struct MethodMetrics {
    side: Side,
    /// The method's labels (and, on the server, the protocol's).
    base: Vec<Label>,
    pub(crate) started: metrics::Counter,
    pub(crate) handling: metrics::Histogram,
    pub(crate) received: metrics::Counter,
    pub(crate) sent: metrics::Counter,
    /// Size of each message received (its length as framed on the wire).
    pub(crate) received_size: metrics::Histogram,
    /// Size of each message sent.
    pub(crate) sent_size: metrics::Histogram,
    /// `grpc_*_handled_total` per status code, registered on first use.
    handled: [OnceLock<metrics::Counter>; 17],
}

impl MethodMetrics {
    fn register(side: Side, labels: MethodLabels, protocol: Protocol) -> MethodMetrics {
        let names = side.metric_names();
        let l = labels;
        let mut base = vec![
            Label::new("grpc_type", l.grpc_type),
            Label::new("grpc_service", l.grpc_service),
            Label::new("grpc_method", l.grpc_method),
        ];
        // The server says how the call came in; a client always speaks gRPC.
        if side == Side::Server {
            base.push(Label::new("protocol", protocol.label()));
        }
        let counter = |name: &'static str| metrics::counter!(name, base.clone());
        let histogram = |name: &'static str| metrics::histogram!(name, base.clone());
        MethodMetrics {
            side,
            started: counter(names.started),
            handling: histogram(names.handling),
            received: counter(names.received),
            sent: counter(names.sent),
            received_size: histogram(names.received_size),
            sent_size: histogram(names.sent_size),
            handled: Default::default(),
            base,
        }
    }

    /// The handles for `labels` on `side`: kept once this crate's
    /// Prometheus recorder is installed (from then on the global recorder
    /// cannot change), registered afresh before that, so that a call
    /// observed before start-up finished is not tied to a no-op handle.
    pub(crate) fn of(side: Side, labels: MethodLabels, protocol: Protocol) -> Arc<MethodMetrics> {
        type Table = Box<[[OnceLock<Arc<MethodMetrics>>; 4]]>;
        static TABLE: OnceLock<Table> = OnceLock::new();
        if !crate::init::recorder_installed() {
            return Arc::new(MethodMetrics::register(side, labels, protocol));
        }
        let table = TABLE.get_or_init(|| {
            (0..MethodLabels::slots())
                .map(|_| Default::default())
                .collect()
        });
        let column = match (side, protocol) {
            (Side::Server, Protocol::Grpc) => 0,
            (Side::Server, Protocol::GrpcWeb) => 1,
            (Side::Server, Protocol::Http) => 2,
            (Side::Client, _) => 3,
        };
        Arc::clone(
            table[labels.slot][column]
                .get_or_init(|| Arc::new(MethodMetrics::register(side, labels, protocol))),
        )
    }

    pub(crate) fn handled(&self, code: Code) -> &metrics::Counter {
        self.handled[(code as usize).min(16)].get_or_init(|| {
            let mut labels = self.base.clone();
            labels.push(Label::new("grpc_code", code_label(code)));
            metrics::counter!(self.side.metric_names().handled, labels)
        })
    }
}

/// The grpc-ecosystem metric names of one side.
struct MetricNames {
    started: &'static str,
    handled: &'static str,
    handling: &'static str,
    received: &'static str,
    sent: &'static str,
    received_size: &'static str,
    sent_size: &'static str,
}

impl Side {
    fn metric_names(self) -> MetricNames {
        match self {
            Side::Server => MetricNames {
                started: "grpc_server_started_total",
                handled: "grpc_server_handled_total",
                handling: "grpc_server_handling_seconds",
                received: "grpc_server_msg_received_total",
                sent: "grpc_server_msg_sent_total",
                received_size: "grpc_server_msg_received_size_bytes",
                sent_size: "grpc_server_msg_sent_size_bytes",
            },
            Side::Client => MetricNames {
                started: "grpc_client_started_total",
                handled: "grpc_client_handled_total",
                handling: "grpc_client_handling_seconds",
                received: "grpc_client_msg_received_total",
                sent: "grpc_client_msg_sent_total",
                received_size: "grpc_client_msg_received_size_bytes",
                sent_size: "grpc_client_msg_sent_size_bytes",
            },
        }
    }
}

/// Counts one more attempt of an outgoing call of `path` after a failed
/// one, in `grpc_client_retries_total` (labelled like the other
/// `grpc_client_*` metrics).
pub fn count_retry(path: &str) {
    count_client_event("grpc_client_retries_total", path);
}

/// Counts one attempt of an outgoing call of `path` that went out to an
/// endpoint, in `grpc_client_attempts_total`.
pub fn count_attempt(path: &str) {
    count_client_event("grpc_client_attempts_total", path);
}

/// Counts an outgoing call of `path` that failed and was not retried
/// because the retry throttle said so, in
/// `grpc_client_retries_throttled_total`.
pub fn count_retry_throttled(path: &str) {
    count_client_event("grpc_client_retries_throttled_total", path);
}

/// Adds one to the per-method client counter `name` for `path`.
fn count_client_event(name: &'static str, path: &str) {
    let l = MethodLabels::of(path);
    metrics::counter!(name,
        "grpc_type" => l.grpc_type,
        "grpc_service" => l.grpc_service,
        "grpc_method" => l.grpc_method)
    .increment(1);
}
