#!/usr/bin/env bash
# Benchmarks the shop stack against bare tonic, in one run on one machine.
#
#   scripts/bench.sh            # full run (20 to 30 minutes after the build)
#   scripts/bench.sh --quick    # smoke run (under 2 minutes; what CI runs)
#       [--bin=DIR]             # (any mode but --ab) run the release
#                               # binaries in DIR instead of building them:
#                               # user-service, inventory-service,
#                               # order-service, shop-loadgen,
#                               # shop-bare-server and shop-health-probe
#                               # (scripts/pgo.sh's build, for one)
#       [--tag=NAME]            # the results' name ends in -NAME, e.g.
#                               # --tag=pgo
#   scripts/bench.sh --profile=get-user|create-order|mixed|bare
#                               # where the server CPU goes (perf), on SQLite,
#                               # in shares and in µs per call (bare: the
#                               # bare tonic server, the yardstick)
#                               # (PROFILE_BACKEND=postgres for PostgreSQL,
#                               # with the time of its busy connections,
#                               # PROFILE_USERS_ENV="USER_CACHE_CAPACITY=0" to
#                               # give user-service settings, PROFILE_RATE=N
#                               # for an open loop at N req/s instead of the
#                               # closed loop's saturation, PROFILE_SAVE=FILE
#                               # to keep perf's per-symbol report,
#                               # PROFILE_DRIVER=h2load to drive get-user or
#                               # bare with h2load, as the targets are)
#   scripts/bench.sh --instructions=get-user|bare [--ab=DIR_A,DIR_B]
#                               # instructions per call (valgrind's
#                               # callgrind, installed from Debian packages
#                               # when missing and possible): user-service
#                               # (cached GetUser on SQLite) or the bare
#                               # server counted while h2load makes
#                               # INSTRUCTIONS_CALLS calls (20,000 by
#                               # default), with the functions that take
#                               # them; a count that hardly moves with the
#                               # host (half a percent between runs), where
#                               # a run's req/s moves by a third. With --ab,
#                               # each build in turn (PROFILE_USERS_ENV
#                               # gives user-service settings here too;
#                               # INSTRUCTIONS_SAVE=FILE keeps callgrind's
#                               # output for callgrind_annotate, as FILE or,
#                               # with --ab, FILE.1 and FILE.2)
#   scripts/bench.sh --ab=DIR_A,DIR_B [--scenario=create-order] [--backend=postgres] [--rounds=3]
#                               # (scenarios: get-user, create-order, get-order,
#                               # get-product, mixed, watch-idle: the last
#                               # compares order-service's resident memory
#                               # per idle WatchOrder stream, BENCH_WATCH_STREAMS
#                               # of them, 10,000 by default)
#                               # A/B of two builds: DIR_A and DIR_B each hold
#                               # release binaries (copies of target/release
#                               # from two commits); runs the scenario on a
#                               # fresh stack of each in turn, A B A B ...,
#                               # and prints every run and each side's median
#                               # (one run says little on a shared VM: runs
#                               # of one build here vary by a third)
#       [--rate=N]              # open loop at N req/s instead of the closed
#                               # loop: prints the services' CPU per request
#                               # and the latency of each run instead
#       [--ab-env="VAR=V ...,VAR=V ..."]
#                               # extra settings for every service of side A
#                               # and of side B (DIR_A and DIR_B may then be
#                               # the same build: an A/B of a setting)
#       [--ab-age=DURATION]     # before each measured run, CreateOrder in
#                               # the closed loop for DURATION (e.g. 30s) on
#                               # the same stack, unmeasured: the run then
#                               # finds the databases the full run's mix
#                               # finds (over 100,000 orders), not empty ones
#       [--ab-driver=h2load]    # get-user only, closed loop: drive it with
#                               # h2load as the throughput targets are, not
#                               # shop-loadgen (prints user-service's CPU too)
#
# Builds release binaries, then for each scenario starts the servers it
# needs on CPU 0 and shop-loadgen on CPU 1 (taskset, when there are at least
# two CPUs), warms up, measures, and stops everything it started:
#
#   bare           shop-bare-server: tonic with no middleware, GetUser
#                  answering a fixed user (the yardstick)
#   get-user       GetUser of oneself: token check + database read
#   create-order   CreateOrder: GetUser hop to user-service, ReserveStock at
#                  inventory-service, database write; the confirmations,
#                  batched after the answers, must drain when the load stops
#                  (the report says how many were owed and for how long)
#   get-user-half  GetUser, open loop at half the peak measured just before
#                  (p99 vs p50)
#   bare-half      bare tonic at that same rate: the transport's own p99/p50
#   get-order      GetOrder alone: the read latency with no writes running
#   mixed          the realistic mix with WatchOrder streams held open
#   mixed-half     the mix in open loop at half its peak, and
#   mixed-reads-half  its reads alone at the read rate that had: the read
#                  latency with and without writes, like for like
#                  (get-user-half, bare-half and these two run
#                  BENCH_LATENCY_RUNS times, 3 by default, once in --quick:
#                  NAME, NAME-2, ...; each latency target is the median)
#   watch-idle     N idle WatchOrder streams: server memory per stream, and
#                  every stream receives its order's change
#
# The yardstick is taken twice, with shop-loadgen and with h2load (nghttp2's
# load tool in C, installed from Debian packages when missing and
# possible), and GetUser is also driven by h2load, so the ratio of like to
# like is reported with each driver. Every report says how busy its load
# generator was (and each CPU, and how much of it the hypervisor stole): a
# figure whose generator used 90% or more of its CPU measured the generator
# too, so a ratio with one is reported as the bound it is (against such a
# bare figure: at most; for such a scenario: at least) where that settles
# its target, and as not valid otherwise. shop-loadgen's scenarios are set
# against the higher of the two bare figures (each is at most the server's
# capacity). The h2load runs of the yardstick and of the GetUser targets
# run BENCH_THROUGHPUT_RUNS times (3 by default, once in --quick: NAME,
# NAME-2, ...), each GetUser run right after a run of a second bare server
# kept beside the stack (NAME-yardstick, NAME-yardstick-2, ...); each
# GetUser h2load target is the median of its runs' ratios to the bare run
# before each (a yardstick taken at the start of the run is a few
# hundredths off by the last target, either way), with the median of its
# runs against the median of bare-h2load's beside it. h2load keeps
# BENCH_H2LOAD_CONNECTIONS (8) connections of BENCH_H2LOAD_STREAMS (32)
# streams each busy: the bare server answers more a second the more calls
# each of its reads brings (about 100,000 at 64 in flight, 160,000 at 256
# on one host, where shop-loadgen saturated at 110,000), and the
# yardstick is the bare server at its best.
# Cached GetUser (SQLite) is also driven over gRPC-Web and over its REST
# route (h2load, h2c: get-user-sqlite-{grpc-web,rest}-h2load), and
# scripts/lib/payload-sizes.py measures our messages in protobuf and JSON,
# raw and gzipped, on the same stack.
# At the end (not in --quick), cached GetUser and the bare server are
# counted as --instructions counts them: instructions per call, a figure
# the host hardly moves, in the report beside the ratios.
# get-user also runs with the users cache off (get-user-uncached-*: every
# call reads the database). bare and cached get-user (SQLite) run once more
# with the server allowed both CPUs (*-2cpu, h2load sharing them): scaling
# from 1 to 2 server cores, against the CPU the server used; so does
# create-order on each backend (shop-loadgen, the services on both CPUs).
#
# get-user and create-order run on SQLite and on PostgreSQL (a throwaway
# cluster with PostgreSQL's default durability, started like
# scripts/test.sh does; skipped with a note when PostgreSQL is missing).
# With BENCH_PG_TLS=1 that cluster offers TLS and the services connect with
# sslmode=require (every connection encrypted, as across a network). It
# runs on the load's CPU (CPU 1), not the servers': a database server is a
# machine of its own wherever the services are deployed, and the targets
# measure the services, as the anchors' frameworks are measured against a
# database on another host. BENCH_PG_CPU=any leaves it to the scheduler
# (as before 2026-12-07: its backends then took part of CPU 0), or names
# the CPUs it runs on. A load CPU that PostgreSQL keeps busy can only
# lower what the services are measured to serve.
# Results: bench/results/<date>-<git-sha>[-quick].json and .md, every
# throughput also a ratio to the bare server measured in the same run.
#
# The servers run as in docker-compose (access log at info, JSON to a
# file), except: per-caller rate limits are lifted (the point is capacity,
# not throttling one caller), and so is the per-address quota of sign-ups
# and logins (every load account comes from this one address), the stream
# limits are raised for watch-idle, and BCRYPT_COST is 10 (only sign-up and
# login of the load accounts hash, before measuring). No timing is asserted anywhere: numbers are reported.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

