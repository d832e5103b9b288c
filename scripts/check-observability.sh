#!/usr/bin/env bash
# Checks the alert rules and the Grafana dashboard (README "Dashboards and alerts"):
#   - promtool check rules docker/prometheus/alerts.yaml   (syntax, PromQL, templates)
#   - promtool test rules docker/prometheus/alerts.test.yaml (each alert fires when it should)
#   - promtool check config docker/prometheus/prometheus.yml
#   - the dashboard is JSON that Grafana provisions: a schemaVersion, a uid, the
#     `datasource` variable on every panel and target, unique panel ids, an expr per target.
# That every metric name in the dashboard and the rules is one /metrics serves is checked
# by the Rust test tests/api/observability.rs (part of `cargo test`), against a running app.
#
# promtool comes with Debian's `prometheus` package: installed with apt-get when it is
# missing and we are root on Debian (as scripts/services.sh installs what `make test`
# needs); otherwise this script says what to install and exits 1.
#
# Environment: PROMTOOL  the promtool to use (default: the one on PATH).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly RULES=docker/prometheus/alerts.yaml
readonly RULE_TESTS=docker/prometheus/alerts.test.yaml
readonly PROM_CONFIG=docker/prometheus/prometheus.yml
readonly DASHBOARDS=docker/grafana/dashboards

say() { printf 'observability: %s\n' "$*"; }
warn() { printf 'observability: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

is_root_debian() {
    [[ -f /etc/debian_version && "$(id -u)" -eq 0 ]] && have apt-get
}

promtool="${PROMTOOL:-}"
if [[ -z "$promtool" ]] && have promtool; then
    promtool="$(command -v promtool)"
fi
if [[ -z "$promtool" ]]; then
    if is_root_debian; then
        say "promtool missing; installing Debian's prometheus package (it ships promtool)"
        say "apt: apt-get update"
        # Waits for another apt-get holding the lock (up to 10 minutes) instead of failing.
        apt=(apt-get -q -o DPkg::Lock::Timeout=600)
        if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >/dev/null ||
            ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends prometheus >/dev/null; then
            warn "FAILED: apt-get could not install prometheus (is a Debian mirror reachable?)"
        fi
        # The package may start its daemon where an init system runs; we only want promtool.
        if have systemctl && systemctl is-active --quiet prometheus 2>/dev/null; then
            systemctl stop prometheus >/dev/null 2>&1 || true
        fi
        have promtool && promtool="$(command -v promtool)"
    fi
    if [[ -z "$promtool" ]]; then
        warn "MISSING: promtool, needed to check $RULES."
        warn "Install with:  sudo apt-get install -y prometheus   (Debian/Ubuntu; it ships promtool),"
        warn "or run this script as root on Debian, or point PROMTOOL at a promtool binary."
        exit 1
    fi
fi
say "using $promtool ($("$promtool" --version 2>&1 | head -n1))"

say "promtool check rules $RULES"
"$promtool" check rules "$RULES"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# promtool compares every annotation of an expected alert word for word; the tests are
# about when each alert fires and with which labels, so they run on a copy of the rules
# without annotations (the templates themselves are checked above by `check rules`).
awk '
    { match($0, /^ */); ind = RLENGTH }
    skipping && ($0 ~ /^[[:space:]]*$/ || ind > skip_ind) { next }
    { skipping = 0 }
    /^ *annotations:[[:space:]]*$/ { skipping = 1; skip_ind = ind; next }
    { print }
' "$RULES" >"$tmp/alerts.yaml"
cp "$RULE_TESTS" "$tmp/"
say "promtool test rules $RULE_TESTS (on the rules without their annotations)"
"$promtool" test rules "$tmp/$(basename "$RULE_TESTS")"
# The config names the rules by their path inside the container; check it on a copy that
# points at the file here.
sed "s#/etc/prometheus/alerts.yaml#$PWD/$RULES#" "$PROM_CONFIG" >"$tmp/prometheus.yml"
say "promtool check config $PROM_CONFIG"
"$promtool" check config "$tmp/prometheus.yml"

if ! have python3; then
    warn "MISSING: python3, needed to check the dashboards in $DASHBOARDS (sudo apt-get install -y python3)"
    exit 1
fi
say "checking the dashboards in $DASHBOARDS"
python3 - "$DASHBOARDS" "$tmp/dashboard-rules.yaml" <<'PY'
import json, pathlib, sys

# Every query, with Grafana's variables given plain values, as a recording rule: promtool
# then parses each one as PromQL.
exprs = []
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                "$saga": ".*", "$instance": ".*"}

failed = False
def fail(path, why):
    global failed
    failed = True
    print(f"observability: {path}: {why}", file=sys.stderr)

files = sorted(pathlib.Path(sys.argv[1]).glob("*.json"))
if not files:
    fail(sys.argv[1], "no dashboard")
for path in files:
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        fail(path, f"not JSON: {e}")
        continue
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        fail(path, "schemaVersion missing or older than Grafana 9 (36)")
    if not d.get("uid") or not d.get("title"):
        fail(path, "uid and title are required for provisioning")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail(path, "no `datasource` variable of type datasource (query prometheus)")
    panels = []
    def walk(ps):
        for p in ps:
            panels.append(p)
            walk(p.get("panels", []))
    walk(d.get("panels", []))
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)) or None in ids:
        fail(path, f"panel ids missing or not unique: {ids}")
    for p in panels:
        if p.get("type") == "row":
            continue
        name = f"panel {p.get('id')} ({p.get('title')!r})"
        if p.get("datasource", {}).get("uid") != "${datasource}":
            fail(path, f"{name}: datasource is not ${{datasource}}")
        if "gridPos" not in p:
            fail(path, f"{name}: no gridPos")
        targets = p.get("targets", [])
        if not targets:
            fail(path, f"{name}: no query")
        for t in targets:
            if not t.get("expr", "").strip():
                fail(path, f"{name}: target {t.get('refId')} has no expr")
            if t.get("datasource", {}).get("uid") != "${datasource}":
                fail(path, f"{name}: target {t.get('refId')} datasource is not ${{datasource}}")
            expr = t.get("expr", "")
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            if "$" in expr:
                fail(path, f"{name}: target {t.get('refId')}: unknown variable in {expr!r}")
            exprs.append(expr)
    print(f"observability: {path}: {len(panels)} panels, schemaVersion {d.get('schemaVersion')}")
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        out.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e)}\n")
sys.exit(1 if failed else 0)
PY
say "promtool check rules: every dashboard query as PromQL"
"$promtool" check rules "$tmp/dashboard-rules.yaml"
say "passed (metric names: cargo test --test api observability)"
