//! Histograms with fixed buckets, counted as they are recorded.
//!
//! metrics-exporter-prometheus keeps every sample a histogram records,
//! with the time it was recorded, in a lock-free list, and sorts them into
//! buckets only when `/metrics` is read or its upkeep runs (every 5 s):
//! each sample costs a clock read and 16 bytes until then, and a busy
//! server's upkeep sorts hundreds of thousands at once on a runtime
//! thread. A call records three (its duration and its two message sizes,
//! the grpc-ecosystem histograms), so every call paid three clock reads
//! and a growing buffer for them. Here a histogram whose name has
//! configured buckets is a counter per bucket, a count and a sum: a sample
//! is a short scan of the bucket bounds and three atomic additions, and
//! memory stays as it was.
//!
//! `BucketedRecorder` wraps the Prometheus recorder: such histograms are
//! registered here, everything else with it, and [`MetricsHandle::render`]
//! writes its text followed by these histograms, line for line as the
//! exporter writes a histogram with the same buckets (tested).

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    PrometheusHandle, PrometheusRecorder,
    formatting::{
        sanitize_description, sanitize_label_key, sanitize_label_value, sanitize_metric_name,
    },
};

/// One histogram's series: a count per bucket (not cumulative), the count
/// of all samples and their sum.
#[derive(Debug)]
struct Buckets {
    bounds: &'static [f64],
    /// One per bound, then one for samples above the last.
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum's `f64` bits.
    sum: AtomicU64,
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Buckets {
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        // A sample on a bound counts in that bound's bucket (`le`).
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

/// The histograms of one name: its description and its series by labels.
#[derive(Debug, Default)]
struct Family {
    description: Option<String>,
    /// Each series by its labels as written (`key="value"`, in the key's
    /// order).
    series: BTreeMap<Vec<String>, Arc<Buckets>>,
}

/// The histograms with fixed buckets, by name.
#[derive(Debug, Default)]
struct Families {
    by_name: Mutex<BTreeMap<String, Family>>,
}

/// The Prometheus recorder, with the histograms whose names end in one of
/// `buckets`' suffixes kept here (see the module docs).
#[derive(Debug)]
pub(crate) struct BucketedRecorder {
    inner: PrometheusRecorder,
    buckets: &'static [(&'static str, &'static [f64])],
    families: Arc<Families>,
}

impl BucketedRecorder {
    /// `inner`, with the histograms named `*suffix` counted into the
    /// buckets of their suffix (each bound list ascending).
    pub(crate) fn new(
        inner: PrometheusRecorder,
        buckets: &'static [(&'static str, &'static [f64])],
    ) -> BucketedRecorder {
        BucketedRecorder {
            inner,
            buckets,
            families: Arc::default(),
        }
    }

    /// The handle that renders both.
    pub(crate) fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            prometheus: self.inner.handle(),
            families: self.families.clone(),
        }
    }

    fn bounds_of(&self, name: &str) -> Option<&'static [f64]> {
        self.buckets
            .iter()
            .find(|(suffix, _)| name.ends_with(suffix))
            .map(|(_, bounds)| *bounds)
    }
}

impl Recorder for BucketedRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if self.bounds_of(key.as_str()).is_none() {
            return self.inner.describe_histogram(key, unit, description);
        }
        let mut families = self.families.lock();
        let family = families
            .entry(sanitize_metric_name(key.as_str()))
            .or_default();
        family.description = Some(sanitize_description(&description));
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let Some(bounds) = self.bounds_of(key.name()) else {
            return self.inner.register_histogram(key, metadata);
        };
        let labels: Vec<String> = key
            .labels()
            .map(|label| {
                format!(
                    "{}=\"{}\"",
                    sanitize_label_key(label.key()),
                    sanitize_label_value(label.value())
                )
            })
            .collect();
        let mut families = self.families.lock();
        let family = families
            .entry(sanitize_metric_name(key.name()))
            .or_default();
        let series = family
            .series
            .entry(labels)
            .or_insert_with(|| Arc::new(Buckets::new(bounds)));
        Histogram::from_arc(series.clone())
    }
}

impl Families {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Family>> {
        self.by_name.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every family in the Prometheus text format, as the exporter writes
    /// a histogram: cumulative buckets, `+Inf`, sum, count.
    fn render(&self, out: &mut String) {
        for (name, family) in self.lock().iter() {
            if family.series.is_empty() {
                continue;
            }
            if let Some(description) = &family.description {
                let _ = writeln!(out, "# HELP {name} {description}");
            }
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (labels, buckets) in &family.series {
                let count = buckets.count.load(Ordering::Relaxed);
                let mut cumulative = 0;
                for (bound, bucket) in buckets.bounds.iter().zip(buckets.counts.iter()) {
                    cumulative += bucket.load(Ordering::Relaxed);
                    line(
                        out,
                        name,
                        "_bucket",
                        labels,
                        Some(bound as &dyn fmt::Display),
                        cumulative,
                    );
                }
                line(
                    out,
                    name,
                    "_bucket",
                    labels,
                    Some(&"+Inf" as &dyn fmt::Display),
                    count,
                );
                let sum = f64::from_bits(buckets.sum.load(Ordering::Relaxed));
                line(out, name, "_sum", labels, None, sum);
                line(out, name, "_count", labels, None, count);
            }
            out.push('\n');
        }
    }
}

/// `name suffix{labels,le="bound"} value`, as the exporter's
/// `formatting::write_metric_line` writes it (which takes its labels as a
/// `LabelSet`, built with an `indexmap` map this crate has no other use
/// for).
fn line(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[String],
    le: Option<&dyn fmt::Display>,
    value: impl fmt::Display,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        out.push_str(&labels.join(","));
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "le=\"{le}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Renders `/metrics`: the Prometheus recorder's metrics, then the
/// histograms with fixed buckets.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
    families: Arc<Families>,
}

impl MetricsHandle {
    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = self.prometheus.render();
        self.families.render(&mut text);
        text
    }

