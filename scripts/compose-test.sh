#!/usr/bin/env bash
# The stack in containers, for real: builds the images from deploy/Dockerfile,
# starts PostgreSQL and every service with docker-compose.yml under podman
# and podman-compose, and checks what a user of the compose file relies on:
#
#  1. each container becomes healthy by its own health check, in the order
#     of depends_on;
#  2. the end-to-end flow on the published ports with shopctl: the admin
#     stocks a product; a customer signs up, logs in, orders, watches the
#     order and cancels it, and the watch sees the cancellation;
#  3. `--scale user-service=2` (with docker-compose.scale.yml): the new
#     replica is healthy and order-service's calls reach both replicas
#     (GetUser counted in each replica's own /metrics);
#  4. a user-service container restarted under load (shop-loadgen,
#     CreateOrder through order-service): not one call fails;
#  5. `down -v` leaves no container, volume, network or pod of the project.
#
# CI only swaps what cannot be pulled where it runs (deploy/ci/compose.ci.yml):
# local stand-ins for the official debian and postgres images, made from
# Debian's packages (debootstrap), and the release binaries built here copied
# into the images (deploy/Dockerfile BINARIES=prebuilt) instead of compiled
# once per image. Podman is configured by deploy/ci/containers.conf through
# CONTAINERS_CONF; the machine's own configuration is not touched.
#
# Needs podman, runc, aardvark-dns and debootstrap (installed from Debian's
# packages when missing, as root) and the ports the compose file publishes.
#
#   COMPOSE_TEST_KEEP=1       leave the stack running on failure (debugging)
#   COMPOSE_TEST_REBUILD_BASE=1  make the debootstrap base image again
#   DEBIAN_MIRROR             where debootstrap fetches (http://deb.debian.org/debian)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

PODMAN_COMPOSE_VERSION="${PODMAN_COMPOSE_VERSION:-1.6.0}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_IMAGE=localhost/shop-ci/debian-standin:bookworm-slim
project=shop-ci
venv="$root/.tools/venv"

