"""The Kubernetes manifests under deploy/k8s/, made from deploy/services.tsv
by scripts/gen-deploy.py (one line per service there, as for Compose).

    deploy/k8s/base/<service>/       one kustomize base per service
    deploy/k8s/base/postgres/        PostgreSQL as a StatefulSet (dev only)
    deploy/k8s/overlays/dev|prod/    namespaces, replicas, resources, secrets
    deploy/k8s/components/<name>/    network-policies, autoscaling, mtls,
                                     linkerd: added to an overlay as needed

Standard library only: the manifests are written by a small YAML emitter.
docs/deploy.md explains how they are used.
"""

import json
import re

PART_OF = "shop"
# SHUTDOWN_GRACE in the ConfigMap; the pod gets preStop + grace + margin.
SHUTDOWN_GRACE_S = 30
PRE_STOP_S = 5
TERMINATION_GRACE_S = PRE_STOP_S + SHUTDOWN_GRACE_S + 10
SECRETS_DIR = "/etc/shop/secrets"
ACCOUNTS_DIR = "/etc/shop/service-accounts"
ACCOUNT_DIR = "/etc/shop/service-account"
TLS_DIR = "/etc/shop/tls"
GENERATED = "# Generated from deploy/services.tsv by scripts/gen-deploy.py: edit the\n# table or scripts/lib/k8s.py, not this file.\n"


# --- a YAML emitter for plain data ---------------------------------------------

def _scalar(value):
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z_./][A-Za-z0-9_./:@-]*", text) and text.lower() not in {
        "yes", "no", "on", "off", "true", "false", "null", "y", "n"}
    return text if plain else json.dumps(text)


def _emit(value, indent, out):
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            out[-1] += " {}"
            return
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                out.append(f"{pad}{_scalar(key)}:")
                _emit(item, indent + 1 if isinstance(item, dict) else indent, out)
            else:
                out.append(f"{pad}{_scalar(key)}:")
                if isinstance(item, (dict, list)):
                    out[-1] += " {}" if isinstance(item, dict) else " []"
                else:
                    out[-1] += " " + _scalar(item)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                first = True
                for key, sub in item.items():
                    lead = f"{pad}- " if first else f"{pad}  "
                    first = False
                    if isinstance(sub, (dict, list)) and sub:
                        out.append(f"{lead}{_scalar(key)}:")
                        _emit(sub, indent + 2 if isinstance(sub, dict) else indent + 1, out)
                    elif isinstance(sub, (dict, list)):
                        out.append(f"{lead}{_scalar(key)}: " + ("{}" if isinstance(sub, dict) else "[]"))
                    else:
                        out.append(f"{lead}{_scalar(key)}: {_scalar(sub)}")
            elif isinstance(item, list):
                raise ValueError("nested lists are not used")
            else:
                out.append(f"{pad}- {_scalar(item)}")


def yaml(*documents, comment=""):
    out = []
    for i, doc in enumerate(documents):
        if i:
            out.append("---")
        _emit(doc, 0, out)
    return comment + GENERATED + "\n".join(out) + "\n"


# --- per service -----------------------------------------------------------------

def labels(name):
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


def url_setting(name):
    return name.upper().replace("-", "_") + "_URL"


def is_issuer(row):
    return row["role"] == "issuer"


def has_account(row, rows):
    """A service calls services-only RPCs when it calls a service other than
    the token issuer: it gets a service account."""
    issuers = {r["name"] for r in rows if is_issuer(r)}
    return any(c not in issuers for c in row["calls"])


