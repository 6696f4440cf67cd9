//! The process's own gauges, read fresh for every scrape: what Prometheus'
//! client libraries call process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_threads`,
//! `process_start_time_seconds`, ...: `metrics-process`, named as Go's
//! client_golang names them; the CPU seconds typed as a gauge, since the
//! `metrics` facade's counters hold whole numbers) and the tokio
//! runtimes' (`shop_runtime_*`, labelled `runtime`: `serving` for the
//! runtime serving calls, `writes` for the server kit's write lane).
//!
//! Without them, a dashboard shows each call's latency but not what a
//! replica costs: the CPU a service burns per request, memory that grows
//! with streams or caches, descriptors creeping towards the limit.

use std::sync::OnceLock;

use metrics_process::Collector;
use tokio::runtime::{Handle, RuntimeMetrics};

/// Reads the process and runtime gauges now and records them in the
/// Prometheus recorder ([`crate::prometheus`], installed if it was not).
/// The admin endpoint calls it before each render; the runtime gauges
/// (`runtime="serving"`) are the runtime of the calling thread, when it has
/// one.
pub fn record_process_metrics() {
    static COLLECTOR: OnceLock<Collector> = OnceLock::new();
    crate::prometheus();
    let collector = COLLECTOR.get_or_init(|| {
        let collector = Collector::default();
        collector.describe();
        metrics::describe_gauge!(
            "shop_runtime_workers",
            "The tokio runtime's worker threads."
        );
        metrics::describe_gauge!(
            "shop_runtime_alive_tasks",
            "Tasks alive in the tokio runtime (calls in flight, streams, background work)."
        );
        metrics::describe_gauge!(
            "shop_runtime_global_queue_depth",
            "Tasks waiting in the tokio runtime's global queue for a worker."
        );
        collector
    });
    collector.collect();

    if let Ok(runtime) = Handle::try_current() {
        record_runtime_metrics("serving", [runtime.metrics()]);
    }
}

/// Records the `shop_runtime_*` gauges of the runtimes called `name` (the
/// `runtime` label), summed over `runtimes`: none records zeros. Installs
/// the Prometheus recorder if it was not.
pub fn record_runtime_metrics(
    name: &'static str,
    runtimes: impl IntoIterator<Item = RuntimeMetrics>,
) {
    crate::prometheus();
    let (mut workers, mut alive, mut queued) = (0, 0, 0);
    for runtime in runtimes {
        workers += runtime.num_workers();
        alive += runtime.num_alive_tasks();
        queued += runtime.global_queue_depth();
    }
    let label = [("runtime", name)];
    metrics::gauge!("shop_runtime_workers", &label).set(workers as f64);
    metrics::gauge!("shop_runtime_alive_tasks", &label).set(alive as f64);
    metrics::gauge!("shop_runtime_global_queue_depth", &label).set(queued as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `name` (with its labels, as rendered) in
    /// `text`.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrape_reads_the_process_and_its_runtime() {
        // Some CPU to count (the kernel counts it in 10 ms ticks), and a
        // task alive while the gauges are read.
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(100) {
            std::hint::spin_loop();
        }
        let (_keep, parked) = tokio::sync::oneshot::channel::<()>();
        let alive = tokio::spawn(parked);

        record_process_metrics();
        let text = crate::prometheus().render();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();

        let cpu = sample(&text, "process_cpu_seconds_total").expect("cpu seconds");
        assert!(cpu > 0.0, "{text}");
        let resident = sample(&text, "process_resident_memory_bytes").expect("resident");
        assert!(resident > 1_000_000.0, "{text}");
        let fds = sample(&text, "process_open_fds").expect("open fds");
        let max_fds = sample(&text, "process_max_fds").expect("max fds");
        assert!(fds >= 3.0 && fds <= max_fds, "{text}");
        assert!(sample(&text, "process_threads").expect("threads") >= 3.0);
        let started = sample(&text, "process_start_time_seconds").expect("start time");
        assert!(
            started <= now && started > now - 3_600.0,
            "{started} vs {now}"
        );

        let serving = |name: &str| sample(&text, &format!(r#"{name}{{runtime="serving"}}"#));
        assert_eq!(serving("shop_runtime_workers"), Some(2.0), "{text}");
        assert!(serving("shop_runtime_alive_tasks").expect("alive tasks") >= 1.0);
        assert!(serving("shop_runtime_global_queue_depth").is_some());
        alive.abort();
    }

    #[test]
    fn other_runtimes_are_summed_under_their_own_label() {
        let runtime = |workers| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .build()
                .unwrap()
        };
        let (one, three) = (runtime(1), runtime(3));
        let (_keep, parked) = tokio::sync::oneshot::channel::<()>();
        let alive = one.spawn(parked);
        let lanes = |name: &str| {
            let text = crate::prometheus().render();
            sample(&text, &format!(r#"{name}{{runtime="test-lanes"}}"#))
        };

        record_runtime_metrics("test-lanes", [one.metrics(), three.metrics()]);
        assert_eq!(lanes("shop_runtime_workers"), Some(4.0));
        assert_eq!(lanes("shop_runtime_alive_tasks"), Some(1.0));
        // The parked task may still wait in its global queue for a worker.
        assert!(lanes("shop_runtime_global_queue_depth").is_some_and(|queued| queued <= 1.0));

        alive.abort();
        record_runtime_metrics("test-lanes", []);
        assert_eq!(lanes("shop_runtime_workers"), Some(0.0));
        assert_eq!(lanes("shop_runtime_alive_tasks"), Some(0.0));
    }
}
