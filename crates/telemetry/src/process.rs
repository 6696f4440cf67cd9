//! The process's own gauges, read fresh for every scrape: what Prometheus'
//! client libraries call process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_threads`,
//! `process_start_time_seconds`, ...: `metrics-process`, named as Go's
//! client_golang names them; the CPU seconds typed as a gauge, since the
//! `metrics` facade's counters hold whole numbers) and the tokio
//! runtime's (`shop_runtime_*`).
//!
//! Without them, a dashboard shows each call's latency but not what a
//! replica costs: the CPU a service burns per request, memory that grows
//! with streams or caches, descriptors creeping towards the limit.

use std::sync::OnceLock;

use metrics_process::Collector;

/// Reads the process and runtime gauges now and records them in the
/// Prometheus recorder ([`crate::prometheus`], installed if it was not).
/// The admin endpoint calls it before each render; the runtime gauges are
/// the runtime of the calling thread, when it has one.
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

    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let runtime = runtime.metrics();
        metrics::gauge!("shop_runtime_workers").set(runtime.num_workers() as f64);
        metrics::gauge!("shop_runtime_alive_tasks").set(runtime.num_alive_tasks() as f64);
        metrics::gauge!("shop_runtime_global_queue_depth").set(runtime.global_queue_depth() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name` (no labels) in `text`.
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

        assert_eq!(sample(&text, "shop_runtime_workers"), Some(2.0), "{text}");
        assert!(sample(&text, "shop_runtime_alive_tasks").expect("alive tasks") >= 1.0);
        assert!(sample(&text, "shop_runtime_global_queue_depth").is_some());
        alive.abort();
    }
}
