//! The results of a run: a table for the terminal and a JSON document for
//! scripts (`scripts/bench.sh` reads it).

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{config::Scenario, cpu::CpuShare, stats::MethodStats};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// One method's results.
#[derive(Debug, Clone, Serialize)]
pub struct MethodReport {
    /// Calls made.
    pub count: u64,
    /// Calls answered OK.
    pub ok: u64,
    /// Calls per second (all codes).
    pub throughput_rps: f64,
    /// Calls per status code.
    pub codes: BTreeMap<String, u64>,
    /// Latency of all calls.
    pub latency_ms: Latency,
}

/// Idle streams: memory and delivery.
#[derive(Debug, Clone, Serialize)]
pub struct WatchReport {
    /// Streams asked for.
    pub requested: usize,
    /// Streams open (first message received).
    pub opened: usize,
    /// Why some did not open (first few).
    pub open_failures: Vec<String>,
    /// Orders the streams watched.
    pub orders: usize,
    /// Server resident memory before opening them, KiB.
    pub rss_before_kib: Option<u64>,
    /// ... and with all of them open, KiB.
    pub rss_open_kib: Option<u64>,
    /// (open − before) / opened, bytes.
    pub rss_per_stream_bytes: Option<f64>,
    /// Streams that received the change after their order was cancelled.
    pub updated: usize,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario.
    pub scenario: Scenario,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Closed loop: callers.
    pub concurrency: Option<usize>,
    /// Open loop: requests per second offered.
    pub rate: Option<f64>,
    /// HTTP/2 connections per service.
    pub connections: usize,
    /// When the measurement started (RFC 3339).
    pub started_at: String,
    /// Measured time, seconds.
    pub elapsed_s: f64,
    /// Calls made.
    pub requests: u64,
    /// Calls answered OK.
    pub ok: u64,
    /// Calls per second, all methods.
    pub throughput_rps: f64,
    /// Per method.
    pub methods: BTreeMap<String, MethodReport>,
    /// Streams held during the run (`mixed`) or measured (`watch-idle`).
    pub watch: Option<WatchReport>,
    /// The load generator's own use of its CPUs while measuring.
    pub generator: Option<GeneratorLoad>,
    /// Each CPU's busy and stolen share while measuring (Linux).
    pub cpus: Option<BTreeMap<String, CpuShare>>,
    /// CPU seconds per second each `--server-process` used while measuring.
    pub servers_cpu: Option<BTreeMap<String, f64>>,
}

/// How busy the load generator itself was while measuring: a generator
/// that used (nearly) all its CPUs was the limit, not the server, and the
/// throughput it measured says little about the server.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GeneratorLoad {
    /// CPU time used per second of measurement (1.0 = one core busy).
    pub cpu_cores: f64,
    /// CPUs it may run on.
    pub cpus: usize,
    /// `cpu_cores` at 90% of `cpus` or more.
    pub saturated: bool,
    /// Open loop: how late the generator issued requests after they were
    /// due, which is in their latency too.
    pub send_lag_ms: Option<SendLag>,
}

/// How late an open loop issued its requests, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SendLag {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Latest.
    pub max: f64,
}

impl SendLag {
    /// From a histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> SendLag {
        SendLag {
            p50: millis(h.value_at_quantile(0.50)),
            p99: millis(h.value_at_quantile(0.99)),
            max: millis(h.max()),
        }
    }
}

impl GeneratorLoad {
    /// From the CPU seconds used over `elapsed`.
    pub fn of(cpu_seconds: f64, elapsed: Duration, cpus: usize) -> GeneratorLoad {
        let cpu_cores = cpu_seconds / elapsed.as_secs_f64().max(f64::EPSILON);
        GeneratorLoad {
            cpu_cores: (cpu_cores * 1000.0).round() / 1000.0,
            cpus,
            saturated: cpu_cores >= 0.9 * cpus as f64,
            send_lag_ms: None,
        }
    }
}

