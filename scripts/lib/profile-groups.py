#!/usr/bin/env python3
"""Groups a `perf report --no-children --sort comm,dso,sym --stdio` of the
servers' CPU (scripts/bench.sh --profile) by where the time goes, and by
binary (which service, the kernel, libc): markdown tables for docs/performance.md.

    profile-groups.py [--hz HZ --calls N] PERF_REPORT_TXT

Each sample is counted once, where it was taken (self time), in the first
group whose rule matches its symbol or library. Samples of the idle task
waiting for work are a group of their own. Given perf's sampling rate and
the number of calls served while it sampled (and a report with perf's
sample counts, `perf report -n`), each group is also µs of CPU per call,
idle left out: the unit in which two profiles of different throughput
(the stack's and bare tonic's) can be set side by side.
"""

import argparse
import re
import sys
from collections import defaultdict

# SQLite is compiled into the services (libsqlite3-sys, bundled), and most
# of its functions are static: named without the `sqlite3` prefix. A C
# symbol (no Rust path) in a service's binary with one of these prefixes
# is SQLite's.
SQLITE_STATIC = re.compile(
    r"^(wal|pcache|pager|btree|balance_|vdbe|memjrnl|subjournal|cellSize|getPage|moveTo"
    r"|accessPayload|fillInCell|insertCell|dropCell|allocateSpace|defragmentPage|rebuildPage"
    r"|editPage|decodeFlags|yy_|unix|robust_|posix|read_|write32bits|put4byte|get4byte)"
)
SQLITE_GROUP = "SQLite itself (the C library: parsing, B-trees, WAL)"

# (group, symbol or library fragments); first match wins.
GROUPS = [
    (SQLITE_GROUP, ["sqlite3", "libsqlite"]),
    ("database drivers (sqlx, rusqlite: statements, rows)", ["sqlx", "rusqlite"]),
    ("PostgreSQL server", ["postgres"]),
    ("the access log and other log lines (formatting, JSON)", ["tracing_subscriber::fmt", "serde_json",
                                                               "log_writer", "tracing_core::field",
                                                               "core::fmt", "alloc::fmt", "std::io::Write",
                                                               "WriteAdaptor"]),
    ("OpenTelemetry spans", ["opentelemetry", "tracing_opentelemetry", "tracing_subscriber::registry",
                             "sharded_slab"]),
    ("token verification (Ed25519, JWT parsing)", ["ring::", "ed25519", "curve25519", "jsonwebtoken",
                                                   "base64", "shop_auth"]),
    ("protobuf encoding", ["prost::", "shop_proto"]),
    ("HTTP/2 and gRPC framing (h2, hyper, tonic)", ["h2::", "hyper", "tonic::", "http::", "bytes::"]),
    ("metrics (Prometheus recorder)", ["metrics", "quanta"]),
    ("tokio runtime (tasks, timers, wake-ups)", ["tokio::", "mio::", "parking_lot", "futures_"]),
    ("memory (malloc, free, copies)", ["malloc", "free", "memcpy", "memmove", "memset", "realloc",
                                       "_int_", "alloc::alloc", "alloc::raw_vec", "__rust_"]),
    ("shop code (middleware, services, repositories)", ["shop_", "user_service", "order_service",
                                                        "inventory_service", "tower"]),
    ("kernel (network stack, scheduling, futex, syscalls)", ["[kernel", "kallsyms"]),
    ("libc and other libraries", ["libc", "ld-linux", ".so"]),
]

IDLE_GROUP = "idle (the core waiting for work)"
IDLE_SYMBOLS = re.compile(r"idle|safe_halt|native_halt|mwait")

# `perf report [-n] --sort comm,dso,sym`: share, [samples,] thread, library, symbol.
LINE = re.compile(r"^\s*([\d.]+)%\s+(?:(\d+)\s+)?(\S+)\s+(\S+)\s+\[.\]\s+(.*)$")


def group_of(comm, dso, sym):
    if comm.startswith("swapper") and IDLE_SYMBOLS.search(sym):
        return IDLE_GROUP
    if "::" not in sym and not sym.startswith(("<", "[")) and not dso.startswith(("[", "lib")) \
            and SQLITE_STATIC.match(sym):
        return SQLITE_GROUP
    for name, fragments in GROUPS:
        for fragment in fragments:
            if fragment in sym or fragment in dso:
                return name
    return "other"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report")
    parser.add_argument("--hz", type=float, help="perf's sampling rate (perf record -F)")
    parser.add_argument("--calls", type=int, help="calls served while perf sampled")
    args = parser.parse_args()
    by_group, by_process, by_thread = defaultdict(float), defaultdict(float), defaultdict(float)
    by_symbol = defaultdict(float)
    samples_by_group = defaultdict(int)
    total = 0.0
    for line in open(args.report, encoding="utf-8", errors="replace"):
        match = LINE.match(line)
        if not match:
            continue
        share, samples, comm, dso, sym = float(match[1]), match[2], match[3], match[4], match[5]
        group = group_of(comm, dso, sym)
        total += share
        by_group[group] += share
        samples_by_group[group] += int(samples or 0)
        by_symbol[(group, sym[:90])] += share
        # The binary says which service; the thread (comm) what kind of
        # work, the kernel's on its behalf included.
        by_process[dso] += share
        by_thread[comm] += share
    if total == 0:
        sys.exit("profile-groups.py: no samples in the report")
    # µs of CPU per call: each sample stands for 1/hz s of CPU.
    per_call = None
    if args.hz and args.calls and sum(samples_by_group.values()):
        per_call = {g: n / args.hz / args.calls * 1e6 for g, n in samples_by_group.items()}
        busy = sum(v for g, v in per_call.items() if g != IDLE_GROUP)
        print(f"{args.calls} calls sampled: {busy:.1f} µs of CPU per call, idle left out")
        print()
        print("| share | µs per call | where |")
        print("|---:|---:|---|")
    else:
        print("| share | where |")
        print("|---:|---|")
    for name, share in sorted(by_group.items(), key=lambda kv: -kv[1]):
        if per_call is None:
            print(f"| {100 * share / total:.0f}% | {name} |")
        elif name == IDLE_GROUP:
            print(f"| {100 * share / total:.0f}% | | {name} |")
        else:
            print(f"| {100 * share / total:.0f}% | {per_call[name]:.2f} | {name} |")
    print()
    print("| share | binary or library |")
    print("|---:|---|")
    for dso, share in sorted(by_process.items(), key=lambda kv: -kv[1])[:10]:
        print(f"| {100 * share / total:.0f}% | {dso} |")
    print()
    print("| share | thread (all services; the kernel's work for it included) |")
    print("|---:|---|")
    for thread, share in sorted(by_thread.items(), key=lambda kv: -kv[1])[:10]:
        print(f"| {100 * share / total:.0f}% | {thread} |")
    print()
    print("| share | symbol | counted as |")
    print("|---:|---|---|")
    for (group, sym), share in sorted(by_symbol.items(), key=lambda kv: -kv[1])[:20]:
        print(f"| {100 * share / total:.1f}% | `{sym}` | {group.split(' (')[0]} |")


if __name__ == "__main__":
    main()