pg_start=(durable) pg_params=
if [[ ${BENCH_PG_TLS:-0} == 1 ]]; then
    pg_start+=(tls) pg_params="?sslmode=require"
fi
quick=0 prebuilt= tag= profile= instructions= ab= ab_scenario=create-order ab_backend=postgres ab_rounds=3 ab_rate= ab_env=, ab_age= ab_driver=loadgen
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        --bin=*) prebuilt="${arg#--bin=}" ;;
        --tag=*) tag="${arg#--tag=}" ;;
        --profile=*) profile="${arg#--profile=}" ;;
        --instructions=*) instructions="${arg#--instructions=}" ;;
        --ab=*) ab="${arg#--ab=}" ;;
        --scenario=*) ab_scenario="${arg#--scenario=}" ;;
        --backend=*) ab_backend="${arg#--backend=}" ;;
        --rounds=*) ab_rounds="${arg#--rounds=}" ;;
        --rate=*) ab_rate="${arg#--rate=}" ;;
        --ab-env=*) ab_env="${arg#--ab-env=}" ;;
        --ab-age=*) ab_age="${arg#--ab-age=}" ;;
        --ab-driver=*) ab_driver="${arg#--ab-driver=}" ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done
[[ -z $prebuilt || -z $ab ]] || { echo "bench.sh: --bin: not with --ab (which names its builds)" >&2; exit 2; }
[[ $tag =~ ^[A-Za-z0-9._-]*$ ]] || { echo "bench.sh: --tag=$tag: letters, digits, '.', '_' and '-' only" >&2; exit 2; }

if [[ $quick == 1 ]]; then
    duration=3s warmup=1s concurrency=32 streams=500 users=4 latency_runs=1
else
    duration=20s warmup=5s concurrency=64 streams=${BENCH_WATCH_STREAMS:-10000} users=16
    # The open-loop runs behind the two latency targets, each repeated:
    # their tail varies two- to threefold between identical runs, and the
    # target is the median (bench-report.py).
    latency_runs=${BENCH_LATENCY_RUNS:-3}
    # The h2load runs behind the throughput targets (and their yardstick,
    # bare-h2load), each repeated: one run of the same build here can be
    # a third off the next, and the target is the ratio of the medians.
    throughput_runs=${BENCH_THROUGHPUT_RUNS:-3}