fn millis(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

impl Report {
    /// Builds the report from what was recorded over `elapsed`.
    pub fn methods(
        recorded: &BTreeMap<&'static str, MethodStats>,
        elapsed: Duration,
    ) -> BTreeMap<String, MethodReport> {
        let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
        recorded
            .iter()
            .map(|(name, stats)| {
                let h = &stats.latency;
                (
                    (*name).to_owned(),
                    MethodReport {
                        count: stats.count(),
                        ok: stats.ok(),
                        throughput_rps: stats.count() as f64 / seconds,
                        codes: stats.codes.clone(),
                        latency_ms: Latency {
                            p50: millis(h.value_at_quantile(0.50)),
                            p90: millis(h.value_at_quantile(0.90)),
                            p99: millis(h.value_at_quantile(0.99)),
                            p999: millis(h.value_at_quantile(0.999)),
                            max: millis(h.max()),
                            mean: h.mean() / 1_000.0,
                        },
                    },
                )
            })
            .collect()
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:?}, {} loop{}, {} connection(s): {} requests in {:.1} s, {:.0} req/s, {} not OK\n",
            self.scenario,
            self.mode,
            match (self.concurrency, self.rate) {
                (_, Some(rate)) => format!(" at {rate} req/s"),
                (Some(c), None) => format!(", {c} callers"),
                _ => String::new(),
            },
            self.connections,
            self.requests,
            self.elapsed_s,
            self.throughput_rps,
            self.requests - self.ok,
        );
        if let Some(g) = &self.generator {
            out.push_str(&format!(
                "load generator: {:.2} of {} CPU(s) busy{}\n",
                g.cpu_cores,
                g.cpus,
                if g.saturated {
                    " - SATURATED: the generator, not the server, was the limit"
                } else {
                    ""
                }
            ));
            if let Some(lag) = &g.send_lag_ms {
                out.push_str(&format!(
                    "requests issued after they were due: p50 {:.3} ms, p99 {:.3} ms, max {:.2} ms\n",
                    lag.p50, lag.p99, lag.max
                ));
            }
        }
        if let Some(cpus) = &self.cpus {
            let shares: Vec<String> = cpus
                .iter()
                .map(|(cpu, s)| {
                    format!(
                        "CPU {cpu} {:.0}% busy ({:.1}% stolen)",
                        s.busy * 100.0,
                        s.steal * 100.0
                    )
                })
                .collect();
            out.push_str(&format!("host: {}\n", shares.join(", ")));
        }
        if let Some(servers) = &self.servers_cpu {
            let used: Vec<String> = servers
                .iter()
                .map(|(name, cores)| format!("{name} {cores:.2}"))
                .collect();
            out.push_str(&format!("servers' CPU: {}\n", used.join(", ")));
        }
        if !self.methods.is_empty() {
            out.push_str(&format!(
                "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  codes\n",
                "method", "count", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
            ));
        }
        for (name, m) in &self.methods {
            let codes: Vec<String> = m.codes.iter().map(|(c, n)| format!("{c}={n}")).collect();
            out.push_str(&format!(
                "{:<12} {:>9} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {}\n",
                name,
                m.count,
                m.throughput_rps,
                m.latency_ms.p50,
                m.latency_ms.p90,
                m.latency_ms.p99,
                m.latency_ms.p999,
                m.latency_ms.max,
                codes.join(" ")
            ));
        }
        if let Some(w) = &self.watch {
            out.push_str(&format!(
                "WatchOrder: {}/{} streams open on {} orders; {} received the change",
                w.opened, w.requested, w.orders, w.updated
            ));
            if let Some(per) = w.rss_per_stream_bytes {
                out.push_str(&format!(
                    "; server RSS {} -> {} KiB, {:.0} bytes per stream",
                    w.rss_before_kib.unwrap_or(0),
                    w.rss_open_kib.unwrap_or(0),
                    per
                ));
            }
            out.push('\n');
            for failure in &w.open_failures {
                out.push_str(&format!("  stream not opened: {failure}\n"));
            }
        }
        out
    }
}
