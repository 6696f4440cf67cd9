#!/usr/bin/env python3
"""Generates the deployment files from deploy/services.tsv, one line per
service, so that adding a service is one line there:

  docker-compose.yml                     PostgreSQL and every service
  docker-compose.mtls.yml                mutual TLS on every hop
  docker-compose.scale.yml               free host ports, for --scale
  deploy/postgres/init/01-databases.sh   one database and role per service
  deploy/k8s/                            kustomize bases, overlays, components
                                         (scripts/lib/k8s.py)

  scripts/gen-deploy.py           write them
  scripts/gen-deploy.py --check   exit 1 if any differs (CI)
  scripts/gen-deploy.py --names   print the service names (gen-certs.sh)
  scripts/gen-deploy.py --k8s-dev-secrets
                                  write fresh secrets for the dev overlay into
                                  deploy/k8s/overlays/dev/secrets/ (not in git)

Columns: name, gRPC port, admin port, database, the services it calls
(comma-separated, or -), the gRPC service its health check asks about,
and its role (`issuer` for the token issuer, which gets the bootstrap
admin and keeps its signing key in its volume; - otherwise). Standard
library only.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "deploy" / "services.tsv"
sys.path.insert(0, str(ROOT / "scripts" / "lib"))
import k8s  # noqa: E402


def methods_of(grpc_service):
    """The RPC names of `grpc_service` (e.g. shop.user.v1.UserService), read
    from proto/."""
    package, _, service = grpc_service.rpartition(".")
    for proto in sorted((ROOT / "proto").rglob("*.proto")):
        text = proto.read_text()
        if not re.search(rf"^package {re.escape(package)};", text, re.M):
            continue
        block = re.search(rf"^service {service} {{(.*?)^}}", text, re.M | re.S)
        if block:
            return re.findall(r"^\s*rpc (\w+)\(", block[1], re.M)
    sys.exit(f"gen-deploy.py: no service {grpc_service} in proto/")


def services():
    rows = []
    for line in TABLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, grpc, admin, database, calls, health, role = line.split()
        rows.append(
            {
                "name": name,
                "grpc": int(grpc),
                "admin": int(admin),
                "database": database,
                "calls": [] if calls == "-" else calls.split(","),
                "health": health,
                "role": role,
            }
        )
    by_name = {s["name"] for s in rows}
    for s in rows:
        for callee in s["calls"]:
            if callee not in by_name:
                sys.exit(f"gen-deploy.py: {s['name']} calls {callee}, which is not in {TABLE}")
    return rows


def volume(name):
    """`user-service` -> `user-data`: the service's data volume."""
    return name.split("-")[0] + "-data"


# Where service account secrets live in the containers: one shared volume,
# read by the token issuer (SERVICE_ACCOUNTS_DIR), written by each service
# that needs a service token (its SERVICE_SECRET_FILE, generated at first
# start). Every image runs as the same user, so the 0600 files are readable.
ACCOUNTS_DIR = "/var/lib/shop-accounts"


# Shared with the Kubernetes manifests (scripts/lib/k8s.py).
has_account = k8s.has_account
url_setting = k8s.url_setting


