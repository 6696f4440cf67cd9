# shellcheck shell=bash
# devstack for the checks that need the whole stack live
# (check-prometheus.sh, check-openapi.sh): every service on free ports of
# its own, its data under the caller's work directory, no web page.
#
#   source scripts/lib/devstack.sh
#   start_devstack BIN_DIR WORK   # fills grpc[SERVICE] and admin[SERVICE]
#                                 # (ports), sets devstack_pid; returns
#                                 # once every service answers health, or
#                                 # fails with devstack's log when it exits
#                                 # first or a service never answers
#   free_ports N                  # N distinct free ports, one per line
#
# devstack logs to WORK/devstack.log.

DEVSTACK_SERVICES=(user-service order-service inventory-service)
declare -gA grpc=() admin=()

free_ports() {
    python3 "$(dirname "${BASH_SOURCE[0]}")/free-ports.py" "$1"
}

start_devstack() {
    local bin=$1 work=$2 service i=0 ports args=()
    mapfile -t ports < <(free_ports $((2 * ${#DEVSTACK_SERVICES[@]})))
    for service in "${DEVSTACK_SERVICES[@]}"; do
        grpc[$service]=${ports[i]}
        admin[$service]=${ports[i + 1]}
        args+=("--$service-port" "${grpc[$service]}" "--$service-admin-port" "${admin[$service]}")
        i=$((i + 2))
    done
    "$bin/devstack" --data-dir "$work/data" --web-port 0 "${args[@]}" >"$work/devstack.log" 2>&1 &
    devstack_pid=$!
    local answered status
    for service in "${DEVSTACK_SERVICES[@]}"; do
        answered=0
        for _ in $(seq 1 300); do
            if ! kill -0 "$devstack_pid" 2>/dev/null; then
                status=0
                wait "$devstack_pid" || status=$?
                echo "devstack exited (status $status) before $service answered health; its log:" >&2
                tail -n 50 "$work/devstack.log" >&2
                return 1
            fi
            if "$bin/shop-health-probe" --addr "http://127.0.0.1:${grpc[$service]}" --timeout 1s \
                >/dev/null 2>&1; then
                answered=1
                break
            fi
            sleep 0.2
        done
        if [[ $answered == 0 ]]; then
            echo "$service (gRPC port ${grpc[$service]}) did not answer health within 60 s; devstack's log:" >&2
            tail -n 50 "$work/devstack.log" >&2
            return 1
        fi
    done
}
