#!/usr/bin/env bash
# Checks deploy/prometheus/ with the real Prometheus tools:
#
#   1. promtool check config and check rules (syntax, PromQL, rule files);
#   2. promtool test rules: each alert fires on synthetic series showing its
#      symptom and stays quiet on healthy ones (deploy/prometheus/tests/);
#   3. the Grafana dashboards (deploy/grafana/dashboards/): every query parses
#      and names only metrics the services export or the rules record
#      (scripts/lib/check-dashboards.py);
#   4. a live run: the whole stack (devstack, SQLite) and a real Prometheus
#      scraping its three admin ports with the project's rules; every target
#      must be up and every recording rule must return series.
#
#   scripts/check-prometheus.sh [--static]   # --static: steps 1 to 3 only
#
# Prometheus and promtool come from Debian's `prometheus` package, installed
# when missing and this runs as root with apt-get.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

log() { printf '\033[1mcheck-prometheus.sh:\033[0m %s\n' "$*" >&2; }

static=0
[[ ${1:-} == --static ]] && static=1

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing prometheus (promtool) from Debian packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2 \
            || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -qq --no-install-recommends prometheus >&2; }
    else
        log "prometheus and promtool are missing (Debian: apt-get install prometheus)"
        exit 1
    fi
fi

log "promtool check config and rules"
promtool check config deploy/prometheus/prometheus.yml
log "promtool test rules (every alert firing and not firing)"
promtool test rules deploy/prometheus/tests/*.test.yml
log "Grafana dashboards: queries parse and name exported metrics"
python3 scripts/lib/check-dashboards.py deploy/grafana/dashboards crates deploy/prometheus/rules

[[ $static == 1 ]] && exit 0

# --- live: the stack and a real Prometheus ------------------------------------

# The same build as scripts/test.sh's (one set of features: nothing is
# rebuilt after it).
log "cargo build --workspace --all-targets (devstack, health probe)"
cargo build --locked --workspace --all-targets
bin="$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug"

work="$(mktemp -d /tmp/shop-prometheus.XXXXXX)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

log "starting devstack"
# shellcheck source=lib/devstack.sh
source "$root/scripts/lib/devstack.sh"
start_devstack "$bin" "$work"
pids+=("$devstack_pid")
# Chosen once devstack holds its ports.
prometheus_port=$(free_ports 1)

# The project's rules, scraped and evaluated every second so that the
# windowed rates have samples within seconds.
sed -e 's/scrape_interval: 15s/scrape_interval: 1s/' \
    -e 's/evaluation_interval: 15s/evaluation_interval: 1s/' \
    -e "s|rules/|$root/deploy/prometheus/rules/|" \
    -e "s/user-service:9101/127.0.0.1:${admin[user-service]}/" \
    -e "s/order-service:9102/127.0.0.1:${admin[order-service]}/" \
    -e "s/inventory-service:9103/127.0.0.1:${admin[inventory-service]}/" \
    deploy/prometheus/prometheus.yml >"$work/prometheus.yml"
log "starting Prometheus on 127.0.0.1:$prometheus_port"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prometheus_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)

# Unary calls to every service (health checks through the full server
# stack), so that each method-level SLI has calls to divide by.
log "calling every service for 20 s"
end=$((SECONDS + 20))
while ((SECONDS < end)); do
    for service in user-service order-service inventory-service; do
        "$bin/shop-health-probe" --addr "http://127.0.0.1:${grpc[$service]}" --timeout 1s \
            >/dev/null 2>&1 || true
    done
    sleep 0.1
done

live_failed() {
    log "devstack's last log lines:"
    tail -n 30 "$work/devstack.log" | cut -c1-400 >&2
    log "Prometheus's last log lines:"
    tail -n 10 "$work/prometheus.log" | cut -c1-400 >&2
    exit 1
}
python3 - "http://127.0.0.1:$prometheus_port" deploy/prometheus/rules/slo.yml <<'EOF' || live_failed
import json, re, sys, time, urllib.parse, urllib.request

base, rules_file = sys.argv[1], sys.argv[2]

def get(path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    return json.load(urllib.request.urlopen(url, timeout=10))["data"]

records = re.findall(r"^\s*- record: (\S+)", open(rules_file).read(), re.M)
deadline = time.time() + 60
while True:
    targets = get("/api/v1/targets")["activeTargets"]
    down = [f"{t['labels']['job']} ({t['health']}: {t.get('lastError') or 'not scraped yet'})"
            for t in targets if t["health"] != "up"]
    empty = [r for r in records if not get("/api/v1/query", query=r)["result"]]
    if (targets and not down and not empty) or time.time() > deadline:
        break
    time.sleep(2)
print(f"check-prometheus.sh: {len(targets)} targets, {len(targets) - len(down)} up; "
      f"{len(records)} recording rules, {len(records) - len(empty)} with series", file=sys.stderr)
if len(targets) != 3 or down or empty:
    for t in down:
        print(f"  target not up: {t}", file=sys.stderr)
    for r in empty:
        print(f"  recording rule without series: {r}", file=sys.stderr)
    sys.exit(1)
EOF
log "every target up, every recording rule has series"
