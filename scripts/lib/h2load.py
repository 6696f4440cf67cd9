#!/usr/bin/env python3
"""Drives one gRPC method with h2load (nghttp2's HTTP/2 load tool, C, far
cheaper per call than any tonic client) and writes a report in the shape of
shop-loadgen's, so that scripts/bench-report.py treats both alike.

    h2load.py [--server-pid=PID] [--protocol=grpc|grpc-web|http] [--requests=N]
              URL REQUEST_DIR REPORT DURATION WARMUP CONNECTIONS STREAMS
              [ADMIN_URL] -- [PREFIX...]

With --requests=N, h2load makes N calls and stops (DURATION and WARMUP
are then not used): a fixed amount of work, for counting what it cost.

REQUEST_DIR is what `shop-loadgen --write-request` wrote (body, path,
authorization, rest-path). --protocol says how the same call is made
(every one over h2c, so only the protocol differs): native gRPC (the
default), gRPC-Web (the same frames, `application/grpc-web+proto`), or the
REST route (`GET rest-path`, JSON back). PREFIX (e.g. `taskset -c 1`) runs before h2load. h2load
counts an HTTP 200 as success whatever the gRPC status: with ADMIN_URL (a
shop service's admin address), the server's own count of OK answers for
the method is read before and after, and the calls it did not answer OK
are reported as not OK. h2load's CPU time is measured from its rusage, and
with --server-pid the server's from /proc/PID/stat (both over the whole
run, warm-up included).
"""

import json
import os
import re
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def seconds(text):
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if not match:
        raise SystemExit(f"h2load.py: duration {text!r}: expected e.g. 20s")
    value, unit = float(match[1]), match[2]
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


def ok_count(admin_url, method_path):
    """The server's grpc_server_handled_total{grpc_code="OK"} for the method."""
    if not admin_url:
        return None
    service, method = method_path.strip("/").split("/")
    text = urllib.request.urlopen(f"{admin_url}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if (line.startswith("grpc_server_handled_total{") and f'grpc_service="{service}"' in line
                and f'grpc_method="{method}"' in line and 'grpc_code="OK"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid):
    """User + system CPU seconds the process `pid` has used so far."""
    if pid is None:
        return None
    # Fields after the command name (which may hold spaces): utime and
    # stime are the 14th and 15th fields of the line.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    args = sys.argv[1:]
    split = args.index("--") if "--" in args else len(args)
    own, prefix = args[:split], args[split + 1:]
    server_pid = None
    protocol = "grpc"
    requests = None
    for arg in [a for a in own if a.startswith("--server-pid=")]:
        server_pid = int(arg.split("=", 1)[1])
        own.remove(arg)
    for arg in [a for a in own if a.startswith("--protocol=")]:
        protocol = arg.split("=", 1)[1]
        own.remove(arg)
    for arg in [a for a in own if a.startswith("--requests=")]:
        requests = int(arg.split("=", 1)[1])
        own.remove(arg)
    if protocol not in ("grpc", "grpc-web", "http"):
        raise SystemExit(f"h2load.py: --protocol={protocol}: grpc, grpc-web or http")
    url, request_dir, report = own[0], Path(own[1]), Path(own[2])
    duration, warmup = seconds(own[3]), seconds(own[4])
    connections, streams = int(own[5]), int(own[6])
    admin_url = own[7] if len(own) > 7 else None

    path = (request_dir / "path").read_text().strip()
    authorization = (request_dir / "authorization").read_text().strip()
    amount = (["-n", str(requests)] if requests is not None
              else ["-D", f"{duration:g}", f"--warm-up-time={warmup:g}"])
    command = [*prefix, "h2load", "--no-tls-proto=h2c", *amount,
               "-c", str(connections), "-m", str(streams), "-t", "1"]
    if protocol == "grpc":
        command += ["-d", str(request_dir / "body"),
                    "-H", "content-type: application/grpc", "-H", "te: trailers"]
        target = path
    elif protocol == "grpc-web":
        command += ["-d", str(request_dir / "body"),
                    "-H", "content-type: application/grpc-web+proto", "-H", "x-grpc-web: 1"]
        target = path
    else:
        command += ["-H", "accept: application/json"]
        target = (request_dir / "rest-path").read_text().strip()
    if authorization:
        command += ["-H", f"authorization: {authorization}"]
    command.append(url.rstrip("/") + target)

    before_ok = ok_count(admin_url, path)
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = cpu_seconds(server_pid)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - started
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_after = cpu_seconds(server_pid)
    after_ok = ok_count(admin_url, path)
    out = done.stdout
    sys.stderr.write(out)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"h2load.py: h2load exited with {done.returncode}")

    rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)[1])
    succeeded = int(re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)[1])
    total = int(re.search(r"requests: (\d+) total", out)[1])
    # "time for request:  min  max  mean  sd  +/- sd", each with a unit.
    row = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)

    def ms(value):
        number = float(re.match(r"[\d.]+", value)[0])
        return number / 1000 if value.endswith("us") else number * 1000 if value.endswith("s") and not value.endswith("ms") else number

    ok = succeeded
    if before_ok is not None and after_ok is not None:
        # Warm-up calls are answered too: the server's count covers both,
        # so only a shortfall against h2load's own count is a failure.
        ok = min(succeeded, int(after_ok - before_ok))
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    # h2load's CPU over its whole run (warm-up included), against the CPUs
    # the prefix gives it (one under taskset -c N).
    cpus = 1 if prefix[:1] == ["taskset"] else (os.cpu_count() or 1)
    cores = cpu / max(wall, 1e-9)
    method = path.rsplit("/", 1)[1]
    latency = {"p50": None, "p90": None, "p99": None, "p999": None,
               "max": ms(row[2]) if row else None, "mean": ms(row[3]) if row else None}
    document = {
        "scenario": "h2load", "mode": "closed", "concurrency": connections * streams, "rate": None,
        "connections": connections, "elapsed_s": duration if requests is None else round(wall, 3), "requests": total, "ok": ok,
        "throughput_rps": rps,
        "methods": {method: {"count": total, "ok": ok, "throughput_rps": rps,
                             "codes": {"OK": ok, "not OK": total - ok}, "latency_ms": latency}},
        "watch": None,
        "generator": {"cpu_cores": round(cores, 3), "cpus": cpus, "saturated": cores >= 0.9 * cpus},
        "driver": "h2load",
        "protocol": protocol,
        "server": None if server_pid is None else {
            "cpu_cores": round((server_after - server_before) / max(wall, 1e-9), 3)},
    }
    report.write_text(json.dumps(document, indent=2) + "\n")
    server = document["server"]
    print(f"h2load: {rps:.0f} req/s, {ok}/{total} OK, h2load used {cores:.2f} of {cpus} CPU(s)"
          + (f", the server {server['cpu_cores']:.2f}" if server else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