log() { echo "compose-test: $*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

# --- tools ------------------------------------------------------------------
missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -x /usr/lib/podman/aardvark-dns ]] || missing+=(aardvark-dns)
if ((${#missing[@]})); then
    if [[ "$(id -u)" != 0 ]]; then
        fail "missing ${missing[*]}: install them (apt-get install podman runc aardvark-dns debootstrap) or run as root"
    fi
    log "installing podman runc aardvark-dns debootstrap from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc aardvark-dns debootstrap >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc aardvark-dns debootstrap >/dev/null; }
fi
if [[ "$(id -u)" != 0 ]]; then
    fail "run as root: rootless podman needs subordinate ids this script does not set up"
fi
if [[ ! -x "$venv/bin/podman-compose" ]] \
    || [[ "$("$venv/bin/podman-compose" --version 2>/dev/null | awk '/podman-compose/{print $NF}')" != "$PODMAN_COMPOSE_VERSION" ]]; then
    log "installing podman-compose $PODMAN_COMPOSE_VERSION into .tools/venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "podman-compose==$PODMAN_COMPOSE_VERSION"
fi
export CONTAINERS_CONF="$root/deploy/ci/containers.conf"
# Docker's image format keeps the Dockerfile's HEALTHCHECK.
export BUILDAH_FORMAT=docker

mapfile -t rows < <(grep -v '^\s*#' deploy/services.tsv | awk 'NF {print $1, $2, $3}')

# --- binaries -----------------------------------------------------------------
services=()
for row in "${rows[@]}"; do services+=("${row%% *}"); done
log "building the release binaries"
cargo build --release --locked --quiet $(printf -- '-p %s ' "${services[@]}") \
    -p shop-health-probe -p shopctl -p shop-loadgen
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
bin="$target_dir/release"

work="$(mktemp -d)"
compose_files=(-f docker-compose.yml -f deploy/ci/compose.ci.yml)
compose() {
    "$venv/bin/podman-compose" -p "$project" --env-file "$work/env" "${compose_files[@]}" "$@" \
        2> >(grep -v -e 'systemd' -e 'syslog' -e "doesn't support healthy" >&2)
}
project_leftovers() {
    {
        podman ps -a --filter "label=com.docker.compose.project=$project" --format 'container {{.Names}}'
        podman volume ls --filter "label=com.docker.compose.project=$project" --format 'volume {{.Name}}'
        podman network ls --format '{{.Name}}' | grep -x "${project}_default" | sed 's/^/network /'
        podman pod ls --format '{{.Name}}' | grep -x "pod_$project" | sed 's/^/pod /'
    } || true
}
remove_project() {
    podman pod rm -f -t 5 "pod_$project" >/dev/null 2>&1 || true
    podman ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r podman rm -f -t 5 >/dev/null 2>&1 || true
    podman volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
    podman network rm -f "${project}_default" >/dev/null 2>&1 || true
}
cleanup() {
    local rc=$?
    if ((rc != 0)) && [[ "${COMPOSE_TEST_KEEP:-}" == 1 ]]; then
        log "COMPOSE_TEST_KEEP=1: the stack is left running; env file $work/env"
        return
    fi
    if ((rc != 0)); then
        for c in $(podman ps -a --filter "label=com.docker.compose.project=$project" --format '{{.Names}}'); do
            log "last log lines of $c:"
            podman logs --tail 15 "$c" 2>&1 | cut -c1-400 >&2 || true
        done
    fi
    [[ -z "$(project_leftovers)" ]] || remove_project
    rm -rf "$work" deploy/prebuilt
}
trap cleanup EXIT
if [[ -n "$(project_leftovers)" ]]; then
    log "removing what an earlier run left: $(project_leftovers | tr '\n' ' ')"
    remove_project
    [[ -z "$(project_leftovers)" ]] || fail "could not remove: $(project_leftovers | tr '\n' ' ')"
fi

# --- the ports the compose file publishes must be free ------------------------
ports=()
for row in "${rows[@]}"; do
    read -r _ grpc admin <<<"$row"
    ports+=("$grpc" "$admin")
done
for port in "${ports[@]}"; do
    if python3 -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', int(sys.argv[1])))" "$port" 2>/dev/null; then
        continue
    fi
    fail "port $port is in use (a devstack or another stack?); the compose file publishes it"
done

# --- images -------------------------------------------------------------------
if [[ "${COMPOSE_TEST_REBUILD_BASE:-}" == 1 ]] || ! podman image exists "$BASE_IMAGE"; then
    log "making $BASE_IMAGE with debootstrap (a stand-in for debian:bookworm-slim)"
    rootfs="$work/rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi
rm -rf deploy/prebuilt
mkdir -p deploy/prebuilt
for binary in "${services[@]}" shop-health-probe; do
    cp "$bin/$binary" deploy/prebuilt/
done
scripts/compose-env.sh "$work/env" 2>/dev/null
log "building the images (podman-compose build)"
compose build >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; fail "image build"; }
for s in "${services[@]}"; do
    user="$(podman image inspect -f '{{.Config.User}}' "shop/$s:dev")"
    [[ "$user" == 10001 ]] || fail "shop/$s:dev runs as '$user', not the unprivileged 10001"
done

# --- 1. start in dependency order, each healthy by its own health check -------
container() { # service [replica]
    echo "${project}_$1_${2:-1}"
}
wait_healthy() { # container
    local c="$1" deadline=$((SECONDS + 120))
    while ((SECONDS < deadline)); do
        local state
        state="$(podman inspect -f '{{.State.Status}}' "$c" 2>/dev/null || echo missing)"
        case "$state" in
            exited | missing | dead) fail "$c is $state" ;;
        esac
        # No systemd timer runs health checks here: run the container's own.
        if podman healthcheck run "$c" >/dev/null 2>&1; then
            log "$c is healthy"
            return
        fi
        sleep 1
    done
    fail "$c did not become healthy in 120 s"
}
started=$SECONDS
for s in postgres "${services[@]}"; do
    compose up -d --no-build "$s" >/dev/null
    wait_healthy "$(container "$s")"
done
log "the stack is up in $((SECONDS - started)) s"
for s in "${services[@]}"; do
    c="$(container "$s")"
    [[ "$(podman inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$c")" == true ]] \
        || fail "$c does not have a read-only root filesystem"
    [[ "$(podman exec "$c" id -u)" == 10001 ]] || fail "$c does not run as 10001"
done

# --- 2. the end-to-end flow on the published ports ----------------------------
set -a
# shellcheck disable=SC1091
. "$work/env"
set +a
shopctl() { "$bin/shopctl" --config-dir "$work/$1" "${@:2}"; }
json_field() { python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())[sys.argv[1]])' "$1"; }

SHOPCTL_PASSWORD="$BOOTSTRAP_ADMIN_PASSWORD" shopctl admin login "$BOOTSTRAP_ADMIN_EMAIL" >/dev/null
shopctl admin products put sku-1 --name "Compose test widget" --price 1250 >/dev/null
shopctl admin stock adjust sku-1 1000000 --reason "compose-test" >/dev/null
shopctl ada signup --email ada@example.com --username ada --password 'compose test 1' \
    --first-name Ada --last-name Lovelace >/dev/null
shopctl ada login ada --password 'compose test 1' >/dev/null
order="$(shopctl ada -o json orders create --item sku-1:2)"
order_id="$(json_field id <<<"$order")"
[[ "$(json_field status <<<"$order")" == pending ]] || fail "new order: $order"
[[ "$(json_field total_cents <<<"$order")" == 2500 ]] || fail "order total: $order"
shopctl ada -o json orders watch "$order_id" >"$work/watch.jsonl" 2>"$work/watch.err" &
watch_pid=$!
for _ in $(seq 50); do
    [[ -s "$work/watch.jsonl" ]] && break
    sleep 0.1
done
[[ "$(head -1 "$work/watch.jsonl" | json_field status)" == pending ]] \
    || fail "the watch did not start with the pending order: $(cat "$work/watch.jsonl" "$work/watch.err")"
shopctl ada orders cancel "$order_id" --reason "compose-test" >/dev/null
# The watch ends by itself once the order is cancelled.
for _ in $(seq 100); do
    kill -0 "$watch_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$watch_pid" 2>/dev/null; then
    kill "$watch_pid"
    fail "the watch did not end after the cancellation: $(cat "$work/watch.jsonl")"
fi
wait "$watch_pid" || fail "shopctl orders watch failed: $(cat "$work/watch.err")"
[[ "$(tail -1 "$work/watch.jsonl" | json_field status)" == cancelled ]] \
    || fail "the watch did not see the cancellation: $(cat "$work/watch.jsonl")"
[[ "$(shopctl ada -o json orders get "$order_id" | json_field status)" == cancelled ]] \
    || fail "the order is not cancelled"
log "flow: signed up, logged in, ordered $order_id, watched it, cancelled it (the watch saw it)"

# --- 3. scale user-service to 2 -------------------------------------------------
compose_files+=(-f docker-compose.scale.yml)
compose up -d --no-build --no-recreate --scale user-service=2 user-service >/dev/null
replica2="$(container user-service 2)"
wait_healthy "$replica2"
admin_port() { # container admin-port
    podman port "$1" "$2/tcp" | head -1 | sed 's/.*://'
}
user_admin="$(awk '$1 == "user-service" {print $3}' deploy/services.tsv)"
metrics_ports=("$(admin_port "$(container user-service)" "$user_admin")" "$(admin_port "$replica2" "$user_admin")")
get_users() { # admin port: GetUser calls a replica answered
    python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
print(int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("grpc_server_handled_total{") and 'grpc_method="GetUser"' in line)))
PY
}
loadgen() { # seconds report
    "$bin/shop-loadgen" --scenario create-order --virtual-users 8 --concurrency 8 \
        --duration "$1s" --warmup 0s --timeout 5s --no-progress --report "$2" >"$2.log" 2>&1 \
        || fail "shop-loadgen: $(tail -5 "$2.log")"
}
# order-service re-resolves user-service every CLIENT_DNS_REFRESH_INTERVAL
# (30 s): load until the new replica gets its share, at most a minute.
before=("$(get_users "${metrics_ports[0]}")" "$(get_users "${metrics_ports[1]}")")
deadline=$((SECONDS + 60))
while :; do
    loadgen 5 "$work/balance.json"
    after=("$(get_users "${metrics_ports[0]}")" "$(get_users "${metrics_ports[1]}")")
    first=$((after[0] - before[0])) second=$((after[1] - before[1]))
    ((first > 0 && second > 0)) && break
    ((SECONDS < deadline)) || fail "order-service's GetUser calls did not reach both replicas: $first and $second"