def config(row, rows):
    grpc_of = {r["name"]: r["grpc"] for r in rows}
    data = {
        "GRPC_ADDR": f"0.0.0.0:{row['grpc']}",
        "ADMIN_ADDR": f"0.0.0.0:{row['admin']}",
        "DATA_DIR": "/var/lib/shop",
        "PAGE_TOKEN_SECRET_FILE": f"{SECRETS_DIR}/page-token.key",
        "OTEL_SERVICE_NAME": row["name"],
        "REQUEST_TIMEOUT_CAP": "30s",
        "SHUTDOWN_GRACE": f"{SHUTDOWN_GRACE_S}s",
        "LOG_FORMAT": "json",
        "RUST_LOG": "info,sqlx=warn",
    }
    if is_issuer(row):
        data["JWT_PRIVATE_KEY_FILE"] = f"{SECRETS_DIR}/jwt.pem"
        data["BOOTSTRAP_ADMIN_EMAIL"] = "admin@shop.local"
        data["SERVICE_ACCOUNTS_DIR"] = ACCOUNTS_DIR
    if has_account(row, rows):
        data["SERVICE_SECRET_FILE"] = f"{ACCOUNT_DIR}/{row['name']}.secret"
    for callee in row["calls"]:
        # The headless Service: every ready pod's address, balanced by the
        # client and re-resolved.
        data[url_setting(callee)] = f"dns:///{callee}-headless:{grpc_of[callee]}"
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{row['name']}-config", "labels": labels(row["name"])},
            "data": data}


def deployment(row, rows):
    name = row["name"]
    secret_items = [{"key": "page-token.key", "path": "page-token.key"}]
    env = [{"name": "DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": f"{name}-secrets", "key": "database-url"}}}]
    if is_issuer(row):
        secret_items.append({"key": "jwt.pem", "path": "jwt.pem"})
        env.append({"name": "BOOTSTRAP_ADMIN_PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": f"{name}-secrets",
                                                   "key": "bootstrap-admin-password"}}})
    # Secret files: owner root, group the pod's fsGroup (10001), readable by
    # that group only.
    volumes = [
        {"name": "data", "emptyDir": {}},
        {"name": "secrets", "secret": {"secretName": f"{name}-secrets", "defaultMode": 0o440,
                                       "items": secret_items}},
    ]
    mounts = [
        {"name": "data", "mountPath": "/var/lib/shop"},
        {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True},
    ]
    if is_issuer(row):
        volumes.append({"name": "service-accounts",
                        "secret": {"secretName": "shop-service-accounts", "defaultMode": 0o440}})
        mounts.append({"name": "service-accounts", "mountPath": ACCOUNTS_DIR, "readOnly": True})
    if has_account(row, rows):
        volumes.append({"name": "service-account",
                        "secret": {"secretName": "shop-service-accounts", "defaultMode": 0o440,
                                   "items": [{"key": f"{name}.secret", "path": f"{name}.secret"}]}})
        mounts.append({"name": "service-account", "mountPath": ACCOUNT_DIR, "readOnly": True})
    container = {
        "name": name,
        "image": f"shop/{name}:dev",
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "grpc", "containerPort": row["grpc"], "protocol": "TCP"},
                  {"name": "admin", "containerPort": row["admin"], "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": f"{name}-config"}}],
        "env": env,
        # Native gRPC probes (grpc.health.v1): started and ready when the
        # service's own name is SERVING (its database answered). Alive while
        # the process answers /healthz: every gRPC status, "" included,
        # follows the database, and an outage must not restart the pods.
        "startupProbe": {"grpc": {"port": row["grpc"], "service": row["health"]},
                         "periodSeconds": 2, "failureThreshold": 60},
        "readinessProbe": {"grpc": {"port": row["grpc"], "service": row["health"]},
                           "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"},
                          "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        # Endpoints drop the pod while it still serves; then SHUTDOWN_GRACE
        # drains what is in flight.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_S}}},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {
            "replicas": 2,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(name),
                             "annotations": {"prometheus.io/scrape": "true",
                                             "prometheus.io/port": str(row["admin"])}},
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "runAsGroup": 10001, "fsGroup": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def services(row):
    name = row["name"]
    selector = {"app.kubernetes.io/name": name}
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "labels": labels(name)},
         "spec": {"selector": selector,
                  "ports": [{"name": "grpc", "port": row["grpc"], "targetPort": "grpc"},
                            {"name": "admin", "port": row["admin"], "targetPort": "admin"}]}},
        # For `dns:///` client-side balancing: one A record per ready pod.
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": f"{name}-headless", "labels": labels(name)},
         "spec": {"clusterIP": "None", "selector": selector,
                  "ports": [{"name": "grpc", "port": row["grpc"], "targetPort": "grpc"}]}},
    ]


