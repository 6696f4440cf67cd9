//! The shop-loadgen binary: see the library docs and `--help`.

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::Parser as _;
use shop_loadgen::{
    config::{Config, Scenario},
    cpu,
    drive::{self, Bounds, Mode},
    report::{GeneratorLoad, Report, SendLag, WatchReport},
    rss,
    scenario::{self, Connections, Workload},
    stats::Recorder,
};

#[tokio::main]
async fn main() -> ExitCode {
    shop_loadgen::quiet::tracing_off();
    let config = Config::parse();
    if let Err(problem) = config.validate() {
        eprintln!("shop-loadgen: {problem}");
        return ExitCode::from(2);
    }
    if let Some(dir) = &config.write_request {
        return match write_request(&config, dir).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shop-loadgen: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&config).await {
        Ok(report) => {
            print!("{}", report.table());
            if let Some(path) = &config.report {
                let json = serde_json::to_string_pretty(&report).expect("serialisable");
                if let Err(e) = std::fs::write(path, json + "\n") {
                    eprintln!("shop-loadgen: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shop-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the GetUser request of `--write-request` (see its help): one
/// account's GetUser of itself, or the echo scenario's fixed GetUser.
async fn write_request(config: &Config, dir: &std::path::Path) -> anyhow::Result<()> {
    use prost::Message as _;
    use shop_proto::user::v1::{GetUserRequest, get_user_request::Identifier};

    let (user_id, authorization) = if config.scenario == Scenario::Echo {
        (scenario::ECHO_USER_ID.to_owned(), String::new())
    } else {
        let users = Connections::new(&config.users_url, 1)?;
        let account = scenario::virtual_users(&users, 1)
            .await?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no account signed up"))?;
        (account.id.clone(), account.authorization().to_owned())
    };
    let rest_path = format!("/v1/users/{user_id}");
    let message = GetUserRequest {
        identifier: Some(Identifier::UserId(user_id)),
    }
    .encode_to_vec();
    // gRPC framing: not compressed, then the length, big-endian.
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("body"), body)?;
    std::fs::write(dir.join("path"), "/shop.user.v1.UserService/GetUser")?;
    std::fs::write(dir.join("authorization"), authorization)?;
    // The same call as a REST route (GET, no body).
    std::fs::write(dir.join("rest-path"), rest_path)?;
    Ok(())
}

/// Idle streams per connection: shop servers allow 100 concurrent streams
/// per connection by default (`HTTP2_MAX_CONCURRENT_STREAMS`), and a
/// client waits for a free one beyond that.
const STREAMS_PER_CONNECTION: usize = 90;

async fn run(config: &Config) -> anyhow::Result<Report> {
    let streams = config.streams();
    let order_connections = config
        .connections
        .max(streams.div_ceil(STREAMS_PER_CONNECTION));
    let users = Connections::new(&config.users_url, config.connections)?;
    let orders = Connections::new(&config.orders_url, order_connections)?;
    let inventory = Connections::new(&config.inventory_url, config.connections)?;
    let accounts = if config.scenario == Scenario::Echo {
        Vec::new()
    } else {
        eprintln!("shop-loadgen: signing up {} accounts", config.virtual_users);
        scenario::virtual_users(&users, config.virtual_users).await?
    };
    let workload = Workload::new(
        config.scenario,
        users,
        orders,
        inventory,
        accounts,
        config.timeout,
    );

    if config.scenario == Scenario::MixedReads {
        workload.place_orders_to_read().await?;
    }
    if config.scenario == Scenario::WatchIdle {
        return watch_idle(config, &workload, streams).await;
    }

    // Streams held open through the run, as real clients would.
    let held = if streams > 0 {
        let to_watch = workload.orders_to_watch(streams.min(64)).await?;
        let (open, failures) = workload.open_watches(&to_watch, streams).await;
        Some((to_watch, open, failures))
    } else {
        None
    };

    let mode = match config.rate {
        Some(rate) => Mode::Open {
            rate,
            max_in_flight: config.max_in_flight,
            quantum: config.pace_quantum,
        },
        None => Mode::Closed {
            concurrency: config.concurrency,
        },
    };
    let op = {
        let workload = Arc::clone(&workload);
        move |seq| Arc::clone(&workload).request(seq)
    };
    if !config.warmup.is_zero() {
        let warmup = Bounds {
            duration: config.warmup,
            requests: None,
        };
        drive::run(
            mode,
            warmup,
            op.clone(),
            Arc::new(Recorder::default()),
            false,
        )
        .await;
    }
    let recorder = Arc::new(Recorder::default());
    let started_at = chrono::Utc::now().to_rfc3339();
    let bounds = Bounds {
        duration: if config.duration.is_zero() {
            Duration::from_secs(24 * 3600)
        } else {
            config.duration
        },
        requests: config.requests,
    };
    let progress = !config.no_progress;
    let cpu_before = rss::own_cpu_seconds();
    let host_before = cpu::Snapshot::take(&config.server_processes);
    let elapsed = drive::run(mode, bounds, op, Arc::clone(&recorder), progress).await;
    let host_after = cpu::Snapshot::take(&config.server_processes);
    let cpus = host_after.cpus_since(&host_before);
    let servers_cpu = host_after.processes_since(&host_before);
    let generator = cpu_before
        .zip(rss::own_cpu_seconds())
        .map(|(before, after)| GeneratorLoad {
            send_lag_ms: recorder.send_lag().as_ref().map(SendLag::of),
            ..GeneratorLoad::of(after - before, elapsed, rss::usable_cpus())
        });

    let watch = match held {
        Some((to_watch, open, failures)) => {
            let opened = open.len();
            workload.cancel_all(&to_watch).await?;
            let updated = scenario::count_cancellations(open, Duration::from_secs(10)).await;
            Some(WatchReport {
                requested: streams,
                opened,
                open_failures: failures.into_iter().take(5).collect(),
                orders: to_watch.len(),
                rss_before_kib: None,
                rss_open_kib: None,
                rss_per_stream_bytes: None,
                updated,
            })
        }
        None => None,
    };
    let methods = Report::methods(&recorder.snapshot(), elapsed);
    let requests = methods.values().map(|m| m.count).sum::<u64>();
    Ok(Report {
        scenario: config.scenario,
        mode: if config.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        concurrency: config.rate.is_none().then_some(config.concurrency),
        rate: config.rate,
        connections: config.connections,
        started_at,
        elapsed_s: elapsed.as_secs_f64(),
        requests,
        ok: methods.values().map(|m| m.ok).sum(),
        throughput_rps: requests as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        methods,
        watch,
        generator,
        cpus: (!cpus.is_empty()).then_some(cpus),
        servers_cpu: (!servers_cpu.is_empty()).then_some(servers_cpu),
    })
}

/// Opens the idle streams, measures the server's memory with them open,
/// then cancels their orders and counts the streams that saw it.
async fn watch_idle(
    config: &Config,
    workload: &Workload,
    streams: usize,
) -> anyhow::Result<Report> {
    let to_watch = workload.orders_to_watch(streams.clamp(1, 100)).await?;
    let settle = || tokio::time::sleep(Duration::from_secs(1));
    settle().await;
    let before = config.server_pid.and_then(rss::resident_kib);
    let started_at = chrono::Utc::now().to_rfc3339();
    let started = tokio::time::Instant::now();
    eprintln!("shop-loadgen: opening {streams} WatchOrder streams");
    let (open, failures) = workload.open_watches(&to_watch, streams).await;
    let opened = open.len();
    settle().await;
    let with_open = config.server_pid.and_then(rss::resident_kib);
    workload.cancel_all(&to_watch).await?;
    let updated = scenario::count_cancellations(open, Duration::from_secs(30)).await;
    let per_stream = match (before, with_open) {
        (Some(b), Some(o)) if opened > 0 => {
            Some((o.saturating_sub(b) * 1024) as f64 / opened as f64)
        }
        _ => None,
    };
    Ok(Report {
        scenario: Scenario::WatchIdle,
        mode: "closed",
        concurrency: None,
        rate: None,
        connections: streams
            .div_ceil(STREAMS_PER_CONNECTION)
            .max(config.connections),
        started_at,
        elapsed_s: started.elapsed().as_secs_f64(),
        requests: 0,
        ok: 0,
        throughput_rps: 0.0,
        methods: Default::default(),
        watch: Some(WatchReport {
            requested: streams,
            opened,
            open_failures: failures.into_iter().take(5).collect(),
            orders: to_watch.len(),
            rss_before_kib: before,
            rss_open_kib: with_open,
            rss_per_stream_bytes: per_stream,
            updated,
        }),
        generator: None,
        cpus: None,
        servers_cpu: None,
    })
}
