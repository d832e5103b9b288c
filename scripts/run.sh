#!/usr/bin/env bash
# Run saga-service locally with three participant stubs and the kit's payments
# example (what `make run` does after services, build and migrate):
#   saga-service serve                                  (SAGA_DEFINITIONS: examples/checkout.toml)
#   saga-stub --queue commandsN --service serviceN      (N = 1..3)
#   examples/payments --queue payments                  (its own database, created if missing)
# Logs go to target/run/<name>.log. Waits until GET /readiness answers 200,
# prints curl commands to try it, then waits. Ctrl-C (SIGINT) or SIGTERM stops
# every process this script started; so does any one of them exiting.
#
# Environment (all optional; everything is passed through to the processes):
#   SAGA_HTTP_ADDR      listen address of saga-service (0.0.0.0:3000)
#   SAGA_DATABASE_URL   (postgres://postgres@127.0.0.1:5432/postgres here)
#   SAGA_AMQP_URL       (amqp://guest:guest@127.0.0.1:5672/%2f)
#   SAGA_DEFINITIONS    (examples/checkout.toml: the `checkout` saga besides `default`)
#   PAYMENTS_DATABASE_URL  the payments example's database (postgres://postgres@127.0.0.1:5432/payments)
#   SAGA_REPLY_QUEUE, SAGA_QUEUE_TYPE, RUST_LOG, SAGA_STUB_*
#   SAGA_BIN_DIR        where the binaries are (target/release)
#   SAGA_RUN_DIR        where the logs go (target/run)
#   SAGA_READY_TIMEOUT  seconds to wait for /readiness (60)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN_DIR="${SAGA_BIN_DIR:-target/release}"
RUN_DIR="${SAGA_RUN_DIR:-target/run}"
READY_TIMEOUT="${SAGA_READY_TIMEOUT:-60}"

export SAGA_HTTP_ADDR="${SAGA_HTTP_ADDR:-0.0.0.0:3000}"
# The local PostgreSQL trusts 127.0.0.1 (scripts/services.sh); no password needed.
export SAGA_DATABASE_URL="${SAGA_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export SAGA_AMQP_URL="${SAGA_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export RUST_LOG="${RUST_LOG:-info}"
export SAGA_DEFINITIONS="${SAGA_DEFINITIONS:-examples/checkout.toml}"
export PAYMENTS_DATABASE_URL="${PAYMENTS_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/payments}"

# Where to reach the HTTP server from here: a wildcard listen address means localhost.
port="${SAGA_HTTP_ADDR##*:}"
host="${SAGA_HTTP_ADDR%:*}"
case "$host" in
"" | 0.0.0.0 | "[::]" | "::") host=127.0.0.1 ;;
esac
base_url="http://$host:$port"

for bin in saga-service saga-stub examples/payments; do
    if [[ ! -x "$BIN_DIR/$bin" ]]; then
        echo "run: $BIN_DIR/$bin not found; build first: make build" >&2
        exit 1
    fi
done
if ! command -v psql >/dev/null 2>&1; then
    echo "run: psql is needed to create the payments example's database (apt-get install -y postgresql-client)" >&2
    exit 1
fi
if ! command -v curl >/dev/null 2>&1; then
    echo "run: curl is needed to wait for /readiness (apt-get install -y curl)" >&2
    exit 1
fi

# Something already listening would answer /readiness in our place.
# shellcheck disable=SC2016 # expanded by the inner bash
if timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; then
    echo "run: $host:$port is already in use (an earlier run still going?)." >&2
    if [[ -s "$RUN_DIR/pids" ]]; then
        echo "run: processes of the last run (from $RUN_DIR/pids): $(tr '\n' ' ' <"$RUN_DIR/pids")" >&2
    fi
    echo "run: stop it, or choose another address: SAGA_HTTP_ADDR=0.0.0.0:3001 make run" >&2
    exit 1
fi

# The payments example keeps its table and its inbox in a database of its own, as a
# participant would: created here (on the server of PAYMENTS_DATABASE_URL) when missing.
payments_db="${PAYMENTS_DATABASE_URL##*/}"
payments_db="${payments_db%%\?*}"
payments_server="${PAYMENTS_DATABASE_URL%/*}/postgres"
if ! exists="$(psql "$payments_server" -tAc "SELECT 1 FROM pg_database WHERE datname = '$payments_db'")"; then
    echo "run: cannot reach PostgreSQL at $payments_server to create the payments database" >&2
    exit 1