    /// The Prometheus recorder's periodic upkeep (its summaries, idle
    /// entries); the histograms here need none.
    pub fn run_upkeep(&self) {
        self.prometheus.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

    use super::*;

    const SECONDS: &[f64] = &[0.001, 0.01, 0.1, 1.0];
    const BYTES: &[f64] = &[32.0, 512.0];

    fn recorders() -> (BucketedRecorder, PrometheusRecorder) {
        let ours = BucketedRecorder::new(
            PrometheusBuilder::new().build_recorder(),
            &[("_seconds", SECONDS), ("_bytes", BYTES)],
        );
        let theirs = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES))
            .unwrap()
            .build_recorder();
        (ours, theirs)
    }

    /// The lines of `text` that belong to `name`, in order, without the
    /// blank lines between families.
    fn family<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| {
                let l = l
                    .trim_start_matches("# HELP ")
                    .trim_start_matches("# TYPE ");
                l.starts_with(name)
            })
            .collect()
    }

    #[test]
    fn a_histogram_renders_as_the_exporter_renders_it_with_the_same_buckets() {
        let (ours, theirs) = recorders();
        // Samples below, on and between the bounds and above the last, in
        // two series; sums that add up exactly in any order.
        let samples = [0.0005, 0.001, 0.25, 0.5, 2.0, 0.0625];
        for recorder in [&ours as &dyn Recorder, &theirs] {
            recorder.describe_histogram(
                "grpc_server_handling_seconds".into(),
                None,
                "How long a call took to handle.".into(),
            );
            let metadata = metrics::Metadata::new("test", metrics::Level::INFO, None);
            for (method, share) in [("GetUser", &samples[..]), ("List\"Orders\"", &samples[..2])] {
                let key = Key::from_parts(
                    "grpc_server_handling_seconds",
                    vec![
                        metrics::Label::new("grpc_method", method),
                        metrics::Label::new("grpc_type", "unary"),
                    ],
                );
                let histogram = recorder.register_histogram(&key, &metadata);
                for &sample in share {
                    histogram.record(sample);
                }
            }
            let sizes = recorder.register_histogram(
                &Key::from_name("grpc_server_msg_received_size_bytes"),
                &metadata,
            );
            sizes.record(512.0);
            sizes.record(4096.0);
        }
        let (ours, theirs) = (ours.handle().render(), theirs.handle().render());
        for name in [
            "grpc_server_handling_seconds",
            "grpc_server_msg_received_size_bytes",
        ] {
            let mut mine = family(&ours, name);
            let mut expected = family(&theirs, name);
            assert!(mine.len() > 5, "{ours}");
            // The exporter's order of series is its own; the lines are what
            // must be the same.
            mine[2..].sort_unstable();
            expected[2..].sort_unstable();
            assert_eq!(mine, expected, "ours:\n{ours}\ntheirs:\n{theirs}");
        }
        assert!(
            ours.contains("grpc_server_handling_seconds_bucket{grpc_method=\"GetUser\",grpc_type=\"unary\",le=\"0.001\"} 2"),
            "{ours}"
        );
    }

    #[test]
    fn other_histograms_and_every_counter_stay_with_the_prometheus_recorder() {
        let (ours, _) = recorders();
        let metadata = metrics::Metadata::new("test", metrics::Level::INFO, None);
        ours.register_counter(&Key::from_name("calls_total"), &metadata)
            .increment(3);
        ours.register_histogram(&Key::from_name("queue_depth"), &metadata)
            .record(7.0);
        let text = ours.handle().render();
        assert!(text.contains("calls_total 3"), "{text}");
        assert!(text.contains("# TYPE queue_depth summary"), "{text}");
        assert!(ours.families.lock().is_empty());
    }

    #[test]
    fn the_same_key_registered_twice_is_one_series() {
        let (ours, _) = recorders();
        let metadata = metrics::Metadata::new("test", metrics::Level::INFO, None);
        let key = Key::from_parts("wait_seconds", vec![metrics::Label::new("service", "a")]);
        ours.register_histogram(&key, &metadata).record(0.5);
        ours.register_histogram(&key, &metadata).record(5.0);
        let text = ours.handle().render();
        assert!(
            text.contains("wait_seconds_count{service=\"a\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("wait_seconds_sum{service=\"a\"} 5.5"),
            "{text}"
        );
        assert!(
            text.contains("wait_seconds_bucket{service=\"a\",le=\"1\"} 1"),
            "{text}"
        );
    }
}
