//! Process-wide telemetry, set up once by a binary (or devstack) with
//! [`init`]:
//!
//! - the `tracing` subscriber: `RUST_LOG` filters, `LOG_FORMAT` picks
//!   `pretty` (a terminal) or `json` (log shippers); in JSON every line
//!   carries the fields of the span it was emitted in, so every line of a
//!   request has its `request_id` and `trace_id`;
//! - OpenTelemetry tracing: spans always get W3C trace ids (so logs carry
//!   them and `traceparent` propagates); they are exported over OTLP/gRPC
//!   only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, honouring the standard
//!   `OTEL_*` variables (service name, resource attributes, sampler, batch
//!   delay). Unset, nothing is exported and nothing complains, and spans
//!   carry their ids alone ([`crate::trace_ids`]), with no OpenTelemetry
//!   span built for them;
//! - the Prometheus metrics recorder behind `/metrics`.

use std::{
    str::FromStr,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::PrometheusBuilder;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::{
    filter,
    histograms::{BucketedRecorder, MetricsHandle},
    json_log::{JsonFields, JsonLines},
    log_writer::{self, WriterGuard},
    trace_ids::TraceIdLayer,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "pretty" | "text" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected pretty or json)"
            )),
        }
    }
}

/// Latency buckets (seconds) for the `*_handling_seconds` histograms: from
/// a fast cached read to a slow cross-service write.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Size buckets (bytes) for the `*_msg_*_size_bytes` histograms: from an
/// id to the 4 MiB default message limit and past it.
const SIZE_BUCKETS: &[f64] = &[
    32.0,
    128.0,
    512.0,
    2048.0,
    8192.0,
    32768.0,
    131_072.0,
    524_288.0,
    2_097_152.0,
    4_194_304.0,
    16_777_216.0,
];

/// Wait buckets (seconds) for the `*_wait_seconds` histograms (a stream
/// producer waiting for its client to read): from a blip to a client that
/// stopped reading.
const WAIT_BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 1.0, 10.0, 60.0];

/// Commit buckets (seconds) for the `*_commit_seconds` histograms (a
/// database `COMMIT`, its disk flush): from a write cache's flush to a
/// disk that stalls.
const COMMIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

static PROMETHEUS: OnceLock<MetricsHandle> = OnceLock::new();
static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The histograms counted into fixed buckets as they are recorded (see
/// `histograms`), by the suffix of their names.
const BUCKETED: &[(&str, &[f64])] = &[
    ("_handling_seconds", LATENCY_BUCKETS),
    ("_size_bytes", SIZE_BUCKETS),
    ("_wait_seconds", WAIT_BUCKETS),
    ("_commit_seconds", COMMIT_BUCKETS),
];

/// The metrics recorder (Prometheus, with `BUCKETED`'s histograms of
/// its own: every histogram the services record is one of them, as
/// summaries cannot be added up across replicas), installed on first use
/// (also without `init`, so that in-process tests and library users get
/// metrics too).
pub fn prometheus() -> &'static MetricsHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = BucketedRecorder::new(PrometheusBuilder::new().build_recorder(), BUCKETED);
        let handle = recorder.handle();
        // Another recorder already installed (a host application's): keep
        // theirs; this handle then renders nothing, which is correct.
        let _ = metrics::set_global_recorder(recorder);
        // Summaries and idle entries need periodic upkeep, which nothing
        // else does for a recorder installed this way.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let upkeep = handle.clone();
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    upkeep.run_upkeep();
                }
            });
        }
        handle
    })
}

/// Whether [`prometheus`] has run: from then on the global metrics
/// recorder is fixed (ours, or a host application's installed earlier).
pub fn recorder_installed() -> bool {
    PROMETHEUS.get().is_some()
}

