//! The command line of shop-loadgen.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

/// What each request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The realistic mix: GetUser 30%, GetOrder 25%, CreateOrder 20%,
    /// ListOrders 15%, CancelOrder 10%, while `--watch-streams` WatchOrder
    /// streams stay open.
    Mixed,
    /// The reads of the mix alone, in its proportions (GetUser 30, GetOrder
    /// 25, ListOrders 15; each account places one order before the load),
    /// with the same streams open: run at the read rate of a `mixed` run,
    /// the baseline its read latency is set against.
    MixedReads,
    /// GetUser of oneself (token verification, a database read).
    GetUser,
    /// CreateOrder (a GetUser hop to user-service and a database write).
    CreateOrder,
    /// GetOrder of one's own orders.
    GetOrder,
    /// ListOrders, first page.
    ListOrders,
    /// GetProduct of the development catalogue's products (sku-1 to sku-3,
    /// SEED_CATALOGUE) in turn: the catalogue's read, at inventory-service.
    GetProduct,
    /// UserService.GetUser on the bare tonic server (`shop-bare-server`):
    /// no accounts, no token, no middleware, no database.
    Echo,
    /// Hold `--watch-streams` idle WatchOrder streams, measure the server's
    /// resident memory per stream (`--server-pid`), then cancel the orders
    /// and check that every stream received the change.
    WatchIdle,
}

/// shop-loadgen: load for a running shop stack, with latency percentiles
/// per method.
#[derive(Debug, Clone, Parser)]
#[command(name = "shop-loadgen", version, about, long_about = None)]
pub struct Config {
    /// What each request is.
    #[arg(long, env = "LOADGEN_SCENARIO", value_enum, default_value = "mixed")]
    pub scenario: Scenario,

    /// user-service (or, for `echo`, the bare server).
    #[arg(
        long,
        env = "LOADGEN_USERS_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub users_url: String,

    /// order-service.
    #[arg(
        long,
        env = "LOADGEN_ORDERS_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub orders_url: String,

    /// inventory-service (the get-product scenario).
    #[arg(
        long,
        env = "LOADGEN_INVENTORY_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub inventory_url: String,

    /// Closed loop: this many callers, each sending its next request when
    /// the previous one is answered.
    #[arg(long, env = "LOADGEN_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,

    /// Open loop instead: requests per second at fixed intervals, whatever
    /// the answers; latency counts from when each request was due.
    #[arg(long, env = "LOADGEN_RATE")]
    pub rate: Option<f64>,

    /// Open loop: most requests in flight; beyond it requests wait (and
    /// their latency, counted from when they were due, shows it).
    #[arg(long, env = "LOADGEN_MAX_IN_FLIGHT", default_value_t = 10_000)]
    pub max_in_flight: usize,

    /// Open loop: the pacer wakes at most once per this long and issues
    /// every request that has come due. Shorter issues requests closer to
    /// when they were due (the lateness is in their latency and in the
    /// report) at more CPU per request; tokio's own timer would be 1ms.
    #[arg(long, env = "LOADGEN_PACE_QUANTUM", default_value = "100us", value_parser = humantime::parse_duration)]
    pub pace_quantum: Duration,

    /// How long to measure (after the warm-up).
    #[arg(long, env = "LOADGEN_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Stop after this many requests instead (whichever comes first).
    #[arg(long, env = "LOADGEN_REQUESTS")]
    pub requests: Option<u64>,

    /// Load before measuring, not recorded.
    #[arg(long, env = "LOADGEN_WARMUP", default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// HTTP/2 connections per service; requests are spread over them (a
    /// real client multiplexes many calls on a few connections).
    #[arg(long, env = "LOADGEN_CONNECTIONS", default_value_t = 4)]
    pub connections: usize,

    /// Accounts the load runs as; each signs up and logs in once.
    #[arg(long, env = "LOADGEN_VIRTUAL_USERS", default_value_t = 16)]
    pub virtual_users: usize,

    /// WatchOrder streams held open (`mixed`: during the run; `watch-idle`:
    /// the streams measured).
    #[arg(long, env = "LOADGEN_WATCH_STREAMS")]
    pub watch_streams: Option<usize>,

    /// order-service's process id, to read its resident memory
    /// (`watch-idle`).
    #[arg(long, env = "LOADGEN_SERVER_PID")]
    pub server_pid: Option<u32>,

    /// A server process whose CPU time over the measured phase goes in the
    /// report, as NAME=PID; repeat for each (Linux).
    #[arg(long = "server-process", value_name = "NAME=PID", value_parser = crate::cpu::parse_named_pid)]
    pub server_processes: Vec<(String, u32)>,

    /// Deadline of each request.
    #[arg(long, env = "LOADGEN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Write the results as JSON to this file.
    #[arg(long, env = "LOADGEN_REPORT")]
    pub report: Option<PathBuf>,

    /// Instead of driving load, write what an external HTTP/2 load tool
    /// (h2load) needs to send this scenario's GetUser into this directory
    /// and exit: `body` (the gRPC-framed request), `path` (the method's
    /// path), `authorization` (the header's value; empty for `echo`) and
    /// `rest-path` (the same call's REST route, for `GET`). Only for `echo`
    /// and `get-user`.
    #[arg(long, env = "LOADGEN_WRITE_REQUEST")]
    pub write_request: Option<PathBuf>,

    /// No live progress bar (it is hidden anyway when stderr is not a
    /// terminal).
    #[arg(long, env = "LOADGEN_NO_PROGRESS")]
    pub no_progress: bool,
}

impl Config {
    /// WatchOrder streams for this scenario.
    pub fn streams(&self) -> usize {
        self.watch_streams.unwrap_or(match self.scenario {
            Scenario::WatchIdle => 10_000,
            Scenario::Mixed | Scenario::MixedReads => 8,
            _ => 0,
        })
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 || self.connections == 0 || self.virtual_users == 0 {
            return Err(
                "--concurrency, --connections and --virtual-users must be at least 1".into(),
            );
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(format!(
                "--rate {rate}: a positive number of requests per second"
            ));
        }
        if self.write_request.is_some()
            && !matches!(self.scenario, Scenario::Echo | Scenario::GetUser)
        {
            return Err("--write-request is for the echo and get-user scenarios".into());
        }
        if self.duration.is_zero() && self.requests.is_none() {
            return Err("--duration 0 needs --requests".into());
        }
        Ok(())
    }
}
