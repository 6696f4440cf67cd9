//! shop-loadgen against the real binaries: every scenario it offers
//! completes with OK answers, its JSON report says what happened, idle
//! streams are measured and all receive their change.

use std::path::Path;

use crate::{ORDERS, USERS};
use shop_testkit::{Backend, Stack, binary};

fn loadgen(stack: &Stack, report: &Path, args: &[&str]) -> serde_json::Value {
    let output = std::process::Command::new(binary("shop-loadgen"))
        .args([
            "--users-url",
            &format!("http://{}", stack.service(USERS).addr),
            "--orders-url",
            &format!("http://{}", stack.service(ORDERS).addr),
            "--report",
            report.to_str().unwrap(),
            "--warmup",
            "0s",
            "--virtual-users",
            "3",
            "--no-progress",
        ])
        .args(args)
        .output()
        .expect("shop-loadgen runs");
    assert!(
        output.status.success(),
        "shop-loadgen failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

#[tokio::test]
async fn the_mixed_scenario_runs_every_method_and_reports_percentiles() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    let report = loadgen(
        &stack,
        &stack.dir.path().join("mixed.json"),
        &[
            "--scenario",
            "mixed",
            "--requests",
            "300",
            "--concurrency",
            "4",
            "--watch-streams",
            "6",
        ],
    );
    assert_eq!(report["requests"], 300);
    assert_eq!(report["ok"], 300, "{report:#}");
    let methods = report["methods"].as_object().unwrap();
    for method in [
        "GetUser",
        "CreateOrder",
        "GetOrder",
        "ListOrders",
        "CancelOrder",
    ] {
        let m = &methods[method];
        assert!(m["count"].as_u64().unwrap() > 0, "{method} never called");
        let latency = &m["latency_ms"];
        let (p50, p99, max) = (
            latency["p50"].as_f64().unwrap(),
            latency["p99"].as_f64().unwrap(),
            latency["max"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{method}: {latency}");
    }
    let watch = &report["watch"];
    assert_eq!(watch["opened"], 6);
    assert_eq!(
        watch["updated"], 6,
        "every held stream saw its order cancelled"
    );
}

/// The mix's reads alone: each account places the order its GetOrders
/// read before the load, and the load is nothing but reads.
#[tokio::test]
async fn the_mixed_reads_scenario_only_reads() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    let report = loadgen(
        &stack,
        &stack.dir.path().join("reads.json"),
        &[
            "--scenario",
            "mixed-reads",
            "--requests",
            "300",
            "--concurrency",
            "4",
            "--watch-streams",
            "2",
        ],
    );
    assert_eq!(report["ok"], 300, "{report:#}");
    let methods = report["methods"].as_object().unwrap();
    let mut called: Vec<&str> = methods.keys().map(String::as_str).collect();
    called.sort_unstable();
    assert_eq!(called, ["GetOrder", "GetUser", "ListOrders"], "{report:#}");
}

#[tokio::test]
async fn open_loop_runs_at_the_asked_rate_and_idle_streams_are_measured() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    let report = loadgen(
        &stack,
        &stack.dir.path().join("open.json"),
        &[
            "--scenario",
            "get-user",
            "--rate",
            "100",
            "--duration",
            "2s",
        ],
    );
    assert_eq!(report["mode"], "open");
    let requests = report["requests"].as_u64().unwrap();
    assert!(
        (180..=201).contains(&requests),
        "{requests} requests at 100/s for 2 s"
    );
    assert_eq!(report["ok"], report["requests"]);

    let pid = stack.service(ORDERS).pid().unwrap().to_string();
    let report = loadgen(
        &stack,
        &stack.dir.path().join("watch.json"),
        &[
            "--scenario",
            "watch-idle",
            "--watch-streams",
            "60",
            "--server-pid",
            &pid,
        ],
    );
    let watch = &report["watch"];
    assert_eq!(watch["opened"], 60, "{watch}");
    assert_eq!(watch["updated"], 60);
    if cfg!(target_os = "linux") {
        assert!(watch["rss_before_kib"].as_u64().unwrap() > 0);
        assert!(watch["rss_per_stream_bytes"].is_number(), "{watch}");
    }
}
