#!/usr/bin/env bash
# Checks docker-compose.yml, its overrides (docker-compose.mtls.yml,
# docker-compose.scale.yml, docker-compose.observability.yml and CI's
# deploy/ci/compose.ci.yml) without a container engine:
#  0. the generated ones (compose, mtls, scale, the PostgreSQL init script) are what
#     scripts/gen-deploy.py makes of deploy/services.tsv;
#  1. against the Compose Specification JSON schema (check-jsonschema,
#     installed from PyPI into .tools/venv on first use);
#  2. every environment variable a service sets is a setting the binary
#     documents in its --help ([env: NAME]), so the file cannot drift from
#     the code; likewise the flags of each health check command.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

CHECK_JSONSCHEMA_VERSION="${CHECK_JSONSCHEMA_VERSION:-0.39.0}"
venv="$root/.tools/venv"
if [[ ! -x "$venv/bin/check-jsonschema" ]] \
    || [[ "$("$venv/bin/check-jsonschema" --version 2>/dev/null | awk '{print $NF}')" != "$CHECK_JSONSCHEMA_VERSION" ]]; then
    echo "check-compose.sh: installing check-jsonschema $CHECK_JSONSCHEMA_VERSION into .tools/venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
fi

echo "check-compose.sh: the generated files against deploy/services.tsv" >&2
python3 scripts/gen-deploy.py --check

echo "check-compose.sh: docker-compose.yml and its overrides (mtls, scale, observability, CI) against the Compose Specification" >&2
# The scale override replaces the ports list with Compose's `!override`
# merge tag, which a plain YAML reader refuses: the schema sees the list.
untagged="$(mktemp --suffix=.yml)"
trap 'rm -f "$untagged"' EXIT
sed 's/: !override$/:/' docker-compose.scale.yml > "$untagged"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.mtls.yml \
    docker-compose.observability.yml deploy/ci/compose.ci.yml "$untagged"

echo "check-compose.sh: variables and health check flags against the binaries' --help" >&2
# Every target, as scripts/test.sh builds them: one build of the
# dependencies serves both (a bins-only build resolves other features).
cargo build --quiet --locked --workspace --all-targets
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
    | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
"$venv/bin/python" - "$target_dir/debug" <<'PY'
import subprocess, sys
from pathlib import Path
from ruamel.yaml import YAML

bin_dir = Path(sys.argv[1])
compose = YAML(typ="safe").load(Path("docker-compose.yml").read_text())
override = YAML(typ="safe").load(Path("docker-compose.mtls.yml").read_text())
# Read by the tracing subscriber and the OpenTelemetry SDK rather than
# clap; --help names them in the LOG_FORMAT description.
TEXT_ONLY = {"RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"}
problems = []
help_cache = {}

def help_of(binary):
    if binary not in help_cache:
        out = subprocess.run([bin_dir / binary, "--help"], capture_output=True, text=True, env={})
        if out.returncode != 0:
            problems.append(f"{binary} --help failed: {out.stderr.strip()}")
        help_cache[binary] = out.stdout
    return help_cache[binary]

def binary_of(name):
    build = compose["services"].get(name, {}).get("build") or {}
    return (build.get("args") or {}).get("SERVICE") if isinstance(build, dict) else None

checked = 0
for file, doc in (("docker-compose.yml", compose), ("docker-compose.mtls.yml", override)):
    for name, service in doc["services"].items():
        if name not in compose["services"]:
            problems.append(f"{file}: {name} is not a service of docker-compose.yml")
            continue
        binary = binary_of(name)
        if not binary:
            continue
        text = help_of(binary)
        env = service.get("environment") or {}
        keys = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        for key in keys:
            checked += 1
            ok = key in text if key in TEXT_ONLY else f"[env: {key}" in text
            if not ok:
                problems.append(f"{file}: {name}: {key} is not a setting of {binary} (not in its --help)")
        test = (service.get("healthcheck") or {}).get("test") or []
        if len(test) > 1 and test[0] == "CMD":
            probe_help = help_of(test[1])
            for arg in test[2:]:
                if arg.startswith("--"):
                    checked += 1
                    if arg not in probe_help:
                        problems.append(f"{file}: {name}: health check flag {arg} unknown to {test[1]}")

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"check-compose.sh: {checked} settings checked, all documented", file=sys.stderr)
PY
