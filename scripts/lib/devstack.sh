# shellcheck shell=bash
# devstack for the checks that need the whole stack live
# (check-prometheus.sh, check-openapi.sh): every service on free ports of
# its own, its data under the caller's work directory, no web page.
#
#   source scripts/lib/devstack.sh
#   start_devstack BIN_DIR WORK   # fills grpc[SERVICE] and admin[SERVICE]
#                                 # (ports), sets devstack_pid; returns
#                                 # once every service answers health
#   free_ports N                  # N distinct free ports, one per line
#
# devstack logs to WORK/devstack.log.

DEVSTACK_SERVICES=(user-service order-service inventory-service)
declare -gA grpc=() admin=()

free_ports() {
    # All held until every one is chosen, so none is handed out twice.
    python3 -c '
import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held:
    s.bind(("127.0.0.1", 0))
for s in held:
    print(s.getsockname()[1])
' "$1"
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
    for service in "${DEVSTACK_SERVICES[@]}"; do
        for _ in $(seq 1 300); do
            "$bin/shop-health-probe" --addr "http://127.0.0.1:${grpc[$service]}" --timeout 1s \
                >/dev/null 2>&1 && break
            sleep 0.2
        done
    done
}
