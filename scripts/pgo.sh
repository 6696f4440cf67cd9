#!/usr/bin/env bash
# Release binaries optimised with a profile of the shop's own hot paths
# (profile-guided optimisation, on top of the release profile's
# whole-program LTO): the compiler lays out and inlines the code the calls
# run, which is what a request through the stack mostly waits on (the
# instruction cache; docs/performance.md, "Built with a profile").
#
#   scripts/pgo.sh
#
# builds the services, shop-loadgen, shop-bare-server and shop-health-probe
# instrumented, trains them (scripts/bench.sh --quick on them: every
# scenario, PostgreSQL too when it is there), then builds them with the
# profile and copies them to TARGET/pgo/bin, where TARGET is cargo's target
# directory (CARGO_TARGET_DIR or target/). Then, for instance:
#
#   scripts/bench.sh --bin=TARGET/pgo/bin --tag=pgo     # a full run of it
#   scripts/bench.sh --ab=DIR,TARGET/pgo/bin --scenario=get-user --backend=sqlite
#                                # against a plain release build in DIR
#
# For images, copy a service's binary and shop-health-probe from there to
# deploy/prebuilt/ and build with --build-arg BINARIES=prebuilt
# (deploy/Dockerfile).
#
# The bare server is built and trained like the services, so ratios to it
# compare like with like. Each build is a full release build in its own
# directory (TARGET/pgo/instrumented, TARGET/pgo/optimized), so neither
# rebuilds target/release.
#
# The profile is a training run's: after a change to the code, run this
# again (a stale profile still builds, it just helps the changed code less).
# Needs llvm-profdata, from the rustup component llvm-tools (added when
# missing and rustup can).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

for arg in "$@"; do
    case "$arg" in
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "pgo.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

log() { printf '\033[1mpgo.sh:\033[0m %s\n' "$*" >&2; }

host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x $profdata ]]; then
    log "llvm-profdata missing: rustup component add llvm-tools"
    command -v rustup >/dev/null 2>&1 && rustup component add llvm-tools >&2 || true
    [[ -x $profdata ]] || { echo "pgo.sh: no $profdata (the rustup component llvm-tools)" >&2; exit 1; }
fi

target="$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
pgo="$target/pgo"
# The instrumented binaries write their counts here: the path is compiled
# in, so that servers started with a cleared environment write there too.
raw="$pgo/profiles"
mkdir -p "$raw"
# Built for the host triple named explicitly: the flags then apply to our
# code and its dependencies only, not to build scripts and proc macros.
instrumented=(env CARGO_TARGET_DIR="$pgo/instrumented"
    RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$raw")
optimized=(env CARGO_TARGET_DIR="$pgo/optimized"
    RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$pgo/shop.profdata")

# merge OUT: the training run's counts as one profile.
merge() {
    shopt -s nullglob
    local counts=("$raw"/*.profraw)
    shopt -u nullglob
    ((${#counts[@]} > 0)) || { echo "pgo.sh: the training run wrote no profile to $raw" >&2; exit 1; }
    "$profdata" merge -o "$1" "${counts[@]}"
    log "profile: $1 (merged from ${#counts[@]} raw profiles)"
}

rm -f "$raw"/*.profraw
packages=(-p user-service -p inventory-service -p order-service -p shop-loadgen -p shop-health-probe)
binaries=(user-service inventory-service order-service shop-loadgen shop-bare-server shop-health-probe)
log "instrumented build ($pgo/instrumented)"
"${instrumented[@]}" cargo build --release --locked --target "$host" "${packages[@]}"
log "training: scripts/bench.sh --quick on the instrumented build"
scripts/bench.sh --quick --bin="$pgo/instrumented/$host/release" --tag=pgo-training >&2
# Those results describe instrumented binaries: not kept.
rm -f bench/results/*-pgo-training.json bench/results/*-pgo-training.md
merge "$pgo/shop.profdata"
log "optimised build ($pgo/optimized)"
"${optimized[@]}" cargo build --release --locked --target "$host" "${packages[@]}"
mkdir -p "$pgo/bin"
for name in "${binaries[@]}"; do
    cp "$pgo/optimized/$host/release/$name" "$pgo/bin/"
done
log "built with the profile: $pgo/bin (${binaries[*]})"
