#!/usr/bin/env bash
# Writes .env for docker compose with freshly generated secrets: the
# PostgreSQL superuser's password, one password per service's own database
# role, the bootstrap admin password and Grafana's admin password. .env is ignored by git; in an
# existing one only the missing variables are added (an existing PostgreSQL
# volume keeps the roles it was initialised with: see docs/security.md).
#
#   scripts/compose-env.sh          # .env in the repository
#   scripts/compose-env.sh FILE     # another file (compose --env-file FILE)
set -euo pipefail
env_file="$(realpath -m "${1:-$(dirname "${BASH_SOURCE[0]}")/../.env}")"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secret() { head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 32; }
umask 077
touch "$env_file"
added=()
add() {
    if ! grep -q "^$1=" "$env_file"; then
        printf '%s=%s\n' "$1" "$2" >> "$env_file"
        added+=("$1")
    fi
}
add POSTGRES_PASSWORD "$(secret)"
for service in $(python3 scripts/gen-deploy.py --names); do
    add "$(tr 'a-z-' 'A-Z_' <<<"$service")_DB_PASSWORD" "$(secret)"
done
add BOOTSTRAP_ADMIN_EMAIL admin@shop.local
add BOOTSTRAP_ADMIN_PASSWORD "$(secret)"
# Grafana's admin (docker-compose.observability.yml).
add GRAFANA_ADMIN_PASSWORD "$(secret)"
if ((${#added[@]})); then
    echo "compose-env.sh: added ${added[*]} to $env_file (admin login: see BOOTSTRAP_ADMIN_EMAIL and BOOTSTRAP_ADMIN_PASSWORD there)" >&2
else
    echo "compose-env.sh: $env_file already has every variable" >&2
fi
