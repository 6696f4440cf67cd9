# A throwaway PostgreSQL cluster for scripts/test.sh and scripts/bench.sh
# (sourced; the caller defines `log`). PostgreSQL refuses to run as root, so
# as root the cluster runs as `nobody`. When its binaries are missing and
# this runs as root with apt-get, they are installed from Debian packages.
#
#   start_pg [durable] [tls]
#                        starts a cluster on a free port and sets PG_URL;
#                        without `durable`, fsync and synchronous commit are
#                        off (tests); with it, PostgreSQL's defaults (bench).
#                        With `tls` the server offers TLS with a certificate
#                        for 127.0.0.1 and localhost from scripts/gen-certs.sh
#                        (needs openssl), whose CA it names in PG_CA; a URL
#                        without sslmode (prefer) then uses TLS.
#                        With PG_CPU set (a CPU list, as taskset takes it)
#                        the server and every backend run on those CPUs.
#   stop_pg              stops it and removes its directory (call on EXIT)
#   free_port            prints a free port below the ephemeral range

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

# A port below the ephemeral range, as bench.sh's servers get theirs: one
# from the ephemeral range may be taken by an outgoing connection before
# PostgreSQL binds it.
free_port() {
    python3 "$(dirname "${BASH_SOURCE[0]}")/free-ports.py" 1
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
start_pg() {
    pg_bin="$(find_pg_bin)" || { install_pg && pg_bin="$(find_pg_bin)"; } || return 1
    local port
    port="$(free_port)" || return 1
    pg_dir="$(mktemp -d /tmp/shop-pg.XXXXXX)"
    chmod 755 "$pg_dir"
    if [[ "$(id -u)" == 0 ]]; then chown nobody "$pg_dir"; fi
    log "starting a throwaway PostgreSQL ($("$pg_bin/postgres" --version)) on 127.0.0.1:$port"
    as_pg_user "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 --no-locale \
        >"$pg_dir/initdb.log" 2>&1 || { cat "$pg_dir/initdb.log" >&2; return 1; }
    local options="-p $port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=300"
    if [[ " $* " != *" durable "* ]]; then
        # Durability off: this cluster lives for one test run.
        options+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    fi
    PG_CA=""
    if [[ " $* " == *" tls "* ]]; then
        local certs="$pg_dir/certs"
        bash "$(dirname "${BASH_SOURCE[0]}")/../gen-certs.sh" "$certs" postgres >/dev/null || return 1
        chmod 755 "$certs"
        chmod 644 "$certs/ca.pem" "$certs/postgres.pem"
        # The server refuses a key others can read; it must own it (or root).
        if [[ "$(id -u)" == 0 ]]; then chown nobody "$certs/postgres-key.pem"; fi
        options+=" -c ssl=on -c ssl_cert_file=$certs/postgres.pem -c ssl_key_file=$certs/postgres-key.pem"
        PG_CA="$certs/ca.pem"
    fi
    export PG_CA
    # Backends are forked from the server, so they keep its CPUs.
    local pin=()
    [[ -z ${PG_CPU:-} ]] || pin=(taskset -c "$PG_CPU")
    as_pg_user "${pin[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
        -o "$options" start >/dev/null || { cat "$pg_dir/server.log" >&2; return 1; }
    PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    export PG_URL
}

