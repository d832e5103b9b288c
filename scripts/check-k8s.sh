#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s/ (README "Kubernetes") against the
# Kubernetes JSON schemas with kubernetes-validate (PyPI), strict: an unknown or misspelt
# field fails. Also checks that kustomization.yaml lists exactly the manifests there, and
# that the Deployment keeps what the service relies on (probes, SAGA_INSTANCE_ID from the
# pod name, a grace period above the shutdown timeout).
#
# kubernetes-validate is installed in a virtualenv, target/venv (created when missing).
# When pip cannot reach PyPI, the check is skipped with a clear message (exit 0); any
# other failure exits 1.
#
# Environment:
#   K8S_VERSION  the Kubernetes version whose schemas are used (default 1.30.0)
#   K8S_VENV     the virtualenv (default target/venv)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly DIR=deploy/k8s
readonly VERSION="${K8S_VERSION:-1.30.0}"
readonly VENV="${K8S_VENV:-target/venv}"

say() { printf 'k8s: %s\n' "$*"; }
warn() { printf 'k8s: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

if ! have python3; then
    warn "MISSING: python3 (sudo apt-get install -y python3 python3-venv)"
    exit 1
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating the virtualenv $VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 has venv in a package of its own.
        if [[ -f /etc/debian_version && "$(id -u)" -eq 0 ]] && have apt-get; then
            say "apt: apt-get install -y python3-venv"
            DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 install -y --no-install-recommends python3-venv >/dev/null ||
                { DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null &&
                    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 install -y --no-install-recommends python3-venv >/dev/null; }
        fi
        rm -rf "$VENV"
        if ! python3 -m venv "$VENV"; then
            warn "FAILED: python3 -m venv $VENV (install python3-venv)"
            exit 1
        fi
    fi
fi
if ! "$VENV/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
    say "pip install kubernetes-validate into $VENV"
    if ! out="$("$VENV/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate 2>&1)"; then
        if grep -qiE 'connection|resolve|network|timed out|No matching distribution' <<<"$out"; then
            warn "SKIPPED: pip cannot reach PyPI to install kubernetes-validate; deploy/k8s is NOT validated:"
            warn "$(tail -n 3 <<<"$out")"
            exit 0
        fi
        warn "FAILED: pip install kubernetes-validate:"
        warn "$out"
        exit 1
    fi
fi

mapfile -t manifests < <(find "$DIR" -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml | sort)
say "kubernetes-validate --strict -k $VERSION ${manifests[*]}"
"$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$VERSION" "${manifests[@]}"

say "checking kustomization.yaml and the Deployment's essentials"
"$VENV/bin/python" - "$DIR" <<'PY'
import pathlib, sys, yaml

d = pathlib.Path(sys.argv[1])
problems = []
kust = yaml.safe_load((d / "kustomization.yaml").read_text())
listed = set(kust.get("resources", []))
present = {p.name for p in d.glob("*.yaml") if p.name != "kustomization.yaml"}
if listed != present:
    problems.append(f"kustomization.yaml resources {sorted(listed)} != manifests {sorted(present)}")

docs = [doc for p in sorted(d.glob("*.yaml")) if p.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(p.read_text()) if doc]
kinds = {doc["kind"]: doc for doc in docs}
for kind in ["Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"]:
    if kind not in kinds:
        problems.append(f"no {kind}")
dep = kinds.get("Deployment")
if dep:
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    if spec.get("terminationGracePeriodSeconds", 30) <= 2 * int(env.get("SAGA_SHUTDOWN_TIMEOUT_S", {}).get("value", "10")):
        problems.append("terminationGracePeriodSeconds must exceed twice SAGA_SHUTDOWN_TIMEOUT_S (HTTP drain, then replies)")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/liveness":
        problems.append("livenessProbe is not GET /liveness")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readiness":
        problems.append("readinessProbe is not GET /readiness")
    if env.get("SAGA_INSTANCE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        problems.append("SAGA_INSTANCE_ID is not the pod's name")
    for name in ["SAGA_DATABASE_URL", "SAGA_AMQP_URL", "SAGA_ADMIN_TOKEN"]:
        if "secretKeyRef" not in env.get(name, {}).get("valueFrom", {}):
            problems.append(f"{name} is not taken from a Secret")
    if dep["spec"].get("replicas", 1) < 2:
        problems.append("fewer than 2 replicas")
    secret = kinds.get("Secret", {})
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for name in ["SAGA_DATABASE_URL", "SAGA_AMQP_URL", "SAGA_ADMIN_TOKEN"]:
        ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef", {})
        if ref and (ref.get("name") != secret.get("metadata", {}).get("name") or ref.get("key") not in keys):
            problems.append(f"{name}: the Secret has no key {ref.get('key')}")
    cm = kinds.get("ConfigMap", {})
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    path = env.get("SAGA_DEFINITIONS", {}).get("value", "")
    ok = any(v.get("configMap", {}).get("name") == cm.get("metadata", {}).get("name")
             and path == f"{mounts.get(n)}/{k}" for n, v in vols.items() for k in cm.get("data", {}))
    if not ok:
        problems.append("SAGA_DEFINITIONS does not name a file of the mounted ConfigMap")
for p in problems:
    print(f"k8s: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
say "passed"