fi
throughput_runs=${throughput_runs:-1}
[[ $latency_runs =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: BENCH_LATENCY_RUNS=$latency_runs: a count" >&2; exit 2; }
[[ $throughput_runs =~ ^[1-9][0-9]*$ ]] \
    || { echo "bench.sh: BENCH_THROUGHPUT_RUNS=$throughput_runs: a count" >&2; exit 2; }
# h2load's shape for the throughput targets (see the header): the calls
# in flight that bring the bare server to its best.
h2load_connections=${BENCH_H2LOAD_CONNECTIONS:-8}
h2load_streams=${BENCH_H2LOAD_STREAMS:-32}
[[ $h2load_connections =~ ^[1-9][0-9]*$ && $h2load_streams =~ ^[1-9][0-9]*$ ]] \
    || { echo "bench.sh: BENCH_H2LOAD_CONNECTIONS and BENCH_H2LOAD_STREAMS: counts" >&2; exit 2; }
# repeat_suffix N: the name suffix of the Nth run of a repeated scenario
# (none for the first, then -2, -3, ...).
repeat_suffix() { [[ $1 == 1 ]] || printf -- '-%s' "$1"; }

log() { printf '\033[1mbench.sh:\033[0m %s\n' "$*" >&2; }

# The release binaries a run starts (the bare server: not in --ab's runs).
binaries=(user-service inventory-service order-service shop-loadgen shop-health-probe)
# require_binaries OPTION DIR NAME...: each NAME is an executable in DIR.
require_binaries() {
    local option=$1 dir=$2 name
    for name in "${@:3}"; do
        [[ -x $dir/$name ]] || { echo "bench.sh: $option: $dir/$name missing" >&2; exit 2; }
    done
}

if [[ -n $ab ]]; then
    ab_dirs=("${ab%%,*}" "${ab#*,}")
    for dir in "${ab_dirs[@]}"; do
        require_binaries --ab "$dir" "${binaries[@]}"
    done
    [[ $ab_scenario =~ ^(get-user|create-order|get-order|get-product|mixed|watch-idle)$ ]] \
        || { echo "bench.sh: --scenario=$ab_scenario: get-user, create-order, get-order, get-product, mixed or watch-idle" >&2; exit 2; }
    [[ $ab_scenario != watch-idle || -z $ab_rate ]] \
        || { echo "bench.sh: --rate: not with --scenario=watch-idle (its streams are idle)" >&2; exit 2; }
    [[ $ab_backend =~ ^(sqlite|postgres)$ ]] \
        || { echo "bench.sh: --backend=$ab_backend: sqlite or postgres" >&2; exit 2; }
    [[ $ab_rounds =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --rounds=$ab_rounds: a count" >&2; exit 2; }
    [[ -z $ab_rate || $ab_rate =~ ^[1-9][0-9]*(\.[0-9]+)?$ ]] \
        || { echo "bench.sh: --rate=$ab_rate: requests a second" >&2; exit 2; }
    [[ $ab_env == *,* ]] || { echo "bench.sh: --ab-env=$ab_env: ENV_A,ENV_B" >&2; exit 2; }
    [[ $ab_driver == loadgen || ($ab_driver == h2load && $ab_scenario == get-user && -z $ab_rate) ]] \
        || { echo "bench.sh: --ab-driver=$ab_driver: loadgen, or h2load with --scenario=get-user and no --rate" >&2; exit 2; }
    bin="${ab_dirs[0]}"
elif [[ -n $prebuilt ]]; then
    require_binaries --bin "$prebuilt" "${binaries[@]}" shop-bare-server
    bin="$(cd "$prebuilt" && pwd)"
    log "the binaries in $bin"
else
    log "cargo build --release (servers, loadgen, bare server, health probe)"
    cargo build --release --locked -p user-service -p inventory-service -p order-service -p shop-loadgen -p shop-health-probe
    target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    bin="$target_dir/release"
fi

server_cpu=() load_cpu=()
if command -v taskset >/dev/null 2>&1 && [[ "$(nproc)" -ge 2 ]]; then
    server_cpu=(taskset -c 0) load_cpu=(taskset -c 1)
    PG_CPU=${BENCH_PG_CPU:-1}
    log "servers on CPU 0, load on CPU 1"
else
    PG_CPU=${BENCH_PG_CPU:-any}
    log "taskset or a second CPU missing: servers and load share the CPUs"
fi
[[ $PG_CPU != any ]] || PG_CPU=
[[ -z $PG_CPU || $PG_CPU =~ ^[0-9]+([,-][0-9]+)*$ ]] \
    || { echo "bench.sh: BENCH_PG_CPU=$PG_CPU: any, or a CPU list (1, 0-1)" >&2; exit 2; }
export PG_CPU
[[ -z $PG_CPU ]] || log "PostgreSQL (when it runs) on CPU $PG_CPU"

work="$(mktemp -d /tmp/shop-bench.XXXXXX)"
pids=() names=()
last_pid=
# start_pg, stop_pg and free_port (the servers' ports too)
# shellcheck source=lib/postgres.sh
source "$root/scripts/lib/postgres.sh"
pair_port= pair_pid=
cleanup() {
    stop_servers
    [[ -z $pair_pid ]] || { kill -TERM "$pair_pid" 2>/dev/null; wait "$pair_pid" 2>/dev/null; } || true
    stop_pg
    rm -rf "$work"
}
stop_servers() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    pids=() names=()
}
trap cleanup EXIT

# start NAME HEALTH_SERVICE PORT VAR=VALUE... : starts a server and waits
# until it answers SERVING for HEALTH_SERVICE (`-`: until its port accepts
# connections); its pid goes to pids and last_pid.
start() {
    local name=$1 health=$2 port=$3
    shift 3
    local wrap=()
    [[ $name != "${wrapped:-}" ]] || wrap=("${server_wrap[@]}")
    env -i PATH="$PATH" HOME="$work" "$@" "${server_cpu[@]}" "${wrap[@]}" "$bin/$name" \
        >>"$work/$name.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    names+=("$name")
    last_pid=$pid
    for _ in $(seq 1 300); do
        if [[ $health == - ]]; then
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                return 0
            fi
        elif "$bin/shop-health-probe" --addr "http://127.0.0.1:$port" --service "$health" \
            --timeout 1s >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during start-up:"
            tail -5 "$work/$name.log" | cut -c1-400 >&2
            return 1
        fi
        sleep 0.2
    done
    log "$name not serving after 60 s"
    return 1
}

# host_cpu NAME before|after: a copy of /proc/stat, from which
# bench-report.py tells how busy each CPU was while NAME ran and how much
# of its time the hypervisor gave to someone else (steal): a tail measured
# while the host took the CPU away says more about the host than the stack.
# Also each running server's CPU time so far (`NAME TICKS` lines after the
# time of day), so that the report can say which service used the CPU.
# Both span the whole run, its warm-up included: for h2load, whose
# measurement is not ours (shop-loadgen takes its own over its measured
# phase, see load).
host_cpu() {
    local i stat
    mkdir -p "$work/extra"
    cp /proc/stat "$work/extra/stat-$1.$2" 2>/dev/null || true
    {
        date +%s.%N
        for i in "${!pids[@]}"; do
            stat=$(cat "/proc/${pids[$i]}/stat" 2>/dev/null) || continue
            # utime and stime: fields 14 and 15, the 12th and 13th after
            # the parenthesised command name.
            awk -v name="${names[$i]}" '{print name, $12 + $13}' <<<"${stat##*) }"
        done
    } >"$work/extra/procs-$1.$2"
}

# load NAME ARGS...: runs shop-loadgen, report in $work/NAME.json; it
# measures the running servers' CPU and the host's CPUs over its measured
# phase itself (--server-process).
load() {
    local name=$1 i servers=()
    shift
    for i in "${!pids[@]}"; do servers+=(--server-process "${names[$i]}=${pids[$i]}"); done
    log "measuring $name"
    "${load_cpu[@]}" "$bin/shop-loadgen" --no-progress --report "$work/$name.json" \
        --duration "$duration" --warmup "$warmup" --virtual-users "$users" "${servers[@]}" "$@" \
        | tee "$work/$name.txt" >&2
}

# drive_h2load NAME URL ADMIN_URL(or -) SERVER_PID LOADGEN_ARGS...: writes the
# request with shop-loadgen --write-request, then drives it with h2load (same
# callers: CONNECTIONS x STREAMS = concurrency); report in $work/NAME.json,
# with the CPU the server at SERVER_PID used.
have_h2load=0
if command -v h2load >/dev/null 2>&1; then
    have_h2load=1
elif [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "h2load not found; installing nghttp2-client from Debian packages"
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nghttp2-client >&2 \
        || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -qq --no-install-recommends nghttp2-client >&2; }; then
        have_h2load=1
    fi
fi
[[ $have_h2load == 1 ]] || log "h2load not available: the h2load measurements are skipped"
# PROTOCOL=grpc-web or http in the environment makes the same call over
# gRPC-Web or its REST route (h2load.py --protocol).
drive_h2load() {
    local name=$1 url=$2 admin=$3 server_pid=$4
    shift 4
    [[ $have_h2load == 1 ]] || return 0
    log "measuring $name (h2load, ${PROTOCOL:-grpc})"
    "$bin/shop-loadgen" --write-request "$work/request-$name" --users-url "$url" "$@" >&2
    local admin_arg=()
    [[ $admin == - ]] || admin_arg=("$admin")
    host_cpu "$name" before
    python3 scripts/lib/h2load.py --server-pid="$server_pid" --protocol="${PROTOCOL:-grpc}" \
        "$url" "$work/request-$name" "$work/$name.json" \
        "$duration" "$warmup" "$h2load_connections" "$h2load_streams" "${admin_arg[@]}" -- "${load_cpu[@]}"
    host_cpu "$name" after
}

# drive_h2load_runs NAME ...: drive_h2load as NAME, NAME-2, ... up to
# $throughput_runs: a throughput target's runs (bench-report.py takes the
# median).
# With the paired yardstick running (pair_port, below), each run of a
# target is preceded by one of the bare server, NAME-yardstick[-k].
drive_h2load_runs() {
    local name=$1 run
    shift
    for run in $(seq 1 "$throughput_runs"); do
        if [[ -n $pair_port && $name != bare* ]]; then
            drive_h2load "$name-yardstick$(repeat_suffix "$run")" "http://127.0.0.1:$pair_port" - \
                "$pair_pid" --scenario echo
        fi
        drive_h2load "$name$(repeat_suffix "$run")" "$@"
    done
}

# The servers' shared settings (docker-compose's, see the header).
server_env=(LOG_FORMAT=json RUST_LOG=info,sqlx=warn RATE_LIMIT_PER_SECOND=1000000
    RATE_LIMIT_BURST=1000000 STREAM_MAX_PER_PRINCIPAL=50000 STREAM_MAX_PER_ADDRESS=100000 \
    STREAM_MAX_PER_PROCESS=100000
    SHUTDOWN_GRACE=5s GRPC_REFLECTION=false)

# stack BACKEND [VAR=VALUE...]: starts user-service (with the extra
# settings), inventory-service (the development catalogue, a million units
# of each product) and order-service on BACKEND; sets users_port,
# users_pid, orders_port, orders_pid.
stack() {
    local backend=$1 users_db inventory_db data="$work/data-$1-$RANDOM"
    shift
    mkdir -p "$data"
    case "$backend" in
        sqlite)
            users_db="sqlite://$data/users.db"
            inventory_db="sqlite://$data/inventory.db"
            orders_db="sqlite://$data/orders.db"
            ;;
        postgres)
            local suffix="${RANDOM}"
            psql_create "bench_users_$suffix" && psql_create "bench_inventory_$suffix" \
                && psql_create "bench_orders_$suffix"
            users_db="${PG_URL%/postgres}/bench_users_$suffix$pg_params"
            inventory_db="${PG_URL%/postgres}/bench_inventory_$suffix$pg_params"
            orders_db="${PG_URL%/postgres}/bench_orders_$suffix$pg_params"
            ;;
    esac
    users_port=$(free_port)
    inventory_port=$(free_port)
    orders_port=$(free_port)
    users_admin_port=$(free_port)
    start user-service shop.user.v1.UserService "$users_port" "${server_env[@]}" \
        GRPC_ADDR="127.0.0.1:$users_port" ADMIN_ADDR="127.0.0.1:$users_admin_port" \
        DATABASE_URL="$users_db" DATA_DIR="$data" BCRYPT_COST=10 \
        CREDENTIAL_CALLS_PER_ADDRESS_PER_MINUTE=1000000 \
        SERVICE_ACCOUNTS_DIR="$data/service-accounts" "$@"
    users_pid=$last_pid
    inventory_admin_port=$(free_port)
    orders_admin_port=$(free_port)
    start inventory-service shop.inventory.v1.InventoryService "$inventory_port" "${server_env[@]}" \
        GRPC_ADDR="127.0.0.1:$inventory_port" ADMIN_ADDR="127.0.0.1:$inventory_admin_port" \
        DATABASE_URL="$inventory_db" DATA_DIR="$data" USER_SERVICE_URL="http://127.0.0.1:$users_port" \
        SEED_CATALOGUE=true SEED_CATALOGUE_UNITS=1000000
    start order-service shop.order.v1.OrderService "$orders_port" "${server_env[@]}" \
        GRPC_ADDR="127.0.0.1:$orders_port" ADMIN_ADDR="127.0.0.1:$orders_admin_port" \
        DATABASE_URL="$orders_db" DATA_DIR="$data" USER_SERVICE_URL="http://127.0.0.1:$users_port" \
        INVENTORY_SERVICE_URL="http://127.0.0.1:$inventory_port"
    orders_pid=$last_pid
}

# Reservation confirmations still owed (stock_outbox rows) in the orders
# database of the running stack ($orders_db).
owed_confirmations() {
    case "$orders_db" in
        sqlite://*)
            python3 -c 'import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM stock_outbox").fetchone()[0])' \
                "${orders_db#sqlite://}" ;;
        *)
            local dir
            dir="$(dirname "$(readlink -f "$(find_pg_bin)/pg_ctl")")"
            as_pg_user "$dir/psql" -tAq "$orders_db" -c "SELECT count(*) FROM stock_outbox" ;;
    esac
}

