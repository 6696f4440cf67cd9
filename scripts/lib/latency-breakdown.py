#!/usr/bin/env python3
"""Where a call's time goes between the services: the mean time of every
gRPC method each service served and called, from their /metrics.

    latency-breakdown.py --save FILE  NAME=URL...   # counts so far, to FILE
    latency-breakdown.py --since FILE NAME=URL...   # means since --save

Reads `grpc_server_handling_seconds` and `grpc_client_handling_seconds`
and `shop_db_commit_seconds` (histograms: their `_sum` and `_count`) of
each service. Between a method's mean as its client saw it and
as its server saw it lies the transport and the wait for the server's
runtime; between a server's mean and what it called lies its own work and
its writes. Standard library only.
"""

import argparse
import json
import re
import sys
import urllib.request

SERIES = re.compile(
    r"^(grpc_server_handling_seconds|grpc_client_handling_seconds|shop_db_commit_seconds)"
    r"_(sum|count)(\{[^}]*\})? ([0-9.eE+-]+)$"
)
LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(url):
    """{(metric, method): [sum, count]} summed over the other labels."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    totals = {}
    for line in text.splitlines():
        m = SERIES.match(line)
        if not m:
            continue
        metric, part, labels, value = m.groups()
        labels = dict(LABEL.findall(labels or ""))
        method = labels.get("grpc_method") or labels.get("backend", "")
        if "grpc_service" in labels:
            method = labels["grpc_service"].rsplit(".", 1)[-1] + "/" + method
        entry = totals.setdefault(f"{metric}|{method}", [0.0, 0.0])
        entry[0 if part == "sum" else 1] += float(value)
    return totals


def main():
    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save")
    group.add_argument("--since")
    parser.add_argument("targets", nargs="+", help="NAME=URL of a /metrics")
    args = parser.parse_args()
    now = {}
    for target in args.targets:
        name, url = target.split("=", 1)
        try:
            now[name] = scrape(url)
        except OSError as e:
            print(f"{name}: /metrics not read: {e}", file=sys.stderr)
            now[name] = {}
    if args.save:
        with open(args.save, "w") as f:
            json.dump(now, f)
        return
    with open(args.since) as f:
        before = json.load(f)
    sides = {
        "grpc_server_handling_seconds": "served",
        "grpc_client_handling_seconds": "called",
        "shop_db_commit_seconds": "COMMIT",
    }
    print("| service | side | method | calls | mean ms |")
    print("|---|---|---|---:|---:|")
    for name, totals in now.items():
        for key in sorted(totals):
            metric, method = key.split("|", 1)
            s, c = totals[key]
            s0, c0 = before.get(name, {}).get(key, [0.0, 0.0])
            calls = c - c0
            if calls <= 0:
                continue
            mean_ms = (s - s0) / calls * 1000
            print(f"| {name} | {sides[metric]} | {method} | {calls:.0f} | {mean_ms:.2f} |")


if __name__ == "__main__":
    main()
