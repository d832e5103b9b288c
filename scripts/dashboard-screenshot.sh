#!/usr/bin/env bash
# Makes docs/dashboard.png (`make dashboard-screenshot`): a real run of saga-service under
# load, scraped by a real Prometheus, with the Grafana dashboard's own panels and queries
# rendered by scripts/render-dashboard.py (Grafana itself is not needed). It
#   1. starts Prometheus (Debian's `prometheus` package; installed with apt-get when it is
#      missing and we are root on Debian) on 127.0.0.1:$DASH_PROM_PORT, its data in a
#      scratch folder under /tmp, scraping the service every $DASH_SCRAPE_INTERVAL as the
#      job `saga-service` and evaluating docker/prometheus/alerts.yaml;
#   2. creates a scratch database dash_<random> on the local PostgreSQL and starts
#      `saga-service serve` on it, with queues of its own (dash_<random>.*): a definitions
#      file with the built-in `default` saga (service1..3) on those queues and a two-step
#      `payment` saga whose second step pauses on error; finished sagas are kept 1 minute
#      (SAGA_RETENTION) so the retention sweep has work;
#   3. starts three stubs (service3 answers `error` to 10% of executes and a retryable
#      error to 5%), then drives load for $DASH_LOAD_SECS seconds: saga-bench starts
#      `default` sagas at $DASH_RATE/s and `payment` sagas at $DASH_PAYMENT_RATE/s, and a
#      loop starts one `default` saga with fail_steps ["service3"] (compensated) and one
#      `payment` saga with fail_steps ["service2"] (paused) every 3 s, and aborts the
#      oldest paused one every 15 s with `saga-service sagas abort`;
#   4. renders the dashboard over the run into $DASH_OUT and prints the alerts Prometheus
#      evaluated; then stops every process it started (by pid), drops the database,
#      deletes the queues it created and removes Prometheus' data, also on failure.
#
# Needs: target/release/{saga-service,saga-stub,saga-bench} (make build), PostgreSQL and
# RabbitMQ on this machine (make services), curl, psql, rabbitmqctl, python3 with venv (a
# venv target/dash-venv gets matplotlib and pika from PyPI).
#
# Environment (all optional):
#   DASH_OUT               the PNG to write (docs/dashboard.png)
#   DASH_RATE              default sagas started per second (150)
#   DASH_PAYMENT_RATE      payment sagas started per second (20)
#   DASH_LOAD_SECS         seconds of load (180)
#   DASH_SCRAPE_INTERVAL   Prometheus' scrape interval (5s, as docker/prometheus/prometheus.yml)
#   DASH_PROM_PORT         Prometheus' port (9391)
#   DASH_HTTP_PORT         saga-service's port (3391)
#   DASH_BIN               where the binaries are (target/release)
#   DASH_KEEP_DATA         1: keep Prometheus' data in target/dashboard-screenshot/prometheus-data
#                          (and the render command in .../render.sh) to render again without a run
#   SAGA_TEST_DATABASE_URL PostgreSQL admin URL (postgres://postgres@127.0.0.1:5432/postgres)
#   SAGA_TEST_AMQP_URL     RabbitMQ URL (amqp://guest:guest@127.0.0.1:5672/%2f)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${DASH_OUT:-docs/dashboard.png}
RATE=${DASH_RATE:-150}
PAYMENT_RATE=${DASH_PAYMENT_RATE:-20}
LOAD_SECS=${DASH_LOAD_SECS:-180}
SCRAPE=${DASH_SCRAPE_INTERVAL:-5s}
PROM_PORT=${DASH_PROM_PORT:-9391}
HTTP_PORT=${DASH_HTTP_PORT:-3391}
BIN=${DASH_BIN:-target/release}
ADMIN_URL=${SAGA_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
AMQP_URL=${SAGA_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
VENV=target/dash-venv
WORK=target/dashboard-screenshot
DASHBOARD=docker/grafana/dashboards/saga-service.json
RULES=docker/prometheus/alerts.yaml

RUN_ID="dash_$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
DB_URL="${ADMIN_URL%/*}/$RUN_ID"
PROM_DATA="/tmp/$RUN_ID-prometheus"
BASE_URL="http://127.0.0.1:$HTTP_PORT"
PROM_URL="http://127.0.0.1:$PROM_PORT"

say() { printf 'dashboard-screenshot: %s\n' "$*"; }
die() {
    printf 'dashboard-screenshot: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- what it needs

for bin in saga-service saga-stub saga-bench; do
    [[ -x "$BIN/$bin" ]] || die "$BIN/$bin not found; build first: make build"
done
for tool in curl psql rabbitmqctl python3; do
    have "$tool" || die "$tool is needed (make services installs PostgreSQL's and RabbitMQ's tools)"
done
[[ -f "$DASHBOARD" && -f "$RULES" ]] || die "run from the repository ($DASHBOARD, $RULES)"

if ! have prometheus; then
    if [[ -f /etc/debian_version && "$(id -u)" -eq 0 ]] && have apt-get; then
        say "prometheus missing; installing Debian's prometheus package"
        apt=(apt-get -q -o DPkg::Lock::Timeout=600)
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >/dev/null ||
            die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends prometheus >/dev/null ||
            die "apt-get could not install prometheus (is a Debian mirror reachable?)"
        # Where an init system runs, the package starts its own daemon on :9090; we run ours.
        if have systemctl && systemctl is-active --quiet prometheus 2>/dev/null; then
            systemctl stop prometheus >/dev/null 2>&1 || true
        fi
    fi
    have prometheus || die "prometheus not found: sudo apt-get install -y prometheus (Debian/Ubuntu), or put a prometheus binary on PATH"
fi

if ! "$VENV/bin/python" -c 'import matplotlib, pika' 2>/dev/null; then
    say "making $VENV (matplotlib, pika)"
    python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
    "$VENV/bin/pip" install --quiet matplotlib pika || die "cannot install matplotlib and pika into $VENV"
fi

# shellcheck disable=SC2016 # expanded by the inner bash
port_in_use() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null; }
port_in_use "$PROM_PORT" && die "port $PROM_PORT is in use; choose another: DASH_PROM_PORT=..."
port_in_use "$HTTP_PORT" && die "port $HTTP_PORT is in use; choose another: DASH_HTTP_PORT=..."
psql "$ADMIN_URL" -qtAc 'SELECT 1' >/dev/null 2>&1 || die "PostgreSQL does not answer at $ADMIN_URL (make services)"

# ---------------------------------------------------------------- cleanup

mkdir -p "$WORK" "$(dirname "$OUT")"
rm -f "$WORK"/*.log
pids=()
db_created=""

# The queues of this run (they all start with "$RUN_ID."), deleted over AMQP in one
# connection; rabbitmqctl lists them.
delete_queues() {
    local queues
    queues="$(rabbitmqctl -q list_queues name 2>/dev/null | grep -F "$RUN_ID." || true)"
    [[ -n "$queues" ]] || return 0
    # shellcheck disable=SC2086 # one queue name per word
    "$VENV/bin/python" - "$AMQP_URL" $queues <<'PY' || say "could not delete every queue of $RUN_ID.*; see rabbitmqctl list_queues" >&2
import sys
import pika
conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
ch = conn.channel()
for q in sys.argv[2:]:
    ch.queue_delete(queue=q)
conn.close()
print(f"dashboard-screenshot: deleted {len(sys.argv) - 2} queues")
PY
}

# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid deadline
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            say "pid $pid did not stop within 10 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$db_created" ]]; then
        psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $RUN_ID WITH (FORCE)" >/dev/null 2>&1 ||
            say "could not drop the database $RUN_ID: drop it by hand" >&2
    fi
    delete_queues
    if [[ "${DASH_KEEP_DATA:-}" == 1 && -d "$PROM_DATA" ]]; then
        rm -rf "$WORK/prometheus-data"
        mv "$PROM_DATA" "$WORK/prometheus-data"
        say "kept Prometheus' data in $WORK/prometheus-data (see $WORK/render.sh)"
    fi
    rm -rf "$PROM_DATA"
    if ((status != 0)); then
        say "FAILED (exit $status); logs in $WORK/" >&2
    fi
    say "stopped everything it started; database $RUN_ID dropped, queues $RUN_ID.* deleted"
    exit "$status"
}
trap cleanup EXIT
trap 'say "interrupted" >&2; exit 130' INT
trap 'say "terminated" >&2; exit 143' TERM

# start NAME CMD...: CMD in the background, output in $WORK/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    pids+=("$!")
    say "started $name (pid $!)"
}

wait_for() { # URL, seconds, name (its log is $WORK/<name>.log), pid
    local deadline=$((SECONDS + $2))
    until curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null; do
        if ! kill -0 "$4" 2>/dev/null; then
            tail -n 20 "$WORK/$3.log" >&2 || true
            die "$3 exited before answering at $1 (log: $WORK/$3.log)"
        fi
        ((SECONDS < deadline)) || die "$3 did not answer at $1 within $2 s (log: $WORK/$3.log)"
        sleep 0.5
    done
}

# ---------------------------------------------------------------- Prometheus

say "run $RUN_ID: Prometheus on $PROM_URL, saga-service on $BASE_URL"
cat >"$WORK/prometheus.yml" <<EOF
# Written by scripts/dashboard-screenshot.sh for run $RUN_ID.
global:
  scrape_interval: $SCRAPE
  evaluation_interval: $SCRAPE
rule_files:
  - $PWD/$RULES
scrape_configs:
  # The alert rules and the dashboard expect this job name.
  - job_name: saga-service
    static_configs:
      - targets: ["127.0.0.1:$HTTP_PORT"]
EOF
start prometheus prometheus --config.file="$WORK/prometheus.yml" \
    --storage.tsdb.path="$PROM_DATA" --web.listen-address="127.0.0.1:$PROM_PORT"
wait_for "$PROM_URL/-/ready" 60 prometheus "${pids[-1]}"

# ---------------------------------------------------------------- saga-service and stubs

cat >"$WORK/definitions.toml" <<EOF
# The built-in default saga (CONTRACT.md section 2) on this run's own queues.
[[sagas]]
name = "default"
[[sagas.steps]]
name = "service1"
queue = "$RUN_ID.commands1"
[[sagas.steps]]
name = "service2"
queue = "$RUN_ID.commands2"
[[sagas.steps]]
name = "service3"
queue = "$RUN_ID.commands3"

# A second type whose last step waits for an operator when it fails.
[[sagas]]
name = "payment"
[[sagas.steps]]
name = "service1"
queue = "$RUN_ID.commands1"
[[sagas.steps]]
name = "service2"
queue = "$RUN_ID.commands2"
on_error = "pause"
EOF

psql "$ADMIN_URL" -qc "CREATE DATABASE $RUN_ID" >/dev/null || die "cannot create the database $RUN_ID"
db_created=1
start saga-service env SAGA_DATABASE_URL="$DB_URL" SAGA_AMQP_URL="$AMQP_URL" \
    SAGA_HTTP_ADDR="127.0.0.1:$HTTP_PORT" SAGA_DEFINITIONS="$WORK/definitions.toml" \
    SAGA_REPLY_QUEUE="$RUN_ID.responses" SAGA_INSTANCE_ID="$RUN_ID" SAGA_RETENTION=1m \
    RUST_LOG=warn "$BIN/saga-service" serve
t_start=$(date +%s)
wait_for "$BASE_URL/readiness" 120 saga-service "${pids[-1]}"
start stub1 "$BIN/saga-stub" --amqp-url "$AMQP_URL" --queue "$RUN_ID.commands1" --service service1
start stub2 "$BIN/saga-stub" --amqp-url "$AMQP_URL" --queue "$RUN_ID.commands2" --service service2
start stub3 "$BIN/saga-stub" --amqp-url "$AMQP_URL" --queue "$RUN_ID.commands3" --service service3 \
    --error-rate 0.1 --retryable-error-rate 0.05
# Let Prometheus see the idle service for a few scrapes before the load.
sleep 15

# ---------------------------------------------------------------- load

start_saga() { # saga, payload JSON -> prints the saga id
    local id
    id="$(cat /proc/sys/kernel/random/uuid)"
    curl -fsS -m 5 -o /dev/null -X POST "$BASE_URL/start" -H 'content-type: application/json' \
        -d "{\"saga_id\":\"$id\",\"saga\":\"$1\",\"payload\":$2}" && echo "$id"
}

# One failing default saga and one pausing payment saga every 3 s; every 15 s an operator
# aborts the oldest paused payment saga. Bounded by LOAD_SECS.
operator_loop() {
    local end=$((SECONDS + LOAD_SECS)) n=0 id
    local paused=()
    while ((SECONDS < end)); do
        start_saga default '{"fail_steps":["service3"]}' >/dev/null || echo "start failed"
        if id="$(start_saga payment '{"fail_steps":["service2"]}')"; then paused+=("$id"); fi
        n=$((n + 1))
        if ((n % 5 == 0 && ${#paused[@]} > 1)); then
            "$BIN/saga-service" sagas abort --url "$BASE_URL" "${paused[0]}" \
                --by dashboard-screenshot --reason "operator abort during the dashboard run" ||
                echo "abort of ${paused[0]} failed"
            paused=("${paused[@]:1}")
        fi
        sleep 3
    done
}

say "load for ${LOAD_SECS}s: default at $RATE/s, payment at $PAYMENT_RATE/s, failing and pausing sagas every 3 s"
t_load=$(date +%s)
start bench-payment "$BIN/saga-bench" --url "$BASE_URL" --amqp-url "$AMQP_URL" --saga payment \
    --steps service1,service2 --workload happy --rate "$PAYMENT_RATE" \
    --sagas "$((PAYMENT_RATE * LOAD_SECS))" --concurrency 100000 --label payment
bench_payment_pid=$!
start operator operator_loop
start bench-default "$BIN/saga-bench" --url "$BASE_URL" --amqp-url "$AMQP_URL" --saga default \
    --workload happy --rate "$RATE" --sagas "$((RATE * LOAD_SECS))" --concurrency 100000 \
    --label default
# `wait` (unlike a command in the foreground) lets INT and TERM stop the run at once.
wait "${pids[-1]}" || die "saga-bench failed: $(tail -n 3 "$WORK/bench-default.log")"
t_end=$(date +%s)
wait "$bench_payment_pid" || die "saga-bench (payment) failed: $(tail -n 3 "$WORK/bench-payment.log")"
cat "$WORK/bench-default.log" "$WORK/bench-payment.log"
# The picture is of whatever happened; say so when the run was not the steady load intended.
not_seen="$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^failed=/) { split($i, a, "="); s += a[2] } } END { print s + 0 }' \
    "$WORK/bench-default.log" "$WORK/bench-payment.log" 2>/dev/null || echo 0)"
if ((not_seen > 0)); then
    say "WARNING: saga-bench did not see $not_seen sagas finish (start refused, or no lifecycle event within 120 s)" >&2
fi
if grep -q 'connection lost' "$WORK/saga-service.log"; then
    say "WARNING: saga-service lost a connection during the run (RabbitMQ or PostgreSQL restarted?):" >&2
    grep 'connection lost' "$WORK/saga-service.log" | head -n 3 >&2
fi
# The range ends when the load does (the bench waits for its last sagas to finish).
if ((t_end > t_load + LOAD_SECS)); then t_end=$((t_load + LOAD_SECS)); fi
# Let Prometheus scrape (and evaluate the rules) past the end.
sleep 12

# ---------------------------------------------------------------- render

say "rendering $OUT"
render=("$VENV/bin/python" scripts/render-dashboard.py --dashboard "$DASHBOARD"
    --from "$((t_start - 10))" --to "$t_end" --scrape-interval "$SCRAPE"
    --note "Load: saga-bench started 'default' sagas (3 steps) at $RATE/s and 'payment' sagas (2 steps) at $PAYMENT_RATE/s for $LOAD_SECS s; participant service3 answered error to 10% of executes and a retryable error to 5%;"
    --note "every 3 s one 'default' saga failing at service3 and one 'payment' saga pausing at service2, every 15 s an operator abort of a paused one; SAGA_RETENTION=1m. One instance, PostgreSQL and RabbitMQ on one 2-core machine.")
"${render[@]}" --prometheus "$PROM_URL" --out "$OUT" 2>&1 | tee "$WORK/render.log"
# To render again from the kept data (DASH_KEEP_DATA=1) without a new run.
{
    printf '# Renders run %s again from its kept Prometheus data: bash %s [OUT.png]\n' "$RUN_ID" "$WORK/render.sh"
    printf 'data=%q config=%q port=%q out_default=%q\n' \
        "$WORK/prometheus-data" "$WORK/prometheus.yml" "$PROM_PORT" "$OUT"
    cat <<'EOF'
set -euo pipefail
prometheus --config.file="$config" --storage.tsdb.path="$data" --web.listen-address="127.0.0.1:$port" >/dev/null 2>&1 &
pid=$!
trap 'kill "$pid"; wait "$pid" 2>/dev/null || true' EXIT
until curl -fs -o /dev/null "http://127.0.0.1:$port/-/ready"; do sleep 0.5; done
EOF
    printf '%q ' "${render[@]}" --prometheus "$PROM_URL"
    cat <<'EOF'
--out "${1:-$out_default}"
EOF
} >"$WORK/render.sh"

say "alerts Prometheus evaluated at the end of the run:"
if alerts="$(curl -fsS -m 10 "$PROM_URL/api/v1/alerts")"; then
    "$VENV/bin/python" - "$alerts" <<'PY' || true
import json, sys
alerts = json.loads(sys.argv[1])["data"]["alerts"]
for a in alerts:
    labels = dict(a["labels"])
    name = labels.pop("alertname", "?")
    print(f"  {name} {a['state']} {labels}")
if not alerts:
    print("  none")
PY
fi
say "wrote $OUT"
