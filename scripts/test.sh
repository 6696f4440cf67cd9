#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, service tests, the
# repository suite on SQLite and PostgreSQL, and the end-to-end tests.
#
# PostgreSQL: when its binaries are installed (or can be installed from
# Debian packages because this runs as root with apt-get), the script starts
# a throwaway cluster as an unprivileged user on a free port, points the
# tests at it through SHOP_TEST_POSTGRES_URL, and removes it on exit, even
# on failure. Without PostgreSQL it says loudly that the PostgreSQL suite
# was skipped; with REQUIRE_POSTGRES=1 that is a failure.
#
# With no arguments it runs `cargo test --workspace`; arguments replace
# that, e.g. `scripts/test.sh -p shop-testkit`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
REQUIRE_POSTGRES="${REQUIRE_POSTGRES:-0}"
export REQUIRE_POSTGRES

log() { printf '\033[1mtest.sh:\033[0m %s\n' "$*" >&2; }
banner() { printf '\n\033[1;33m%s\n%s\n%s\033[0m\n\n' "================================================================" "$*" "================================================================" >&2; }

# --- PostgreSQL -------------------------------------------------------------

find_pg_bin() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

install_pg() {
    [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1 || return 1
    log "PostgreSQL not found; installing it from Debian packages"
    # Only the binaries: no default cluster, no service started.
    mkdir -p /etc/postgresql-common
    if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
        echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends postgresql >&2
}

free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

pg_dir=""
pg_bin=""
as_pg_user() {
    # PostgreSQL refuses to run as root: use `nobody` then.
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u nobody -- "$@"
    else
        "$@"
    fi
}

stop_pg() {
    if [[ -n "$pg_dir" && -d "$pg_dir" ]]; then
        as_pg_user "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$pg_dir"
        log "throwaway PostgreSQL cluster removed"
    fi
}
trap stop_pg EXIT

start_pg() {
    pg_bin="$(find_pg_bin)" || { install_pg && pg_bin="$(find_pg_bin)"; } || return 1
    local port
    port="$(free_port)" || return 1
    pg_dir="$(mktemp -d /tmp/shop-test-pg.XXXXXX)"
    chmod 755 "$pg_dir"
    if [[ "$(id -u)" == 0 ]]; then chown nobody "$pg_dir"; fi
    log "starting a throwaway PostgreSQL ($("$pg_bin/postgres" --version)) on 127.0.0.1:$port"
    as_pg_user "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 --no-locale \
        >"$pg_dir/initdb.log" 2>&1 || { cat "$pg_dir/initdb.log" >&2; return 1; }
    # Durability settings off: this cluster lives for one test run.
    as_pg_user "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
        -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null || { cat "$pg_dir/server.log" >&2; return 1; }
    export SHOP_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

if [[ -n "${SHOP_TEST_POSTGRES_URL:-}" ]]; then
    log "using the PostgreSQL server in SHOP_TEST_POSTGRES_URL"
    have_pg=1
elif start_pg; then
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

# --- openssl (scripts/gen-certs.sh, used by the TLS end-to-end tests) -------

if ! command -v openssl >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing openssl from Debian packages (for scripts/gen-certs.sh)"
        apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends openssl >&2
    else
        banner "FAIL: the TLS tests need openssl (scripts/gen-certs.sh); install it."
        exit 1
    fi
fi

# --- Tests ------------------------------------------------------------------

# The end-to-end tests (tests/) start the real binaries: build them first.
log "cargo build --workspace --bins"
cargo build --workspace --bins --locked
if [[ $# -gt 0 ]]; then
    log "cargo test $*"
    cargo test --locked "$@"
else
    log "cargo test --workspace"
    cargo test --workspace --locked
fi

if [[ "$have_pg" == 0 ]]; then
    banner "WARNING: tests passed, but the PostgreSQL suite was SKIPPED (no PostgreSQL)."
fi