def service_account(row):
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": row["name"], "labels": labels(row["name"])},
            "automountServiceAccountToken": False}


# --- PostgreSQL for dev ------------------------------------------------------------

def postgres(rows, init_script):
    pg_labels = {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/part-of": PART_OF}
    env = [{"name": "POSTGRES_USER", "value": "shop"},
           {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
           {"name": "POSTGRES_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "postgres-secrets", "key": "postgres-password"}}}]
    for row in rows:
        var = row["name"].upper().replace("-", "_") + "_DB_PASSWORD"
        env.append({"name": var, "valueFrom": {"secretKeyRef": {
            "name": "postgres-secrets", "key": f"{row['name']}-db-password"}}})
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "postgres", "labels": pg_labels},
        "spec": {
            "serviceName": "postgres",
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "postgres"}},
            "template": {
                "metadata": {"labels": pg_labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999,
                                        "fsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "postgres",
                        "image": "postgres:15-bookworm",
                        "ports": [{"name": "postgres", "containerPort": 5432}],
                        "env": env,
                        "readinessProbe": {"exec": {"command": [
                            "pg_isready", "-U", "shop", "-d", rows[-1]["database"]]},
                            "periodSeconds": 5},
                        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                      "limits": {"memory": "1Gi"}},
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                            {"name": "init", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True},
                            {"name": "run", "mountPath": "/var/run/postgresql"},
                        ],
                    }],
                    "volumes": [{"name": "init", "configMap": {"name": "postgres-init"}},
                                {"name": "run", "emptyDir": {}}],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}},
            }],
        },
    }
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "postgres", "labels": pg_labels},
               "spec": {"selector": {"app.kubernetes.io/name": "postgres"},
                        "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}]}}
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": ["postgres.yaml"],
                     "configMapGenerator": [{"name": "postgres-init", "files": ["01-databases.sh"]}]}
    return {
        "base/postgres/postgres.yaml": yaml(statefulset, service, comment=(
            "# PostgreSQL for the dev overlay: one StatefulSet, one database and role\n"
            "# per service (01-databases.sh, the same script docker-compose runs).\n")),
        "base/postgres/kustomization.yaml": yaml(kustomization),
        "base/postgres/01-databases.sh": init_script,
    }


# --- overlays ------------------------------------------------------------------------

def overlays(rows):
    names = [r["name"] for r in rows]
    files = {}
    base = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [f"{n}" for n in names]}
    files["base/kustomization.yaml"] = yaml(base, comment="# Every service's base.\n")
    # dev: one replica each, PostgreSQL in the cluster, secrets generated by
    # scripts/k8s-dev-secrets.sh into overlays/dev/secrets/ (not in git).
    dev_secrets = []
    for row in rows:
        files_ = [f"database-url=secrets/{row['name']}/database-url",
                  f"page-token.key=secrets/{row['name']}/page-token.key"]
        if is_issuer(row):
            files_ += [f"jwt.pem=secrets/{row['name']}/jwt.pem",
                       f"bootstrap-admin-password=secrets/{row['name']}/bootstrap-admin-password"]
        dev_secrets.append({"name": f"{row['name']}-secrets", "files": files_})
    accounts = [f"{r['name']}.secret=secrets/service-accounts/{r['name']}.secret"
                for r in rows if has_account(r, rows)]
    dev_secrets.append({"name": "shop-service-accounts", "files": accounts})
    dev_secrets.append({"name": "postgres-secrets", "files": (
        ["postgres-password=secrets/postgres/postgres-password"]
        + [f"{r['name']}-db-password=secrets/postgres/{r['name']}-db-password" for r in rows])})
    dev = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "shop-dev",
        "resources": ["namespace.yaml", "../../base", "../../base/postgres"],
        "secretGenerator": dev_secrets,
        "replicas": [{"name": n, "count": 1} for n in names],
    }
    files["overlays/dev/kustomization.yaml"] = yaml(dev, comment=(
        "# dev: namespace shop-dev, one replica per service, PostgreSQL in the\n"
        "# cluster, secrets generated by scripts/k8s-dev-secrets.sh (not in git).\n"))
    files["overlays/dev/namespace.yaml"] = yaml(namespace("shop-dev"))
    prod = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "shop",
        "resources": ["namespace.yaml", "../../base"],
        "replicas": [{"name": n, "count": 3} for n in names],
        "images": [{"name": f"shop/{n}", "newName": f"registry.example.com/shop/{n}",
                    "newTag": "0.1.0"} for n in names],
        "patches": [{"target": {"kind": "Deployment", "labelSelector": f"app.kubernetes.io/part-of={PART_OF}"},
                     "patch": yaml_patch_resources()}],
    }
    files["overlays/prod/kustomization.yaml"] = yaml(prod, comment=(
        "# prod: namespace shop, three replicas per service, images from your\n"
        "# registry, PostgreSQL outside the cluster. The Secrets <service>-secrets,\n"
        "# shop-service-accounts are created beforehand (docs/deploy.md).\n"))
    files["overlays/prod/namespace.yaml"] = yaml(namespace("shop"))
    return files


