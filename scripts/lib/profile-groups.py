#!/usr/bin/env python3
"""Groups a `perf report --no-children --sort comm,dso,sym --stdio` of the
servers' CPU (scripts/bench.sh --profile) by where the time goes, and by
binary (which service, the kernel, libc): markdown tables for docs/performance.md.

    profile-groups.py PERF_REPORT_TXT

Each sample is counted once, where it was taken (self time), in the first
group whose rule matches its symbol or library.
"""

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

LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+\[.\]\s+(.*)$")


def group_of(dso, sym):
    if "::" not in sym and not sym.startswith(("<", "[")) and not dso.startswith(("[", "lib")) \
            and SQLITE_STATIC.match(sym):
        return SQLITE_GROUP
    for name, fragments in GROUPS:
        for fragment in fragments:
            if fragment in sym or fragment in dso:
                return name
    return "other"


def main():
    by_group, by_process, by_thread = defaultdict(float), defaultdict(float), defaultdict(float)
    by_symbol = defaultdict(float)
    total = 0.0
    for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
        match = LINE.match(line)
        if not match:
            continue
        share, dso, sym = float(match[1]), match[3], match[4]
        total += share
        by_group[group_of(dso, sym)] += share
        by_symbol[(group_of(dso, sym), sym[:90])] += share
        # The binary says which service; the thread (comm) what kind of
        # work, the kernel's on its behalf included.
        by_process[dso] += share
        by_thread[match[2]] += share
    if total == 0:
        sys.exit("profile-groups.py: no samples in the report")
    print("| share | where |")
    print("|---:|---|")
    for name, share in sorted(by_group.items(), key=lambda kv: -kv[1]):
        print(f"| {100 * share / total:.0f}% | {name} |")
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
