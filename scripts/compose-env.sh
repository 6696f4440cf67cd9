#!/usr/bin/env bash
# Writes .env for docker compose with freshly generated secrets (the
# PostgreSQL password and the bootstrap admin password). .env is ignored by
# git; an existing one is left alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -f .env ]]; then
    echo "compose-env.sh: .env exists; leaving it alone" >&2
    exit 0
fi
secret() { head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 32; }
umask 077
cat > .env <<ENV
POSTGRES_PASSWORD=$(secret)
BOOTSTRAP_ADMIN_EMAIL=admin@shop.local
BOOTSTRAP_ADMIN_PASSWORD=$(secret)
ENV
echo "compose-env.sh: wrote .env (admin login: admin@shop.local, password in .env)" >&2
