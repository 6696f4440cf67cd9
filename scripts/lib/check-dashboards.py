#!/usr/bin/env python3
"""Checks the Grafana dashboards under deploy/grafana/dashboards/:

- every query parses as PromQL (each is handed to `promtool check rules` as
  a recording rule, with Grafana's variables replaced by values);
- every metric a query names is one the services export (a metric name
  declared in crates/**/*.rs, with `_bucket`, `_sum` and `_count` for a
  histogram, or a process metric of metrics-process), one the recording rules in deploy/prometheus/rules/ record,
  or one Prometheus itself writes for each target.

    check-dashboards.py DASHBOARD_DIR CRATES_DIR RULES_DIR
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Series Prometheus writes for every scrape target.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                  "scrape_samples_post_metric_relabeling", "scrape_series_added"}
# The process metrics the services export through the metrics-process crate
# (shop_telemetry::process), named as Prometheus' Go client names them.
PROCESS = {"process_cpu_seconds_total", "process_open_fds", "process_max_fds",
           "process_virtual_memory_bytes", "process_virtual_memory_max_bytes",
           "process_resident_memory_bytes", "process_start_time_seconds", "process_threads"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}


def exported_metrics(crates):
    """Metric names the code declares: string literals grpc_server_* and
    grpc_client_* (the grpc-ecosystem names the telemetry crate uses) and
    shop_* (the project's own), and the process metrics."""
    names = set(PROCESS)
    for source in crates.rglob("*.rs"):
        if "/tests/" in str(source) or "/benches/" in str(source):
            continue
        names.update(re.findall(r'"((?:grpc_(?:server|client)|shop)_[a-z_]+)"', source.read_text()))
    for name in list(names):
        if name.endswith(("_seconds", "_bytes")):
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def recorded_metrics(rules):
    names = set()
    for file in rules.glob("*.yml"):
        names.update(re.findall(r"^\s*- record: (\S+)", file.read_text(), re.M))
    return names


def concrete(expr):
    """The query with Grafana's variables replaced by values PromQL accepts."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", ".+", expr)


def metric_names(expr):
    """Names used as metrics in a PromQL expression (not functions, label
    names, keywords, strings or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    text = re.sub(r"\{[^}]*\}", " ", text)                    # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                   # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or word.lower() in KEYWORDS:
            continue
        if re.fullmatch(r"\d+(ms|s|m|h|d|w|y)", word):
            continue
        names.add(word)
    return names


def main():
    dashboards, crates, rules = (Path(a) for a in sys.argv[1:4])
    known = exported_metrics(crates) | recorded_metrics(rules) | PROMETHEUS_OWN
    problems, queries = [], []
    files = sorted(dashboards.glob("*.json"))
    if not files:
        sys.exit(f"check-dashboards.py: no dashboard in {dashboards}")
    for file in files:
        dashboard = json.loads(file.read_text())
        panels = dashboard.get("panels") or []
        if not panels:
            problems.append(f"{file.name}: no panels")
        for panel in panels:
            targets = panel.get("targets") or []
            if not targets:
                problems.append(f"{file.name}: panel {panel.get('title')!r} has no query")
            for target in targets:
                expr = target.get("expr", "")
                where = f"{file.name}: panel {panel.get('title')!r}"
                if not expr.strip():
                    problems.append(f"{where}: empty query")
                    continue
                queries.append((where, concrete(expr)))
                for name in sorted(metric_names(expr) - known):
                    problems.append(f"{where}: {name} is not a metric the services export")
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as rule_file:
        rule_file.write("groups:\n  - name: dashboard-queries\n    rules:\n")
        for i, (_, expr) in enumerate(queries):
            rule_file.write(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(expr)}\n")
    parsed = subprocess.run(["promtool", "check", "rules", rule_file.name],
                            capture_output=True, text=True)
    Path(rule_file.name).unlink()
    if parsed.returncode != 0:
        problems.append("promtool refused a query:\n" + parsed.stdout + parsed.stderr)
    for problem in problems:
        print(f"check-dashboards.py: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check-dashboards.py: {len(files)} dashboards, {len(queries)} queries: every one "
          f"parses and names only exported or recorded metrics", file=sys.stderr)


if __name__ == "__main__":
    main()
