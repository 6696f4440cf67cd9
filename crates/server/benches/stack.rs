//! The cost of the shop server stack per unary call, against bare tonic,
//! in one run on the same machine.
//!
//! Both servers serve the same `UserService.GetUser` handler (the
//! workspace's stand-in `FixedUsers`: a fixed answer, no database), on loopback, with client and server on one
//! single-threaded runtime, so the time per call is the CPU both sides
//! spend on it: the client's share is identical in both, the difference is
//! the stack (observation, deadline, auth with a verified Ed25519 token,
//! rate limit, concurrency limit, panic guard). Telemetry is initialised as
//! in production (OpenTelemetry spans with trace ids, Prometheus metrics),
//! with log lines filtered to warnings so that the terminal is not the
//! bottleneck. Calls run 32 at a time.
//!
//! `cargo bench -p shop-server --bench stack` runs criterion on each
//! server, then a paired comparison (see [`paired_ratio`]) that prints
//! both times and the ratio. `BENCH_NO_TELEMETRY=1` leaves telemetry
//! uninitialised (a subscriber interested in nothing), to separate the
//! cost of the layers from the cost of spans and metrics; metric handles
//! are then registered on every call (see the `allocs` benchmark), which
//! a service never pays.
//!
//! `BENCH_STACK=observe|policies` serves one part of the stack in its
//! place, on bare tonic: the observe layer (request id, span, metrics,
//! access line) or the policy layers below it (size, deadline, auth,
//! limits, panic guard, fault injection, write lane); the default,
//! `whole`, is `Server`'s stack as services run it, on connections
//! accepted as `Server::serve` accepts them (their limit and age, writes
//! coalesced). The parts' ratios roughly add up to the whole's.
//!
//! `BENCH_ONE_SERVER=bare|stack` with `BENCH_CALLS=N` (default 20,000)
//! instead makes N calls to that server alone and exits, without criterion:
//! under `valgrind --tool=callgrind`, the difference of the two servers'
//! counts divided by N is the stack's own instructions a call (the client's
//! share and the setup are the same on both sides).

use std::time::Duration;

use criterion::Criterion;

mod common;

use common::{Setup, StackPart, calls};

/// The allocator every shop service binary and `shop-bare-server` run
/// with, so that both servers here allocate as they do in production
/// (with glibc's malloc both take about a fifth longer per call, and
/// their ratio is the same).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Rounds of the paired comparison, and calls per server in each round.
const ROUNDS: usize = 40;
const CALLS_PER_ROUND: u64 = 3_000;

/// The ratio, measured in pairs: each round times the same number of calls
/// on both servers back to back (alternating which goes first), so that a
/// noisy neighbour slows both sides of a pair alike; the median of the
/// per-round ratios is what is reported.
async fn paired_ratio(setup: &Setup) {
    let (mut bare, mut full, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (b, f) = if round % 2 == 0 {
            let b = calls(&setup.bare, &setup.token, CALLS_PER_ROUND).await;
            (b, calls(&setup.full, &setup.token, CALLS_PER_ROUND).await)
        } else {
            let f = calls(&setup.full, &setup.token, CALLS_PER_ROUND).await;
            (calls(&setup.bare, &setup.token, CALLS_PER_ROUND).await, f)
        };
        let per_call = |d: Duration| d.as_secs_f64() / CALLS_PER_ROUND as f64;
        bare.push(per_call(b));
        full.push(per_call(f));
        ratios.push(f.as_secs_f64() / b.as_secs_f64());
    }
    let ratio = median(ratios);
    println!(
        "\npaired, {ROUNDS} rounds of {CALLS_PER_ROUND} calls (client + server, one core): \
         bare tonic {:.1} µs per call, {} {:.1} µs per call (medians); \
         median ratio {ratio:.2} (+{:.0}%)",
        median(bare) * 1e6,
        StackPart::from_env().label(),
        median(full) * 1e6,
        (ratio - 1.0) * 100.0
    );
}

fn bench(c: &mut Criterion) {
    let (runtime, setup) = common::started();
    let mut group = c.benchmark_group("unary GetUser per call");
    let stack = StackPart::from_env().label();
    for (name, client) in [("bare tonic", &setup.bare), (stack, &setup.full)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let client = client.clone();
                let token = setup.token.clone();
                async move { calls(&client, &token, iters).await }
            });
        });
    }
    group.finish();
    runtime.block_on(paired_ratio(&setup));
}

/// `BENCH_ONE_SERVER`'s run: `BENCH_CALLS` calls to one server.
fn one_server(which: &str) {
    let calls_wanted: u64 = std::env::var("BENCH_CALLS")
        .map(|n| n.parse().expect("BENCH_CALLS is a number of calls"))
        .unwrap_or(20_000);
    let (runtime, setup) = common::started();
    runtime.block_on(async {
        let client = match which {
            "bare" => &setup.bare,
            "stack" => &setup.full,
            other => panic!("BENCH_ONE_SERVER is bare or stack, not {other:?}"),
        };
        let took = calls(client, &setup.token, calls_wanted).await;
        println!(
            "{which}: {calls_wanted} calls, {:.1} µs per call",
            took.as_secs_f64() * 1e6 / calls_wanted as f64
        );
    });
}

fn main() {
    if let Ok(which) = std::env::var("BENCH_ONE_SERVER") {
        one_server(&which);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