def compose(rows):
    grpc_of = {s["name"]: s["grpc"] for s in rows}
    out = [
        "# The shop stack in containers: PostgreSQL (one database per service)",
        "# and every service, each from deploy/Dockerfile.",
        "#",
        "#   scripts/compose-env.sh          # once: generates .env with fresh secrets",
        "#   docker compose up --build",
        "#",
        "# Generated from deploy/services.tsv by scripts/gen-deploy.py: edit the",
        "# table or the script, not this file. Every variable set here is a",
        "# documented flag of the binary (README, `--help`); CI checks both this",
        "# file against the Compose specification and each variable against the",
        "# binaries' --help.",
        "",
        "name: shop",
        "",
        "services:",
        "  postgres:",
        "    image: postgres:15-bookworm",
        "    environment:",
        "      POSTGRES_USER: shop",
        "      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?run scripts/compose-env.sh first}",
        "      # Each service's own role (deploy/postgres/init/01-databases.sh).",
    ]
    out += [
        f"      {db_password(s['name'])}: ${{{db_password(s['name'])}:?run scripts/compose-env.sh first}}"
        for s in rows
    ]
    out += [
        "    volumes:",
        "      - pgdata:/var/lib/postgresql/data",
        "      - ./deploy/postgres/init:/docker-entrypoint-initdb.d:ro",
        "    healthcheck:",
        "      # The last database the init script creates: ready means initialised.",
        f'      test: ["CMD-SHELL", "pg_isready -U shop -d {rows[-1]["database"]}"]',
        "      interval: 5s",
        "      timeout: 3s",
        "      retries: 10",
        "    restart: unless-stopped",
    ]
    for s in rows:
        name, grpc, admin = s["name"], s["grpc"], s["admin"]
        out += [
            "",
            f"  {name}:",
            "    build:",
            "      context: .",
            "      dockerfile: deploy/Dockerfile",
            "      args:",
            f"        SERVICE: {name}",
            f'        GRPC_PORT: "{grpc}"',
            f"    image: shop/{name}:dev",
            "    environment:",
            f"      GRPC_ADDR: 0.0.0.0:{grpc}",
            f"      ADMIN_ADDR: 0.0.0.0:{admin}",
            "      # Its own role, which can reach its own database only. The",
            "      # postgres image serves no TLS on this private network:",
            "      # sslmode=disable says so, and lets reads be pipelined.",
            f"      DATABASE_URL: postgres://{db_role(name)}:${{{db_password(name)}}}@postgres:5432/{s['database']}?sslmode=disable",
            "      DATA_DIR: /var/lib/shop",
            f"      OTEL_SERVICE_NAME: {name}",
        ]
        if s["role"] == "issuer":
            out += [
                "      BOOTSTRAP_ADMIN_EMAIL: ${BOOTSTRAP_ADMIN_EMAIL:-admin@shop.local}",
                "      BOOTSTRAP_ADMIN_PASSWORD: ${BOOTSTRAP_ADMIN_PASSWORD:?run scripts/compose-env.sh first}",
                "      # Service accounts: the secrets the services below write.",
                f"      SERVICE_ACCOUNTS_DIR: {ACCOUNTS_DIR}",
            ]
        if has_account(s, rows):
            out += [
                "      # Its service account secret, generated at first start where",
                "      # the token issuer reads it.",
                f"      SERVICE_SECRET_FILE: {ACCOUNTS_DIR}/{name}.secret",
            ]
        for callee in s["calls"]:
            out += [
                f"      # Every address of the service name: `docker compose up --scale",
                f"      # {callee}=2` is balanced and re-resolved.",
                f"      {url_setting(callee)}: dns:///{callee}:{grpc_of[callee]}",
            ]
        out += [
            "      REQUEST_TIMEOUT_CAP: 30s",
            "      SHUTDOWN_GRACE: 30s",
            "      LOG_FORMAT: json",
            "      RUST_LOG: info,sqlx=warn",
            "      # Traces go to an OTLP collector when one is named in .env or the",
            "      # shell (e.g. http://otel-collector:4317); empty exports nothing.",
            "      OTEL_EXPORTER_OTLP_ENDPOINT: ${OTEL_EXPORTER_OTLP_ENDPOINT:-}",
            "    volumes:",
        ]
        if s["role"] == "issuer":
            out.append("      # The generated token signing key lives here and survives restarts.")
        out.append(f"      - {volume(name)}:/var/lib/shop")
        if s["role"] == "issuer":
            out.append(f"      - service-accounts:{ACCOUNTS_DIR}:ro")
        elif has_account(s, rows):
            out.append(f"      - service-accounts:{ACCOUNTS_DIR}")
        out += [
            "    ports:",
            f'      - "{grpc}:{grpc}"',
            f'      - "{admin}:{admin}"   # /metrics, /healthz, /readyz',
            "    depends_on:",
            "      postgres:",
            "        condition: service_healthy",
        ]
        for callee in s["calls"]:
            out += [f"      {callee}:", "        condition: service_healthy"]
        out += [
            "    healthcheck:",
            f'      test: ["CMD", "shop-health-probe", "--addr", "http://127.0.0.1:{grpc}", "--service", "{s["health"]}"]',
            "      interval: 5s",
            "      timeout: 3s",
            "      retries: 10",
            "      start_period: 10s",
            "    # SHUTDOWN_GRACE (30s), then what a service sends once its server",
            "    # has stopped (order-service's queued confirmations:",
            "    # CONFIRM_DRAIN_TIMEOUT, 5s), plus time to exit.",
            "    stop_grace_period: 40s",
            "    restart: unless-stopped",
            "    # Writes nothing but its volumes; no capability, no setuid.",
            "    read_only: true",
            "    cap_drop: [ALL]",
            "    security_opt: [no-new-privileges:true]",
        ]
    out += ["", "volumes:", "  pgdata:"]
    out += [f"  {volume(s['name'])}:" for s in rows]
    out += ["  service-accounts:"]
    return "\n".join(out) + "\n"