done
log "scaled: order-service's GetUser calls reached both user-service replicas ($first and $second)"

# --- 4. restart a container under load: no failed call ---------------------------
report="$work/restart.json"
loadgen 30 "$report" &
load_pid=$!
sleep 8
restart_from="$(date -u +%s.%N)"
podman restart -t 35 "$(container user-service)" >/dev/null 2> >(grep -v -e systemd -e syslog >&2)
wait_healthy "$(container user-service)"
restart_to="$(date -u +%s.%N)"
wait "$load_pid"
python3 - "$report" "$restart_from" "$restart_to" <<'PY' || fail "calls failed while a container restarted"
import json, sys
from datetime import datetime
report = json.load(open(sys.argv[1]))
start = datetime.fromisoformat(report["started_at"].replace("Z", "+00:00")).timestamp()
end = start + report["elapsed_s"]
restart_from, restart_to = float(sys.argv[2]), float(sys.argv[3])
assert start < restart_from and restart_to < end, \
    f"the restart ({restart_from:.1f}-{restart_to:.1f}) was not within the load ({start:.1f}-{end:.1f})"
assert report["requests"] > 0, "no load"
failed = {m: {c: n for c, n in r["codes"].items() if c != "OK"} for m, r in report["methods"].items()}
failed = {m: c for m, c in failed.items() if c}
print(f"compose-test: restart under load: {report['requests']} calls, {report['ok']} OK; "
      f"user-service-1 restarted and healthy in {restart_to - restart_from:.1f} s", file=sys.stderr)
assert report["ok"] == report["requests"] and not failed, f"failed calls: {failed}"
PY

# --- 5. down -v leaves nothing ----------------------------------------------------
compose down -v --remove-orphans >/dev/null 2>"$work/down.err" || true
if [[ -n "$(project_leftovers)" ]]; then
    # podman-compose 1.6's down knows only the replicas the files declare:
    # the one --scale added goes as an orphan, after PostgreSQL refused to
    # go before it (a dependant) and so kept its volume. A second down
    # finishes; Docker Compose needs one.
    log "podman-compose down left $(project_leftovers | tr '\n' ' ')(replicas added by --scale); down again"
    compose down -v --remove-orphans >/dev/null 2>&1 || true
fi
left="$(project_leftovers)"
[[ -z "$left" ]] || fail "down -v left: $left"
log "down -v: no container, volume, network or pod of $project is left"
log "passed"
