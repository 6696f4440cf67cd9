//! Telemetry of shop processes, for the server kit and the client kit alike.
//!
//! - [`init()`]: the process-wide `tracing` subscriber (pretty or JSON lines),
//!   OpenTelemetry spans exported over OTLP when configured, and the
//!   Prometheus recorder behind `/metrics`.
//! - [`labels`]: metric labels of a method, from the generated method
//!   table, never from the request.
//! - [`histograms`]: histograms counted into fixed buckets as they are
//!   recorded, behind the same `/metrics` text.
//! - [`metrics`]: the grpc-ecosystem (go-grpc-prometheus) metric names and
//!   handles, and the client's attempt and retry counters.
//! - [`call`]: one observed call (span, metrics, access log), finished
//!   exactly once.
//! - [`body`]: bodies wrapped to count messages and read the final status.
//! - [`propagation`]: W3C trace context on HTTP headers and spans.
//! - [`trace_ids`]: trace ids for spans when nothing exports them.
//! - `filter`: what is recorded: log lines as `RUST_LOG` says, application
//!   spans always.
//! - [`text`]: log field values formatted on the stack (a socket address,
//!   a trace id), recorded as text rather than through `fmt`.
//! - [`process`]: the process's CPU, memory, descriptors and runtime,
//!   read for every scrape.
//!
//! The layers that use these sit in the kits: the server's observe layer
//! in `shop-server`, the client's in `shop-client`.

pub mod body;
pub mod call;
mod filter;
pub mod histograms;
pub mod init;
mod json_log;
pub mod labels;
mod log_writer;
pub mod metrics;
pub mod process;
pub mod propagation;
pub mod text;
pub mod trace_ids;

pub use init::{DEFAULT_LOG_FLUSH_DELAY, LogFormat, init, prometheus, shutdown};
pub use process::{record_process_metrics, record_runtime_metrics};
