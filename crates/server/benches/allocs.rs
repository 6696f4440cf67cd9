//! Heap allocations per unary call: bare tonic against the shop stack,
//! client and server together, on the servers of the `stack` benchmark
//! (`common`), with telemetry initialised as there.
//!
//! Unlike time per call, a count does not move with a noisy neighbour: it
//! shows a change to the stack's per-call work exactly, and where it comes
//! from when read with a heap profiler. A benchmark of its own, because
//! counting wraps every allocation of the process in atomic updates, which
//! the timed `stack` benchmark must not pay.
//!
//! `cargo bench -p shop-server --bench allocs` prints, for each server,
//! allocations (including reallocations) and bytes allocated per call.
//! `BENCH_NO_TELEMETRY=1` leaves telemetry uninitialised (a subscriber
//! interested in nothing). The shop stack then allocates more per call,
//! not less (113.6 against 103.7): with no Prometheus recorder installed,
//! each call registers its method's metric handles afresh, since a
//! recorder might still come (`shop_telemetry`'s `MethodMetrics::of`),
//! which a service, which installs its recorder at start-up, never does
//! (with the recorder installed and no subscriber: 102.7).
//! `BENCH_STACK=observe|policies` counts one part of the stack, as in the
//! `stack` benchmark.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

mod common;

use common::{StackPart, calls};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Calls before counting (connections, caches and pools warmed up), and
/// calls counted per server.
const WARM_UP: u64 = 2_000;
const COUNTED: u64 = 20_000;

fn main() {
    let (runtime, setup) = common::started();
    runtime.block_on(async {
        let mut per_call = Vec::new();
        let stack = StackPart::from_env().label();
        for (name, client) in [("bare tonic", &setup.bare), (stack, &setup.full)] {
            calls(client, &setup.token, WARM_UP).await;
            let region = Region::new(GLOBAL);
            calls(client, &setup.token, COUNTED).await;
            let change = region.change();
            let allocations = (change.allocations + change.reallocations) as f64 / COUNTED as f64;
            let bytes = change.bytes_allocated as f64 / COUNTED as f64;
            println!(
                "{name}: {allocations:.1} allocations and {bytes:.0} bytes allocated per call \
                 (client + server, {COUNTED} calls)"
            );
            per_call.push(allocations);
        }
        println!(
            "{stack}: {:.1} allocations per call more than bare tonic",
            per_call[1] - per_call[0]
        );
    });
}
