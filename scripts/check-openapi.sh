#!/usr/bin/env bash
# Checks the REST surface against its OpenAPI documents, on the live stack:
#
#   1. starts devstack (SQLite, every service, its own ports and data);
#   2. fetches GET /openapi.json from each service's gRPC port (generated
#      from the protos at start-up, never written by hand) and validates
#      it with openapi-spec-validator (OpenAPI 3.0 schema and semantics);
#   3. runs schemathesis against each document with an admin's token:
#      generated requests for every operation; every answer must match its
#      documented schema and status, and no request may end in a 5xx.
#
#   scripts/check-openapi.sh [--validate-only]   # --validate-only: 1 and 2
#
# openapi-spec-validator and schemathesis come from PyPI into .tools/venv
# on first use. SCHEMATHESIS_EXAMPLES (default 25) is the number of
# generated requests per operation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

OPENAPI_SPEC_VALIDATOR_VERSION=0.9.0
SCHEMATHESIS_VERSION=4.32.5
examples="${SCHEMATHESIS_EXAMPLES:-25}"

log() { printf '\033[1mcheck-openapi.sh:\033[0m %s\n' "$*" >&2; }

validate_only=0
[[ ${1:-} == --validate-only ]] && validate_only=1

venv="$root/.tools/venv"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
installed="$("$venv/bin/pip" show openapi-spec-validator schemathesis 2>/dev/null || true)"
if ! grep -qx "Version: $OPENAPI_SPEC_VALIDATOR_VERSION" <<<"$installed" \
    || ! grep -qx "Version: $SCHEMATHESIS_VERSION" <<<"$installed"; then
    log "installing openapi-spec-validator $OPENAPI_SPEC_VALIDATOR_VERSION and schemathesis $SCHEMATHESIS_VERSION into .tools/venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION" "schemathesis==$SCHEMATHESIS_VERSION"
fi

# The same build as scripts/test.sh's (nothing is rebuilt after it).
log "cargo build --workspace --all-targets (devstack)"
cargo build --locked --workspace --all-targets
bin="$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug"

work="$(mktemp -d /tmp/shop-openapi.XXXXXX)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

failed() {
    log "devstack's last log lines:"
    tail -n 30 "$work/devstack.log" | cut -c1-400 >&2
    exit 1
}

log "starting devstack"
# shellcheck source=lib/devstack.sh
source "$root/scripts/lib/devstack.sh"
start_devstack "$bin" "$work"
pids+=("$devstack_pid")

for service in user-service order-service inventory-service; do
    url="http://127.0.0.1:${grpc[$service]}/openapi.json"
    log "$service: validating $url"
    curl -fsS "$url" -o "$work/$service.json" || failed
    "$venv/bin/openapi-spec-validator" "$work/$service.json" >&2 || failed
    python3 - "$work/$service.json" <<'EOF' || failed
import json, sys
doc = json.load(open(sys.argv[1]))
operations = sum(len(p) for p in doc["paths"].values())
if operations == 0:
    sys.exit(f"{sys.argv[1]}: no operation")
print(f"  {operations} operations, {len(doc['components']['schemas'])} schemas", file=sys.stderr)
EOF
done

[[ $validate_only == 1 ]] && exit 0

# An admin token (devstack writes the bootstrap admin's password to its
# data directory), so that every operation is reachable.
password="$(cat "$work/data/devstack-admin-password")"
token="$(curl -fsS "http://127.0.0.1:${grpc[user-service]}/v1/auth/login" \
    -d "{\"identifier\":\"admin@shop.local\",\"password\":\"$password\"}" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["accessToken"])')" || failed

for service in user-service order-service inventory-service; do
    log "$service: schemathesis ($examples examples per operation)"
    # Streams never end by themselves: a short read timeout ends them.
    "$venv/bin/schemathesis" run "$work/$service.json" \
        --url "http://127.0.0.1:${grpc[$service]}" \
        --header "Authorization: Bearer $token" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --max-examples "$examples" --request-timeout 5 --no-color --seed 1 \
        >"$work/schemathesis-$service.txt" 2>&1 || {
        tail -n 80 "$work/schemathesis-$service.txt" >&2
        failed
    }
    sed -n "/WARNINGS/,/Seed:/p" "$work/schemathesis-$service.txt" >&2
done
log "ok"