def yaml_patch_resources():
    return ("- op: replace\n  path: /spec/template/spec/containers/0/resources\n"
            "  value:\n    requests: {cpu: 500m, memory: 256Mi}\n    limits: {memory: 1Gi}\n")


def namespace(name):
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {
                "app.kubernetes.io/part-of": PART_OF,
                # The restricted Pod Security Standard, enforced.
                "pod-security.kubernetes.io/enforce": "restricted"}}}


# --- components ----------------------------------------------------------------------

def component(resources=None, patches=None):
    doc = {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component"}
    if resources:
        doc["resources"] = resources
    if patches:
        doc["patches"] = patches
    return doc


def network_policies(rows):
    selector = lambda n: {"matchLabels": {"app.kubernetes.io/name": n}}  # noqa: E731
    docs = [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "default-deny"},
         "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "allow-dns"},
         "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                  "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {
                      "matchLabels": {"k8s-app": "kube-dns"}}}],
                      "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "postgres"},
         "spec": {"podSelector": selector("postgres"), "policyTypes": ["Ingress"],
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {
                      "app.kubernetes.io/part-of": PART_OF}}}],
                      "ports": [{"protocol": "TCP", "port": 5432}]}]}},
    ]
    for row in rows:
        name = row["name"]
        callers = [r["name"] for r in rows if name in r["calls"]]
        ingress = [
            # Its callers in the namespace, and outside callers through an
            # ingress or gateway labelled shop.io/edge=true.
            {"from": [{"podSelector": selector(c)} for c in callers]
             + [{"namespaceSelector": {"matchLabels": {"shop.io/edge": "true"}}},
                {"podSelector": {"matchLabels": {"shop.io/edge": "true"}}}],
             "ports": [{"protocol": "TCP", "port": row["grpc"]}]},
            # Prometheus, from a namespace labelled shop.io/monitoring=true.
            {"from": [{"namespaceSelector": {"matchLabels": {"shop.io/monitoring": "true"}}}],
             "ports": [{"protocol": "TCP", "port": row["admin"]}]},
        ]
        egress = [{"to": [{"podSelector": selector(c)}],
                   "ports": [{"protocol": "TCP", "port": next(r["grpc"] for r in rows if r["name"] == c)}]}
                  for c in row["calls"]]
        # The database (in the namespace in dev, outside it in prod) and an
        # OTLP collector, wherever they are.
        egress.append({"ports": [{"protocol": "TCP", "port": 5432}, {"protocol": "TCP", "port": 4317}]})
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": name},
                     "spec": {"podSelector": selector(name), "policyTypes": ["Ingress", "Egress"],
                              "ingress": ingress, "egress": egress}})
    return {
        "components/network-policies/network-policies.yaml": yaml(*docs, comment=(
            "# Default deny in and out, then one allow per edge: DNS for every pod,\n"
            "# each service from its callers (and from pods or namespaces labelled\n"
            "# shop.io/edge=true) on its gRPC port, from namespaces labelled\n"
            "# shop.io/monitoring=true on its admin port, to its callees, to\n"
            "# PostgreSQL (5432) and to an OTLP collector (4317).\n")),
        "components/network-policies/kustomization.yaml": yaml(component(["network-policies.yaml"])),
    }


