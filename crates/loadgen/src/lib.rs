//! shop-loadgen: drives a running shop stack (or the bare tonic server it
//! is compared with) through the generated clients and reports throughput,
//! latency percentiles and status codes per method.
//!
//! - [`config`]: the command line.
//! - [`scenario`]: what one request is (GetUser, CreateOrder, the mixed
//!   workload, ...), the virtual users it runs as, and idle WatchOrder
//!   streams.
//! - [`drive`]: closed loop (N callers) or open loop (a fixed arrival
//!   rate, latency measured from the intended send time so that a slow
//!   server cannot hide its queueing: no coordinated omission).
//! - [`pace`]: the open loop's clock, finer than tokio's millisecond timer.
//! - [`stats`]: HDR histograms and status counts per method.
//! - [`report`]: the terminal table and the JSON report.
//! - [`rss`]: resident memory of a server process, for memory per stream.
//! - [`cpu`]: each CPU's busy and stolen share and the servers' CPU time
//!   over the measured phase.
//! - [`transport`]: the HTTP/2 connections the calls go on (the client
//!   kit's, straight on h2), so that a call's HEADERS and DATA leave in one
//!   write.
//! - [`quiet`]: a `tracing` subscriber that records nothing, so that
//!   neither the generator nor the yardstick pays for the `log` bridge.
//! - [`stub`]: the stand-in UserService of the bare tonic server (the
//!   yardstick), also used by the stack benchmark and the client kit's
//!   tests.

pub mod config;
pub mod cpu;
pub mod drive;
pub mod pace;
pub mod quiet;
pub mod report;
pub mod rss;
pub mod scenario;
pub mod stats;
pub mod stub;
pub mod transport;
