#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ on the stable toolchain (libFuzzer,
# no sanitizer), each for FUZZ_SECONDS (default 20) from the committed
# corpus in fuzz/corpus/<target>. New inputs go to a scratch directory, so
# a run never changes the repository; a crash, a panic, a hang past 20 s
# or a failed assertion fails the run and leaves the input that caused it
# in fuzz/artifacts/<target>/ (see docs/security.md for what to do then).
#
#   scripts/fuzz.sh                          every target (CI)
#   FUZZ_SECONDS=600 scripts/fuzz.sh handlers   one target, longer
#
# cargo-fuzz is installed into .tools/ on first use; the instrumented
# build goes to $CARGO_TARGET_DIR/fuzz (default target/fuzz).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
log() { printf '\033[1mfuzz.sh:\033[0m %s\n' "$*" >&2; }

CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
tools="$root/.tools"
if [[ "$("$tools/bin/cargo-fuzz" --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools"
    cargo install --quiet --locked --root "$tools" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
export PATH="$tools/bin:$PATH"

seconds="${FUZZ_SECONDS:-20}"
target_dir="${CARGO_TARGET_DIR:-$root/target}/fuzz"
cd fuzz
if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
log "building ${targets[*]} (instrumented, release)"
# cargo fuzz has no --locked: a fuzz/Cargo.lock behind the workspace's
# dependencies would be re-resolved, building versions nothing else here
# was tested with, and leave the checkout changed.
lock_before="$(cksum <Cargo.lock)"
cargo fuzz build --sanitizer none --target-dir "$target_dir"
if [[ "$(cksum <Cargo.lock)" != "$lock_before" ]]; then
    log "fuzz/Cargo.lock was behind the workspace's dependencies and the build updated it: commit it"
    exit 1
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "corpus/$target"
    if cargo fuzz run --sanitizer none --target-dir "$target_dir" "$target" \
        "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
        >"$scratch/$target.log" 2>&1; then
        log "$target: $(grep -E '^Done [0-9]+ runs' "$scratch/$target.log" | tail -1), no failure"
    else
        log "$target FAILED; the end of its log:"
        tail -40 "$scratch/$target.log" >&2
        failed+=("$target")
    fi
done
if ((${#failed[@]})); then
    log "failed: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