def autoscaling(rows):
    docs = []
    for row in rows:
        name = row["name"]
        docs.append({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                     "metadata": {"name": name, "labels": labels(name)},
                     "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                              "minReplicas": 2, "maxReplicas": 10,
                              "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                                  "type": "Utilization", "averageUtilization": 70}}}],
                              # Scale down slowly: streams reconnect when a pod goes.
                              "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}}})
        docs.append({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                     "metadata": {"name": name, "labels": labels(name)},
                     "spec": {"maxUnavailable": 1,
                              "selector": {"matchLabels": {"app.kubernetes.io/name": name}}}})
    return {
        "components/autoscaling/autoscaling.yaml": yaml(*docs, comment=(
            "# A HorizontalPodAutoscaler (CPU 70%, 2 to 10 pods) and a\n"
            "# PodDisruptionBudget (one pod down at a time) per service.\n")),
        "components/autoscaling/kustomization.yaml": yaml(component(["autoscaling.yaml"])),
    }


def mtls(rows):
    patches = []
    for row in rows:
        name = row["name"]
        callers = [r["name"] for r in rows if name in r["calls"]]
        env = {"TLS_CERT_FILE": f"{TLS_DIR}/tls.crt", "TLS_KEY_FILE": f"{TLS_DIR}/tls.key",
               "TLS_CLIENT_CA_FILE": f"{TLS_DIR}/ca.crt",
               "TLS_CLIENT_ALLOWED_NAMES": ",".join([name] + callers + ["client"])}
        if row["calls"]:
            env.update({"CLIENT_TLS_CA_FILE": f"{TLS_DIR}/ca.crt",
                        "CLIENT_TLS_CERT_FILE": f"{TLS_DIR}/tls.crt",
                        "CLIENT_TLS_KEY_FILE": f"{TLS_DIR}/tls.key"})
        ready = ["shop-health-probe", "--addr", f"https://127.0.0.1:{row['grpc']}",
                 "--tls-ca-file", f"{TLS_DIR}/ca.crt", "--tls-cert-file", f"{TLS_DIR}/tls.crt",
                 "--tls-key-file", f"{TLS_DIR}/tls.key", "--service", row["health"]]
        patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                 "spec": {"template": {"spec": {
                     "containers": [{
                         "name": name,
                         "env": [{"name": k, "value": v} for k, v in env.items()],
                         # kubelet's gRPC probes speak plaintext: with TLS on the
                         # port, the service's own probe binary checks instead
                         # (liveness stays on the plain admin port).
                         "startupProbe": {"grpc": None, "exec": {"command": ready}},
                         "readinessProbe": {"grpc": None, "exec": {"command": ready}},
                         "volumeMounts": [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}],
                     }],
                     "volumes": [{"name": "tls", "secret": {"secretName": f"{name}-tls",
                                                            "defaultMode": 0o440}}],
                 }}}}
        patches.append({"path": f"{name}.yaml"})
        yield f"components/mtls/{name}.yaml", yaml(patch, comment=(
            f"# {name} with mutual TLS: certificate, key and CA from the Secret\n"
            f"# {name}-tls (tls.crt, tls.key, ca.crt: what cert-manager writes).\n"))
    yield "components/mtls/kustomization.yaml", yaml(component(patches=patches), comment=(
        "# Mutual TLS on every hop; each service needs a Secret <service>-tls\n"
        "# issued for <service> and <service>-headless (docs/deploy.md).\n"))