fi
if [[ "$exists" != 1 ]]; then
    psql "$payments_server" -qc "CREATE DATABASE \"$payments_db\""
    echo "run: created database $payments_db for the payments example"
fi

mkdir -p "$RUN_DIR"
: >"$RUN_DIR/pids"

pids=()
names=()

# shellcheck disable=SC2317 # called from the EXIT trap
stop_all() {
    trap - EXIT INT TERM
    local pid deadline
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give them up to 10 s to shut down cleanly, then force.
    deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "run: pid $pid did not stop within 10 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    : >"$RUN_DIR/pids"
    if ((${#pids[@]} > 0)); then
        echo "run: stopped ${names[*]}"
    fi
}
trap stop_all EXIT
trap 'echo; echo "run: interrupted, stopping"; exit 130' INT
trap 'echo "run: terminated, stopping"; exit 143' TERM

# start NAME CMD...: run CMD in the background, output to $RUN_DIR/NAME.log.
start() {
    local name="$1"
    shift
    "$@" >"$RUN_DIR/$name.log" 2>&1 &
    pids+=("$!")
    names+=("$name")
    echo "$!" >>"$RUN_DIR/pids"
    echo "run: started $name (pid $!): $* > $RUN_DIR/$name.log"
}

show_log_tail() {
    echo "---- last lines of $RUN_DIR/$1.log ----" >&2
    tail -n 20 "$RUN_DIR/$1.log" >&2 || true
    echo "----" >&2
}

# The first process that has exited, as "index", or nothing.
first_exited() {
    local i
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            echo "$i"
            return 0
        fi
    done
    return 1
}

start saga-service "$BIN_DIR/saga-service" serve
for n in 1 2 3; do
    start "stub$n" "$BIN_DIR/saga-stub" --queue "commands$n" --service "service$n"
done
start payments "$BIN_DIR/examples/payments" --queue payments --database-url "$PAYMENTS_DATABASE_URL"

echo "run: waiting up to ${READY_TIMEOUT}s for $base_url/readiness"
deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS -m 2 -o /dev/null "$base_url/readiness" 2>/dev/null; do
    if i="$(first_exited)"; then
        status=0
        wait "${pids[$i]}" || status=$?
        echo "run: ${names[$i]} exited (status $status) before saga-service became ready" >&2
        show_log_tail "${names[$i]}"
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "run: $base_url/readiness did not answer 200 within ${READY_TIMEOUT}s" >&2
        curl -sS -m 2 "$base_url/readiness" >&2 2>&1 || true
        echo >&2
        show_log_tail saga-service
        exit 1
    fi
    sleep 0.5
done

cat <<EOF

saga-service is ready on $base_url (logs: $RUN_DIR/*.log).
Saga browser: $base_url/ui   Try:

  curl -s -X POST $base_url/start -H 'content-type: application/json' -d '{"saga_id":"'\$(cat /proc/sys/kernel/random/uuid)'","payload":{"order":42}}'
  curl -s -X POST $base_url/start -H 'content-type: application/json' -d '{"saga_id":"'\$(cat /proc/sys/kernel/random/uuid)'","saga":"checkout","payload":{"amount":250}}'
  curl -s $base_url/sagas/<saga_id or code from the answer above>
  $BIN_DIR/saga-service sagas list --url $base_url
  psql $PAYMENTS_DATABASE_URL -c 'TABLE payments'
  $BIN_DIR/saga-service check-participant --queue payments
  curl -s '$base_url/sagas?limit=10'
  curl -s $base_url/metrics

Ctrl-C stops saga-service, the three stubs and the payments participant.
EOF

# Wait until one of them exits (then stop the others) or a signal arrives
# (`wait` returns at once on a trapped signal, and the trap exits).
while true; do
    if i="$(first_exited)"; then
        status=0
        wait "${pids[$i]}" || status=$?
        break
    fi
    exited=""
    status=0
    wait -n -p exited "${pids[@]}" || status=$?
    if [[ -n "$exited" ]]; then
        for i in "${!pids[@]}"; do
            [[ "${pids[$i]}" == "$exited" ]] && break
        done
        break
    fi
done
echo "run: ${names[$i]} exited (status $status); stopping the others" >&2
show_log_tail "${names[$i]}"
exit 1