# CreateOrder answers before its reservation is confirmed (order-service
# confirms in batches after the answer), so that its throughput hides no
# work put off: sample_confirmations runs beside the load (every 0.5 s, the
# confirmations owed), and drain_confirmations, after it, records the most
# owed at once, how many were owed when the load stopped and how long until
# none were (at most 60 s) for scenario $1.
sample_confirmations() {
    while true; do
        owed_confirmations >>"$work/owed-samples" || true
        sleep 0.5
    done
}

drain_confirmations() {
    local name=$1 at_stop owed started waited most
    at_stop=$(owed_confirmations)
    owed=$at_stop
    started=$(date +%s%N)
    while [[ $owed -gt 0 ]] && (( $(date +%s%N) - started < 60000000000 )); do
        sleep 0.1
        owed=$(owed_confirmations)
    done
    waited=$(python3 -c "print(round(($(date +%s%N) - $started) / 1e9, 2))")
    most=$( { sort -n "$work/owed-samples" 2>/dev/null || true; } | tail -n 1)
    rm -f "$work/owed-samples"
    mkdir -p "$work/extra"
    printf '{"most_owed": %s, "owed_at_stop": %s, "owed_after": %s, "seconds_to_drain": %s}\n' \
        "${most:-0}" "$at_stop" "$owed" "$waited" >"$work/extra/confirmations-$name.json"
    log "$name: at most ${most:-0} confirmations owed during the load, $at_stop at its end, $owed after $waited s"
}