/// Installs the global subscriber, tracer provider and metrics recorder.
/// `default_filter` applies when `RUST_LOG` is unset; `service_name` is the
/// OpenTelemetry `service.name` unless `OTEL_SERVICE_NAME` says otherwise;
/// log lines are written at most `flush_delay` after they are logged
/// (zero: as soon as the writer thread wakes).
/// Calling it again (several services in one process) keeps the first set.
/// Must run inside a Tokio runtime (the OTLP exporter uses tonic).
pub fn init(
    service_name: &'static str,
    format: LogFormat,
    flush_delay: Duration,
    default_filter: &str,
) {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    prometheus();

    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Both, as either may be the one in force (RUST_LOG unparsable).
    let directives = format!(
        "{},{default_filter}",
        std::env::var("RUST_LOG").unwrap_or_default()
    );
    // Lines are formatted on the calling thread and written to stdout by a
    // thread of their own, which waits out `flush_delay` after a first line
    // so that the lines which follow share one `write` (see `log_writer`).
    // Not lossy: callers wait when LOG_BUFFER_LIMIT bytes are queued.
    let (writer, guard) = match log_writer::spawn(
        "log-writer",
        std::io::stdout(),
        flush_delay,
        LOG_BUFFER_LIMIT,
    ) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("telemetry: log writer thread not started ({e}); nothing is logged");
            return;
        }
    };
    let _ = LOG_WRITER.set(Mutex::new(Some(guard)));
    // Spans become OpenTelemetry spans only when something exports them;
    // otherwise they just get their W3C ids (see `trace_ids`), which is
    // all the log lines and outgoing calls need, and one filter serves the
    // whole subscriber (see `filter`).
    if otlp_endpoint_set() {
        let provider = TRACER_PROVIDER.get_or_init(|| tracer_provider(service_name));
        // Thread, source location and busy/idle time are not recorded: the
        // same for every call, and each costs time per span.
        let exporter = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name))
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_filter(filter::exported());
        let _ = tracing_subscriber::registry()
            .with(exporter)
            .with(log_lines(format, writer, false).with_filter(filter::lines_and_call_spans(env)))
            .try_init();
    } else {
        let installed = tracing_subscriber::registry()
            .with(filter::Global::new(
                filter::lines_and_call_spans(env),
                &directives,
            ))
            .with(TraceIdLayer::default())
            .with(log_lines(format, writer, true))
            .try_init();
        if installed.is_ok() {
            SPANS_ONLY_LOGGED.store(true, Ordering::Relaxed);
            if format == LogFormat::Json {
                LINES_WRITE_TRACE_IDS.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Set once [`init`] has installed JSON lines that write each span's trace
/// id from the ids [`TraceIdLayer`] keeps.
static LINES_WRITE_TRACE_IDS: AtomicBool = AtomicBool::new(false);

/// Whether the log lines write every span's trace id themselves, so that
/// no span need record it (see `propagation::record_trace_id`), and a
/// server call's fields from where its span keeps them typed (see
/// `call::server_span`).
pub(crate) fn lines_write_trace_ids() -> bool {
    LINES_WRITE_TRACE_IDS.load(Ordering::Relaxed)
}

/// Set once [`init`] has installed a subscriber that exports no spans.
static SPANS_ONLY_LOGGED: AtomicBool = AtomicBool::new(false);

/// Whether spans go nowhere but the log lines: [`init`] installed the
/// subscriber without an exporter. Not so when another subscriber is in
/// place (a host application's, a test's), which may export them.
pub(crate) fn spans_only_logged() -> bool {
    SPANS_ONLY_LOGGED.load(Ordering::Relaxed)
}

/// The layer that writes log lines, in `format`, to `writer`; in JSON,
/// with each span's trace id from [`TraceIdLayer`] when `trace_ids`.
fn log_lines<S>(
    format: LogFormat,
    writer: log_writer::LogWriter,
    trace_ids: bool,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match format {
        LogFormat::Pretty => fmt::layer().with_target(true).with_writer(writer).boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(writer)
            .fmt_fields(JsonFields)
            .event_format(JsonLines { trace_ids })
            .boxed(),
    }
}

/// Whether an OTLP endpoint for spans is configured.
fn otlp_endpoint_set() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// A provider that exports spans to the configured OTLP endpoint.
fn tracer_provider(service_name: &'static str) -> SdkTracerProvider {
    let resource = Resource::builder().build();
    // OTEL_SERVICE_NAME wins; otherwise the binary's own name.
    let resource = if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        resource
    } else {
        Resource::builder().with_service_name(service_name).build()
    };
    let builder = SdkTracerProvider::builder().with_resource(resource);
    match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(exporter) => builder.with_batch_exporter(exporter).build(),
        Err(e) => {
            eprintln!("telemetry: OTLP exporter not started ({e}); spans are not exported");
            builder.build()
        }
    }
}

/// Bytes of log lines queued for the writer thread past which callers
/// wait (about 50,000 access lines).
const LOG_BUFFER_LIMIT: usize = 16 * 1024 * 1024;

/// How long the log writer thread waits after a first line by default, so
/// that the lines which follow share its `write`.
pub const DEFAULT_LOG_FLUSH_DELAY: Duration = Duration::from_millis(10);

/// The log writer thread's guard: dropping it writes out what is queued.
static LOG_WRITER: OnceLock<Mutex<Option<WriterGuard>>> = OnceLock::new();

/// Flushes and stops span export, and writes out queued log lines; call
/// before the process exits.
pub fn shutdown() {
    if let Some(writer) = LOG_WRITER.get() {
        drop(writer.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
    if let Some(provider) = TRACER_PROVIDER.get() {
        let _ = provider.force_flush();
        let _ = provider.shutdown();
    }
}