def compose_scale(rows):
    """docker-compose.scale.yml: every service another one calls publishes
    its ports on free host ports, so that it can run several replicas."""
    callees = [s for s in rows if any(s["name"] in other["calls"] for other in rows)]
    out = [
        "# Lets the services that others call run more than one replica:",
        "#",
        "#   docker compose -f docker-compose.yml -f docker-compose.scale.yml \\",
        "#       up -d --scale user-service=2",
        "#   docker compose port --index 2 user-service 50051   # where replica 2 is",
        "#",
        "# Replicas cannot share a fixed host port, so here each replica publishes",
        "# its ports on a free one. Callers inside the network reach every replica",
        "# through the service name (dns:///user-service:50051), re-resolved and",
        "# balanced. Generated from deploy/services.tsv by scripts/gen-deploy.py.",
        "",
        "services:",
    ]
    for s in callees:
        out += [
            f"  {s['name']}:",
            "    ports: !override",
            f'      - "{s["grpc"]}"',
            f'      - "{s["admin"]}"',
        ]
    return "\n".join(out) + "\n"


def compose_mtls(rows):
    names = " ".join(s["name"] for s in rows)
    out = [
        "# Mutual TLS on every hop (callers -> services -> the services they",
        "# call) with development certificates, layered over docker-compose.yml:",
        "#",
        "#   GEN_CERTS_FOR_CONTAINERS=1 scripts/gen-certs.sh certs",
        "#   docker compose -f docker-compose.yml -f docker-compose.mtls.yml up --build",
        "#",
        "# Callers need a certificate of the same CA:",
        "#   grpcurl -cacert certs/ca.pem -cert certs/client.pem -key certs/client-key.pem \\",
        f"#     localhost:{rows[-1]['grpc']} list",
        "# Rotate with `scripts/gen-certs.sh certs` again: the services pick the new",
        "# files up within TLS_RELOAD_INTERVAL (or at once on SIGHUP:",
        f"# `docker compose kill -s HUP {names}`), no restart.",
        "#",
        "# Generated from deploy/services.tsv by scripts/gen-deploy.py.",
        "",
        "services:",
    ]
    for i, s in enumerate(rows):
        name = s["name"]
        if i:
            out.append("")
        out += [
            f"  {name}:",
            "    environment:",
            f"      TLS_CERT_FILE: /etc/shop/tls/{name}.pem",
            f"      TLS_KEY_FILE: /etc/shop/tls/{name}-key.pem",
            "      TLS_CLIENT_CA_FILE: /etc/shop/tls/ca.pem",
            "      # Who may call it: its own health probe, the services that",
            "      # call it, and outside callers' `client` certificate.",
            f"      TLS_CLIENT_ALLOWED_NAMES: {','.join(allowed_callers(rows, name))}",
        ]
        if s["calls"]:
            callees = ", ".join(s["calls"])
            out += [
                f"      # Its channels to {callees}: verify their certificates (each",
                "      # issued for the service's name) and present our own.",
                "      CLIENT_TLS_CA_FILE: /etc/shop/tls/ca.pem",
                f"      CLIENT_TLS_CERT_FILE: /etc/shop/tls/{name}.pem",
                f"      CLIENT_TLS_KEY_FILE: /etc/shop/tls/{name}-key.pem",
            ]
        out += [
            "    volumes:",
            "      - ./certs:/etc/shop/tls:ro",
            "    healthcheck:",
            f'      test: ["CMD", "shop-health-probe", "--addr", "https://127.0.0.1:{s["grpc"]}", "--service", "{s["health"]}",',
            '             "--tls-ca-file", "/etc/shop/tls/ca.pem",',
            f'             "--tls-cert-file", "/etc/shop/tls/{name}.pem", "--tls-key-file", "/etc/shop/tls/{name}-key.pem"]',
        ]
    return "\n".join(out) + "\n"