# create_order_load NAME: CreateOrder at full load on the running stack as
# scenario NAME, with the confirmations owed sampled beside it (on the load
# generator's CPU when pinned, off the servers') and drained after it.
create_order_load() {
    local name=$1 sampler
    sample_confirmations &
    sampler=$!
    [[ ${#load_cpu[@]} -eq 0 ]] || taskset -p -c "${load_cpu[2]}" "$sampler" >/dev/null
    load "$name" --scenario create-order --users-url "http://127.0.0.1:$users_port" \
        --orders-url "http://127.0.0.1:$orders_port" --concurrency "$concurrency"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    drain_confirmations "$name"
}

psql_create() {
    # psql sits next to the real pg_ctl (PATH may hold only symlinks).
    local dir
    dir="$(dirname "$(readlink -f "$(find_pg_bin)/pg_ctl")")"
    as_pg_user "$dir/psql" -q "$PG_URL" -c "CREATE DATABASE $1" >/dev/null
}

# profile SCENARIO: drives SCENARIO at full load with shop-loadgen on CPU 1
# and samples what runs on CPU 0 (every server of the stack; for `bare`,
# the bare tonic server) with perf for 15 s, then prints the self time
# grouped by where it goes (scripts/lib/profile-groups.py), in shares and
# in µs per call, and per process. On PostgreSQL it also
# prints where PostgreSQL's busy connections spent those 15 s
# (scripts/lib/pg-activity.py), and on both backends each gRPC method's
# mean time as served and as called (scripts/lib/latency-breakdown.py).
profile_hz=999
profile() {
    local scenario=$1 backend=${PROFILE_BACKEND:-sqlite} driver=${PROFILE_DRIVER:-shop-loadgen}
    command -v perf >/dev/null 2>&1 || { log "perf not found (Debian: linux-perf)"; return 1; }
    case "$driver" in
        shop-loadgen) ;;
        h2load)
            [[ $scenario == get-user || $scenario == bare ]] && [[ -z ${PROFILE_RATE:-} ]] \
                || { log "PROFILE_DRIVER=h2load: get-user or bare, closed loop only"; return 1; }
            [[ $have_h2load == 1 ]] || return 1
            ;;
        *) log "PROFILE_DRIVER=$driver: shop-loadgen or h2load"; return 1 ;;
    esac
    if [[ $scenario == bare ]]; then
        # The yardstick itself, driven like the stack: its profile is what
        # the stack's is set against, per call.
        users_port=$(free_port) orders_port=$users_port
        start shop-bare-server - "$users_port" BARE_ADDR="127.0.0.1:$users_port"
        scenario=echo
    else
        if [[ $backend == postgres ]]; then
            start_pg "${pg_start[@]}" || { log "PostgreSQL not available"; return 1; }
        fi
        # PROFILE_USERS_ENV: extra user-service settings, e.g.
        # USER_CACHE_CAPACITY=0 (word-split on purpose).
        # shellcheck disable=SC2086
        stack "$backend" ${PROFILE_USERS_ENV:-}
    fi
    log "profiling $scenario on $backend ${PROFILE_USERS_ENV:-} (driven by $driver)"
    if [[ $driver == h2load ]]; then
        # The driver of the throughput targets: one request (one caller's
        # token) sent by every stream, as drive_h2load does.
        "$bin/shop-loadgen" --write-request "$work/request-profile" --scenario "$scenario" \
            --users-url "http://127.0.0.1:$users_port" >&2
        python3 scripts/lib/h2load.py "http://127.0.0.1:$users_port" "$work/request-profile" \
            "$work/profile-h2load.json" 35s 0s "$h2load_connections" "$h2load_streams" -- "${load_cpu[@]}" \
            >"$work/profile-load.txt" 2>&1 &
    else
        local drive=(--concurrency "$concurrency")
        [[ -z ${PROFILE_RATE:-} ]] || drive=(--rate "$PROFILE_RATE")
        "${load_cpu[@]}" "$bin/shop-loadgen" --no-progress --duration 35s --warmup 0s \
            --virtual-users "$users" "${drive[@]}" --scenario "$scenario" \
            --users-url "http://127.0.0.1:$users_port" --orders-url "http://127.0.0.1:$orders_port" \
            >"$work/profile-load.txt" 2>&1 &
    fi
    local load_pid=$!
    sleep 10
    local where=(-a) activity_pid=
    [[ ${#server_cpu[@]} -eq 0 ]] || where=(-C 0)
    if [[ $backend == postgres ]]; then
        python3 scripts/lib/pg-activity.py \
            "$(dirname "$(readlink -f "$(find_pg_bin)/pg_ctl")")/psql" "$PG_URL" 15 \
            >"$work/pg-activity.txt" 2>&1 &
        activity_pid=$!
    fi
    # The bare server has no metrics: no per-method breakdown for it.
    local metrics=()
    [[ $scenario == echo ]] || metrics=(users="http://127.0.0.1:$users_admin_port/metrics"
        inventory="http://127.0.0.1:$inventory_admin_port/metrics"
        orders="http://127.0.0.1:$orders_admin_port/metrics")
    [[ ${#metrics[@]} -eq 0 ]] \
        || python3 scripts/lib/latency-breakdown.py --save "$work/latency.json" "${metrics[@]}" || true
    perf record -q -F "$profile_hz" -e cpu-clock "${where[@]}" -o "$work/perf.data" -- sleep 15 2>/dev/null
    [[ ${#metrics[@]} -eq 0 ]] \
        || python3 scripts/lib/latency-breakdown.py --since "$work/latency.json" "${metrics[@]}" || true
    wait "$load_pid" || true
    [[ -z $activity_pid ]] || { wait "$activity_pid" || true; cat "$work/pg-activity.txt"; }
    grep -E "req/s" "$work/profile-load.txt" >&2 || true
    perf report -q -n -i "$work/perf.data" --no-children --sort comm,dso,sym --stdio 2>/dev/null \
        >"$work/perf.txt"
    # PROFILE_SAVE=FILE keeps the per-symbol report (process, library,
    # symbol) for a closer look than the groups below.
    [[ -z ${PROFILE_SAVE:-} ]] || cp "$work/perf.txt" "$PROFILE_SAVE"
    # Calls in the 15 s sampled, from the generator's rate over its run
    # (closed loop: steady), so that each group is also µs per call.
    local calls
    calls=$(python3 -c 'import json, os, re, sys
if os.path.exists(sys.argv[2]):
    rate = json.load(open(sys.argv[2]))["throughput_rps"]
    print(f"h2load: {rate:.0f} req/s", file=sys.stderr)
else:
    m = re.search(r"requests in [\d.]+ s, ([\d.]+) req/s", open(sys.argv[1]).read())
    rate = float(m[1]) if m else 0
print(round(rate * 15))' "$work/profile-load.txt" "$work/profile-h2load.json")
    python3 scripts/lib/profile-groups.py --hz "$profile_hz" --calls "$calls" "$work/perf.txt"
    stop_servers
}

# instructions SCENARIO: user-service (get-user: cached GetUser on SQLite,
# as the first throughput target) or the bare server (bare) under
# valgrind's callgrind, driven by h2load (4 connections, concurrency/4
# streams each: the targets' shape before they moved to the bare server's
# best, kept so that counts compare across builds; one caller's request);
# counts the
# instructions of INSTRUCTIONS_CALLS calls after a warm-up of a tenth as
# many, and prints them per call with the functions that take them
# (scripts/lib/callgrind-summary.py). user-service's /metrics is not read
# (its process collector crashes under valgrind, in rustix's auxv code):
# its access lines say whether every call was answered OK, and if one was
# not, nothing is printed. SAVE_AS, when given, keeps callgrind's own output
# as that file.
instructions() {
    local scenario=$1 save_as=${2:-} calls=${INSTRUCTIONS_CALLS:-20000} out="$work/callgrind-$RANDOM.out" pid
    local asked=$scenario
    [[ $calls =~ ^[1-9][0-9]*$ ]] || { log "INSTRUCTIONS_CALLS=$calls: a count"; return 1; }
    [[ -x $bin/shop-bare-server || $scenario != bare ]] || { log "$bin/shop-bare-server missing"; return 1; }
    [[ $have_h2load == 1 ]] || return 1
    if ! command -v valgrind >/dev/null 2>&1; then
        [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1 \
            || { log "valgrind not found (Debian: valgrind)"; return 1; }
        log "valgrind not found; installing it from Debian packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >&2 \
            || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -qq --no-install-recommends valgrind >&2; } || return 1
    fi
    # Counting starts switched off: start-up and the load account's bcrypt
    # are not counted, only the calls between the two switches below.
    server_wrap=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$out")
    if [[ $scenario == bare ]]; then
        wrapped=shop-bare-server
        users_port=$(free_port)
        start shop-bare-server - "$users_port" BARE_ADDR="127.0.0.1:$users_port"
        pid=$last_pid scenario=echo
    else
        wrapped=user-service
        rm -f "$work/user-service.log"
        # shellcheck disable=SC2086
        stack sqlite ${PROFILE_USERS_ENV:-}
        pid=$users_pid
    fi
    wrapped=
    log "counting the instructions of $calls calls ($asked, $bin)"
    "$bin/shop-loadgen" --write-request "$work/request-count" --scenario "$scenario" \
        --users-url "http://127.0.0.1:$users_port" >&2
    local drive=(python3 scripts/lib/h2load.py "http://127.0.0.1:$users_port" "$work/request-count")
    local shape=(0s 0s 4 $((concurrency / 4)))
    local warm=$((calls / 10 + 1))
    "${drive[@]}" "$work/count-warm.json" "${shape[@]}" --requests="$warm" -- "${load_cpu[@]}" >/dev/null 2>&1
    callgrind_control -i on "$pid" >/dev/null 2>&1
    "${drive[@]}" "$work/count.json" "${shape[@]}" --requests="$calls" -- "${load_cpu[@]}" \
        2>&1 | grep -E "^h2load:" >&2
    callgrind_control -i off "$pid" >/dev/null 2>&1
    stop_servers
    if [[ $scenario != echo ]]; then
        local answered
        answered=$(python3 - "$work/user-service.log" <<'PY'
import json, sys
codes = {}
for line in open(sys.argv[1]):
    if '"GetUser"' in line and line.startswith("{"):
        entry = json.loads(line)
        if entry.get("target") == "access":
            codes[entry["code"]] = codes.get(entry["code"], 0) + 1
print(" ".join(f"{code}={n}" for code, n in sorted(codes.items())))
PY
)
        [[ $answered == "OK=$((warm + calls))" ]] \
            || { log "GetUser answered $answered of $((warm + calls)) calls: nothing counted"; return 1; }
    fi
    [[ -z $save_as ]] || { cp "$out" "$save_as" && log "callgrind's output: $save_as"; }
    python3 scripts/lib/callgrind-summary.py "$calls" "$out"
}

# commits NAME: the group commit's counts so far in inventory-service and
# order-service (shop_db_* from their /metrics), to $work/NAME.commits.
commits() {
    local port
    for port in "$inventory_admin_port" "$orders_admin_port"; do
        python3 - "http://127.0.0.1:$port/metrics" <<'PY' || true
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
values = {}
for line in text.splitlines():
    for name in ("shop_db_commits_total", "shop_db_committed_transactions_total"):
        if line.startswith(name + "{") or line.startswith(name + " "):
            values[name] = values.get(name, 0) + float(line.rsplit(" ", 1)[1])
print(f"{values.get('shop_db_commits_total', 0):.0f} {values.get('shop_db_committed_transactions_total', 0):.0f}")
PY
    done >"$work/$1.commits"
}

# ab: alternating runs of two builds (see the header).
ab() {
    if [[ $ab_backend == postgres ]]; then
        start_pg "${pg_start[@]}" || { log "PostgreSQL not available"; return 1; }
    fi
    local round side drive=(--concurrency "$concurrency") shared_env=("${server_env[@]}")
    local side_env=("${ab_env%%,*}" "${ab_env#*,}")
    [[ -z $ab_rate ]] || drive=(--rate "$ab_rate")
    [[ $ab_driver != h2load || $have_h2load == 1 ]] || { log "--ab-driver=h2load: h2load not available"; return 1; }
    for round in $(seq 1 "$ab_rounds"); do
        for side in 0 1; do
            bin="${ab_dirs[$side]}"
            # Word-split on purpose: VAR=VALUE settings.
            # shellcheck disable=SC2206
            server_env=("${shared_env[@]}" ${side_env[$side]})
            stack "$ab_backend"
            if [[ -n $ab_age ]]; then
                duration=$ab_age warmup=0s load "ab-age-$side-$round" --scenario create-order \
                    --concurrency "$concurrency" --users-url "http://127.0.0.1:$users_port" \
                    --orders-url "http://127.0.0.1:$orders_port"
            fi
            [[ $ab_scenario != watch-idle ]] \
                || drive=(--watch-streams "$streams" --server-pid "$orders_pid")
            if [[ $ab_driver == h2load ]]; then
                drive_h2load "ab-$side-$round" "http://127.0.0.1:$users_port" \
                    "http://127.0.0.1:$users_admin_port" "$users_pid" --scenario get-user
            else
                load "ab-$side-$round" --scenario "$ab_scenario" "${drive[@]}" \
                    --users-url "http://127.0.0.1:$users_port" --orders-url "http://127.0.0.1:$orders_port" \
                    --inventory-url "http://127.0.0.1:$inventory_port"
            fi
            commits "ab-$side-$round"
            stop_servers
        done
    done
    server_env=("${shared_env[@]}")
    python3 - "$work" "$ab_rounds" "$ab_rate" "$ab_scenario" "${ab_dirs[@]}" "${side_env[@]}" <<'PY'
import json, statistics, sys
work, rounds, rate, scenario = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
dirs, envs = sys.argv[5:7], sys.argv[7:9]
for side, name in enumerate("AB"):
    reports = [json.load(open(f"{work}/ab-{side}-{r}.json")) for r in range(1, rounds + 1)]
    label = f"{name} {dirs[side]} {envs[side]}".rstrip()
    # (the mix holds a few streams too, and reports them: not this case)
    if scenario == "watch-idle":
        # Idle streams: what each cost order-service in resident memory,
        # and whether every one got its order's change.
        per = [r["watch"]["rss_per_stream_bytes"] for r in reports]
        known = [x for x in per if x is not None]
        print(f"{label}: resident bytes per idle stream "
              + ", ".join("unknown" if x is None else f"{x:.0f}" for x in per)
              + (f"; median {statistics.median(known):.0f}" if known else "") + " ("
              + ", ".join(f"{r['watch']['updated']}/{r['watch']['requested']} updated" for r in reports)
              + ")")
        continue
    if not rate:
        runs = [r["throughput_rps"] for r in reports]
        print(f"{label}: " + ", ".join(f"{x:.0f}" for x in runs)
              + f" req/s; median {statistics.median(runs):.0f}")
        if reports[0].get("server"):
            # Driven by h2load: what user-service and h2load itself used
            # (over the whole run, its warm-up included).
            print("    user-service CPU " + ", ".join(f"{r['server']['cpu_cores']:.2f}" for r in reports)
                  + "; h2load CPU " + ", ".join(
                      f"{r['generator']['cpu_cores']:.2f}" + (" (saturated)" if r["generator"]["saturated"] else "")
                      for r in reports))
        continue
    # Open loop: the same rate on both sides, so compare what it cost and
    # how long it took.
    cpu_us = [sum(r["servers_cpu"].values()) / r["throughput_rps"] * 1e6 for r in reports]
    print(f"{label}: services' CPU per request " + ", ".join(f"{x:.0f}" for x in cpu_us)
          + f" us; median {statistics.median(cpu_us):.0f}")
    for r in reports:
        methods = ", ".join(f"{m} p50 {v['latency_ms']['p50']:.2f} p99 {v['latency_ms']['p99']:.2f}"
                            for m, v in sorted(r["methods"].items()))
        print(f"    {r['throughput_rps']:.0f} req/s, CPU 0 busy {r['cpus']['0']['busy']:.2f}, "
              f"sent late p99 {r['generator']['send_lag_ms']['p99']:.2f} ms: {methods}")
    if len(reports[0]["methods"]) > 1:
        print("    median p99 ms: " + ", ".join(
            f"{m} {statistics.median(r['methods'][m]['latency_ms']['p99'] for r in reports):.2f}"
            for m in sorted(reports[0]["methods"])))
for side, name in enumerate("AB"):
    # Commits (disk flushes) and the transactions they held, in
    # inventory-service and order-service, over each whole run.
    for r in range(1, rounds + 1):
        try:
            counts = [line.split() for line in open(f"{work}/ab-{side}-{r}.commits")]
        except OSError:
            continue
        print(f"{name} run {r}: commits / transactions " + ", ".join(f"{c} / {t}" for c, t in counts)
              + " (inventory, orders)")
PY
}

if [[ -n $instructions ]]; then
    [[ $instructions =~ ^(get-user|bare)$ ]] \
        || { echo "bench.sh: --instructions=$instructions: get-user or bare" >&2; exit 2; }
    side=0
    for dir in "${ab_dirs[@]:-$bin}"; do
        bin=$dir side=$((side + 1))
        save_as=${INSTRUCTIONS_SAVE:-}
        [[ -z $save_as || -z $ab ]] || save_as+=".$side"
        instructions "$instructions" "$save_as"
    done
    exit
fi

if [[ -n $ab ]]; then
    ab
    exit
fi

if [[ -n $profile ]]; then
    case "$profile" in
        get-user|create-order|mixed|bare) profile "$profile"; exit ;;
        *) echo "bench.sh: --profile=$profile: get-user, create-order, mixed or bare" >&2; exit 2 ;;
    esac
fi

# --- the yardstick -----------------------------------------------------------

bare_port=$(free_port)
# The bare server has no health service: wait for its port.
start shop-bare-server - "$bare_port" BARE_ADDR="127.0.0.1:$bare_port"
load bare --scenario echo --users-url "http://127.0.0.1:$bare_port" --concurrency "$concurrency"
drive_h2load_runs bare-h2load "http://127.0.0.1:$bare_port" - "$last_pid" --scenario echo
stop_servers

# The paired yardstick: a second bare server, left running beside the
# stack (idle but for its own runs, it takes nothing from the stack's),
# which h2load drives right before each run of a throughput target as it
# drove bare-h2load (drive_h2load_runs). The host's speed moves by a tenth
# and more within hours, and a ratio of two runs taken fifteen minutes
# apart can carry such a move (docs/performance.md, "A yardstick beside
# each target"); bench-report.py sets each h2load target's runs against
# these.
if [[ $have_h2load == 1 ]]; then
    pair_port=$(free_port)
    start shop-bare-server - "$pair_port" BARE_ADDR="127.0.0.1:$pair_port"
    # Not one of the stack's servers: stop_servers leaves it be.
    pair_pid=$last_pid
    unset 'pids[-1]' 'names[-1]'
fi

# --- the stack -------------------------------------------------------------

backends=(sqlite)
if start_pg "${pg_start[@]}"; then
    backends+=(postgres)
else
    log "PostgreSQL not available: PostgreSQL scenarios skipped"
fi

for backend in "${backends[@]}"; do
    stack "$backend"
    urls=(--users-url "http://127.0.0.1:$users_port" --orders-url "http://127.0.0.1:$orders_port")
    load "get-user-$backend" --scenario get-user "${urls[@]}" --concurrency "$concurrency"
    if [[ $backend == sqlite ]]; then
        # GetUser in open loop at half the peak just measured: right after
        # it, so that a host that slows down during the run does not make
        # "half" a busier core than it was.
        peak=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["throughput_rps"])' \
            "$work/get-user-sqlite.json")
        get_user_half=$(python3 -c "print(max(1.0, round($peak / 2, 1)))")
        for run in $(seq 1 "$latency_runs"); do
            load "get-user-half-sqlite$(repeat_suffix "$run")" --scenario get-user "${urls[@]}" \
                --rate "$get_user_half"
        done
    fi
    drive_h2load_runs "get-user-$backend-h2load" "http://127.0.0.1:$users_port" \
        "http://127.0.0.1:$users_admin_port" "$users_pid" --scenario get-user
    create_order_load "create-order-$backend"
    if [[ $backend == sqlite ]]; then
        # The same GetUser over gRPC-Web and REST (h2load, h2c), and our
        # messages' sizes in protobuf and JSON.
        PROTOCOL=grpc-web drive_h2load get-user-sqlite-grpc-web-h2load "http://127.0.0.1:$users_port" \
            "http://127.0.0.1:$users_admin_port" "$users_pid" --scenario get-user
        PROTOCOL=http drive_h2load get-user-sqlite-rest-h2load "http://127.0.0.1:$users_port" \
            "http://127.0.0.1:$users_admin_port" "$users_pid" --scenario get-user
        mkdir -p "$work/extra"
        python3 scripts/lib/payload-sizes.py "http://127.0.0.1:$users_port" \
            "http://127.0.0.1:$orders_port" "http://127.0.0.1:$inventory_port" \
            "$work/extra/payload-sizes.json"
        # Reads alone (each account places one order in the warm-up, then
        # only reads): the baseline of the mixed scenario's read latency.
        load get-order-sqlite --scenario get-order "${urls[@]}" --concurrency "$concurrency"
        load mixed --scenario mixed "${urls[@]}" --concurrency "$concurrency"
        # The mix in open loop at half its peak, then its reads alone at the
        # read rate that had: what writes do to reads when neither run
        # saturates the core (like for like: the target's measure).
        peak=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["throughput_rps"])' \
            "$work/mixed.json")
        half=$(python3 -c "print(max(1.0, round($peak / 2, 1)))")
        for run in $(seq 1 "$latency_runs"); do
            load "mixed-half$(repeat_suffix "$run")" --scenario mixed "${urls[@]}" --rate "$half"
            load "mixed-reads-half$(repeat_suffix "$run")" --scenario mixed-reads "${urls[@]}" \
                --rate "$(python3 -c "print(max(1.0, round($half * 0.7, 1)))")"
        done
        load watch-idle --scenario watch-idle "${urls[@]}" --watch-streams "$streams" \
            --server-pid "$orders_pid"
    fi
    stop_servers
    if [[ $backend == sqlite ]]; then
        # Bare tonic at get-user-half-sqlite's rate: the transport's own
        # p99 / p50 at that rate, beside the target's.
        bare_port=$(free_port)
        start shop-bare-server - "$bare_port" BARE_ADDR="127.0.0.1:$bare_port"
        for run in $(seq 1 "$latency_runs"); do
            load "bare-half$(repeat_suffix "$run")" --scenario echo \
                --users-url "http://127.0.0.1:$bare_port" --rate "$get_user_half"
        done
        stop_servers
    fi
    # Every GetUser reads the database: the users cache off.
    stack "$backend" USER_CACHE_CAPACITY=0
    urls=(--users-url "http://127.0.0.1:$users_port" --orders-url "http://127.0.0.1:$orders_port")
    load "get-user-uncached-$backend" --scenario get-user "${urls[@]}" --concurrency "$concurrency"
    drive_h2load_runs "get-user-uncached-$backend-h2load" "http://127.0.0.1:$users_port" \
        "http://127.0.0.1:$users_admin_port" "$users_pid" --scenario get-user
    stop_servers
done

# --- from 1 to 2 server cores ------------------------------------------------
# The bare server and cached GetUser again, with the server allowed both CPUs
# (h2load, one thread, shares them): the report sets req/s against the CPU
# the server used, beside the one-core runs above. And CreateOrder on each
# backend, with the three services allowed both CPUs.

if [[ ${#server_cpu[@]} -gt 0 ]]; then
    pinned_server=("${server_cpu[@]}") pinned_load=("${load_cpu[@]}")
    server_cpu=() load_cpu=()
    bare_port=$(free_port)
    start shop-bare-server - "$bare_port" BARE_ADDR="127.0.0.1:$bare_port"
    drive_h2load bare-h2load-2cpu "http://127.0.0.1:$bare_port" - "$last_pid" --scenario echo
    stop_servers
    stack sqlite
    drive_h2load get-user-sqlite-h2load-2cpu "http://127.0.0.1:$users_port" \
        "http://127.0.0.1:$users_admin_port" "$users_pid" --scenario get-user
    stop_servers
    # CreateOrder's generator needs little CPU (0.05 to 0.15): what it
    # gains here is the three services no longer taking turns on one core.
    for backend in "${backends[@]}"; do
        stack "$backend"
        create_order_load "create-order-$backend-2cpu"
        stop_servers
    done
    server_cpu=("${pinned_server[@]}") load_cpu=("${pinned_load[@]}")
fi

# --- instructions per call ---------------------------------------------------
# Cached GetUser and the bare server counted under callgrind (see
# instructions()): the work per call behind the ratios above, in a measure
# the host hardly moves. Not in --quick: under valgrind a server runs some
# fifty times slower (about a minute each).

if [[ $quick == 0 ]]; then
    mkdir -p "$work/extra"
    for scenario in get-user bare; do
        instructions "$scenario" >"$work/extra/instructions-$scenario.txt" \
            || log "the instructions of $scenario were not counted"
        head -1 "$work/extra/instructions-$scenario.txt" >&2 || true
    done
fi

# --- results ---------------------------------------------------------------

mkdir -p bench/results
sha="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
name="$(date -u +%Y-%m-%d)-$sha$([[ $quick == 1 ]] && echo -quick || true)${tag:+-$tag}"
python3 scripts/bench-report.py "$work" "bench/results/$name" "$quick"
log "results: bench/results/$name.json and bench/results/$name.md"
cat "bench/results/$name.md"