def linkerd(rows, methods_of):
    docs = []
    for row in rows:
        name = row["name"]
        grpc_service = row["health"]
        routes = [{"name": f"{grpc_service}/{m}",
                   "condition": {"method": "POST", "pathRegex": re.escape(f"/{grpc_service}/{m}")},
                   # Only reads are retried by the mesh, as the in-process
                   # policy does; the timeout is REQUEST_TIMEOUT_CAP's.
                   "isRetryable": m.startswith(("Get", "List")),
                   "timeout": "30s"}
                  for m in methods_of(grpc_service)]
        docs.append({"apiVersion": "linkerd.io/v1alpha2", "kind": "ServiceProfile",
                     "metadata": {"name": f"{name}-headless.shop.svc.cluster.local"},
                     "spec": {"routes": routes,
                              # gRFC A6's throttle in the client: one retry per
                              # ten calls, as CLIENT_RETRY_THROTTLE_TOKEN_RATIO.
                              "retryBudget": {"retryRatio": 0.1, "minRetriesPerSecond": 10,
                                              "ttl": "10s"}}})
    inject = ("- op: add\n  path: /spec/template/metadata/annotations/linkerd.io~1inject\n"
              "  value: enabled\n")
    one_layer = '- op: add\n  path: /data/CLIENT_RETRY_MAX_ATTEMPTS\n  value: "1"\n'
    comp = component(["service-profiles.yaml"], [
        {"target": {"kind": "Deployment", "labelSelector": f"app.kubernetes.io/part-of={PART_OF}"},
         "patch": inject},
    ] + [
        # One retry layer, not two: the mesh retries, the services that call
        # others do not.
        {"target": {"kind": "ConfigMap", "name": f"{row['name']}-config"}, "patch": one_layer}
        for row in rows if row["calls"]
    ])
    return {
        "components/linkerd/service-profiles.yaml": yaml(*docs, comment=(
            "# Linkerd ServiceProfiles: per-method routes with the services' own\n"
            "# timeout and retry policy (reads retryable, a 10% retry budget). The\n"
            "# names assume the namespace `shop` (prod); change them for another.\n")),
        "components/linkerd/kustomization.yaml": yaml(comp, comment=(
            "# The Linkerd mesh: sidecars injected, mesh retries and timeouts from\n"
            "# the ServiceProfiles, and the services' own retries turned off\n"
            "# (CLIENT_RETRY_MAX_ATTEMPTS=1) so that a failing call is not retried\n"
            "# by both layers.\n")),
    }


def manifests(rows, init_script, methods_of):
    files = {}
    for row in rows:
        name = row["name"]
        files[f"base/{name}/{name}.yaml"] = yaml(
            service_account(row), config(row, rows), deployment(row, rows), *services(row),
            comment=f"# {name}: ServiceAccount, settings, Deployment, Services.\n")
        files[f"base/{name}/kustomization.yaml"] = yaml(
            {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
             "resources": [f"{name}.yaml"]})
    files.update(postgres(rows, init_script))
    files.update(overlays(rows))
    files.update(network_policies(rows))
    files.update(autoscaling(rows))
    files.update(dict(mtls(rows)))
    files.update(linkerd(rows, methods_of))
    return files


# --- development secrets ----------------------------------------------------------------

def dev_secrets(rows, directory):
    """Writes fresh secrets for the dev overlay into `directory`
    (overlays/dev/secrets, ignored by git); keeps any that exist, so that a
    running cluster's database passwords and signing key stay valid."""
    import base64
    import os
    import secrets as random

    def write(path, make):
        path = directory / path
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(make())
        path.chmod(0o600)

    def password():
        return random.token_urlsafe(24)

    def ed25519_pkcs8_pem():
        # PKCS#8 PrivateKeyInfo for Ed25519 (RFC 8410): a fixed prefix and
        # the 32-byte seed.
        der = bytes.fromhex("302e020100300506032b657004220420") + os.urandom(32)
        body = base64.b64encode(der).decode()
        label = "PRIVATE" + " KEY"
        return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"

    write("postgres/postgres-password", password)
    for row in rows:
        name = row["name"]
        write(f"postgres/{name}-db-password", password)
        db_password = (directory / f"postgres/{name}-db-password").read_text()
        role = name.replace("-", "_")
        write(f"{name}/database-url",
              lambda: f"postgres://{role}:{db_password}@postgres:5432/{row['database']}")
        write(f"{name}/page-token.key", lambda: random.token_hex(32))
        if is_issuer(row):
            write(f"{name}/jwt.pem", ed25519_pkcs8_pem)
            write(f"{name}/bootstrap-admin-password", password)
        if has_account(row, rows):
            write(f"service-accounts/{name}.secret", lambda: random.token_hex(32))
