#!/usr/bin/env python3
"""Where PostgreSQL's busy connections spend their time, from its side.

Usage: pg-activity.py PSQL URL SECONDS

Samples pg_stat_activity about 150 times a second for SECONDS through one
psql session, then prints, for each connection of a bench_* database that
was busy at least a tenth of the time, the share of samples in each state:
running a statement (by its first words), waiting for the disk (a wait
event of type IO, e.g. the commit's WAL flush), waiting on a lock, and
"waiting for the service" (idle in transaction: PostgreSQL has answered
and the service has not sent its next statement yet). A group-commit
connection whose time is mostly the last is bound by the service's turn
around between statements, not by PostgreSQL or the disk
(docs/performance-history.md).
"""

import collections
import subprocess
import sys
import time

QUERY = (
    "SELECT datname, pid, state, coalesce(wait_event_type, ''), left(query, 48) "
    "FROM pg_stat_activity WHERE datname LIKE 'bench_%' AND pid <> pg_backend_pid();"
)
END = "@@end"


def classify(state, wait_type, query):
    if state == "idle in transaction":
        return "waiting for the service (idle in transaction)"
    if state == "active" and wait_type == "IO":
        return f"waiting for the disk: {query}"
    if state == "active" and wait_type in ("Lock", "LWLock"):
        return f"waiting on a lock: {query}"
    if state == "active":
        return f"running: {query}"
    return "idle (no transaction open)"


def main():
    psql, url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    session = subprocess.Popen(
        [psql, "-tAq", "-F", "|", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = collections.defaultdict(collections.Counter)
    samples = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        session.stdin.write(f"{QUERY}\n\\echo {END}\n")
        session.stdin.flush()
        for line in iter(session.stdout.readline, ""):
            line = line.strip()
            if line == END:
                break
            if line:
                db, pid, state, wait_type, query = line.split("|", 4)
                what = classify(state, wait_type, " ".join(query.split()[:3]))
                seen[(db.removeprefix("bench_"), pid)][what] += 1
        samples += 1
        time.sleep(0.005)
    session.stdin.close()
    session.wait()

    print(f"PostgreSQL's busy connections ({samples} samples over {seconds:.0f} s):")
    for (db, pid), states in sorted(seen.items()):
        busy = sum(states.values()) - states["idle (no transaction open)"]
        if busy < samples / 10:
            continue
        print(f"  {db} (backend {pid}): busy {busy / samples:.0%}")
        for what, count in states.most_common(8):
            print(f"    {count / samples:6.1%}  {what}")


if __name__ == "__main__":
    main()