def allowed_callers(rows, name):
    """The certificate names that may call `name` over mTLS: itself (its
    health probe presents the service's own certificate), every service
    that calls it, and `client` (scripts/gen-certs.sh's caller certificate)."""
    callers = [r["name"] for r in rows if name in r["calls"]]
    return [name] + callers + ["client"]


def db_role(name):
    """The PostgreSQL role of a service: user-service -> user_service."""
    return name.replace("-", "_")


def db_password(name):
    """The variable holding that role's password: USER_SERVICE_DB_PASSWORD."""
    return name.upper().replace("-", "_") + "_DB_PASSWORD"


def databases(rows):
    out = [
        "#!/bin/sh",
        "# One database per service, each owned by a role of its own that can",
        "# connect to that database only (least privilege: order-service cannot",
        "# read password hashes). Run by the postgres image when its volume is",
        "# first initialised (docker-entrypoint-initdb.d), with the passwords",
        "# from the environment. Each service migrates its own schema at",
        "# start-up. Generated from deploy/services.tsv by scripts/gen-deploy.py.",
        "set -eu",
        'psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \\',
    ]
    out += [
        f'    -v {db_role(s["name"])}_password="${db_password(s["name"])}" \\'
        for s in rows
    ]
    out += ["    <<'SQL'"]
    for s in rows:
        role, db = db_role(s["name"]), s["database"]
        out += [
            f"CREATE ROLE {role} LOGIN PASSWORD :'{role}_password';",
            f"CREATE DATABASE {db} OWNER {role};",
            f"REVOKE ALL ON DATABASE {db} FROM PUBLIC;",
        ]
    out += ["SQL"]
    return "\n".join(out) + "\n"


def main():
    rows = services()
    if "--names" in sys.argv:
        print(" ".join(s["name"] for s in rows))
        return
    if "--k8s-dev-secrets" in sys.argv:
        k8s.dev_secrets(rows, ROOT / "deploy" / "k8s" / "overlays" / "dev" / "secrets")
        return
    files = {
        ROOT / "docker-compose.yml": compose(rows),
        ROOT / "docker-compose.mtls.yml": compose_mtls(rows),
        ROOT / "docker-compose.scale.yml": compose_scale(rows),
        ROOT / "deploy" / "postgres" / "init" / "01-databases.sh": databases(rows),
    }
    for path, text in k8s.manifests(rows, databases(rows), methods_of).items():
        files[ROOT / "deploy" / "k8s" / path] = text
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if "--check" in sys.argv:
        for p in stale:
            print(f"gen-deploy.py: {p.relative_to(ROOT)} is not what deploy/services.tsv says; "
                  "run scripts/gen-deploy.py", file=sys.stderr)
        sys.exit(1 if stale else 0)
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(files[p])
        print(f"gen-deploy.py: wrote {p.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
