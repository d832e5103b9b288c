#!/usr/bin/env bash
# `make retention-bench`: the happy-path benchmark with and without a retention sweep
# deleting a backlog of finished sagas at the same time (README, Performance).
#
# A day of finished sagas at the happy rate (~1,300/s) is ~110 M sagas and ~450 M history
# rows: too many for one machine's test, so it is scaled down. A scratch database is filled
# with RETENTION_BENCH_ROWS finished sagas (default 1,000,000; 95% completed, 5%
# compensated, 4 history rows each) whose last transition is 25 to 49 hours old. Then:
#   1. SAGA_RETENTION=0 (no sweep): saga-bench's happy workload, RETENTION_BENCH_RUNS runs of
#      RETENTION_BENCH_SAGAS sagas, 1,000 in flight;
#   2. the orchestrator restarted with SAGA_RETENTION=1d: every pre-loaded saga is expired,
#      the sweep starts at once and deletes batch after batch while the same runs go;
#   3. the sweep left alone until it has deleted every pre-loaded saga.
# Prints throughput and latency side by side, the sweep's rate during and after the runs,
# and the plan of one delete batch at full size (target/retention-bench/plan.txt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${SAGA_BIN_DIR:-target/release}
PORT=${RETENTION_BENCH_PORT:-3102}
ROWS=${RETENTION_BENCH_ROWS:-1000000}
SAGAS=${RETENTION_BENCH_SAGAS:-20000}
RUNS=${RETENTION_BENCH_RUNS:-2}
ADMIN=${SAGA_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=saga_retention_bench
DB_URL="${ADMIN%/*}/$DB"
Q=rbench # prefix of the queues
OUT=target/retention-bench
DEFS=$OUT/definitions.toml
RESULTS=$OUT/results.txt
mkdir -p "$OUT"
: > "$RESULTS"
: > "$OUT/orchestrator.log"

SVC_PID=""
STUB_PIDS=()
stop_service() {
    if [[ -n $SVC_PID ]]; then kill "$SVC_PID" 2>/dev/null || true; wait "$SVC_PID" 2>/dev/null || true; fi
    SVC_PID=""
}
cleanup() {
    stop_service
    for p in "${STUB_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${STUB_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for q in $Q.c1 $Q.c2 $Q.c3 $Q.responses $Q.responses.dlq $(seq -f "$Q.responses.p%g" 0 63); do
        rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done
    psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

sql() { psql "$DB_URL" -XAtq -v ON_ERROR_STOP=1 "$@"; }
metric() { { curl -fs "http://127.0.0.1:$PORT/metrics" || true; } | awk -v m="$1" '$1 == m {v = $2} END {printf "%d", v + 0}'; }
deleted() { metric 'saga_retention_deleted_total{table="sagas"}'; }

{
    echo '[[sagas]]'
    echo 'name = "bench"'
    for i in 1 2 3; do printf '[[sagas.steps]]\nname = "service%s"\nqueue = "%s.c%s"\n' "$i" "$Q" "$i"; done
} > "$DEFS"

start_service() { # $1 SAGA_RETENTION
    SAGA_DATABASE_URL=$DB_URL SAGA_HTTP_ADDR=127.0.0.1:$PORT SAGA_DEFINITIONS=$DEFS \
        SAGA_REPLY_QUEUE=$Q.responses SAGA_RETENTION=$1 SAGA_INSTANCE_ID=retention-bench \
        RUST_LOG=warn,saga_service::housekeeping=info "$BIN/saga-service" serve >> "$OUT/orchestrator.log" 2>&1 &
    SVC_PID=$!
    local deadline=$((SECONDS + 120))
    until curl -fs "http://127.0.0.1:$PORT/readiness" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then echo "retention-bench: not ready, see $OUT/orchestrator.log" >&2; exit 1; fi
        sleep 0.1
    done
}

bench() { # label, saga-bench args...
    local label=$1
    shift
    "$BIN/saga-bench" --url "http://127.0.0.1:$PORT" --saga bench --steps service1,service2,service3 \
        --pid "$SVC_PID" --label "$label" "$@"
}

echo "retention-bench: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; PostgreSQL, RabbitMQ, orchestrator and stubs on this machine" >&2
psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
SAGA_DATABASE_URL=$DB_URL RUST_LOG=warn "$BIN/saga-service" migrate
start_service 0 # registers the definition
echo "retention-bench: filling $DB with $ROWS finished sagas and $((ROWS * 4)) history rows..." >&2
t0=$SECONDS
sql -v rows="$ROWS" <<'SQL'
INSERT INTO sagas (id, saga, definition_version, status, version, step, payload, state, created_at, updated_at)
SELECT md5('retention-bench' || i)::uuid, 'bench', 1, g.status, 4, NULL,
       jsonb_build_object('order', i),
       jsonb_build_object('saga', 'bench', 'definition_version', 1, 'status', g.status, 'version', 4,
           'payload', jsonb_build_object('order', i), 'results', '{"service1": {}, "service2": {}}'::jsonb,
           'steps', '[{"status":"done","attempts":1},{"status":"done","attempts":1},{"status":"done","attempts":1}]'::jsonb,
           'pending', NULL, 'to_compensate', '[]'::jsonb),
       g.at, g.at + interval '0.2 s'
FROM generate_series(:rows, 1, -1) AS i
CROSS JOIN LATERAL (SELECT CASE WHEN abs(hashint4(i)) % 100 < 5 THEN 'compensated' ELSE 'completed' END AS status,
                           now() - interval '25 hours' - make_interval(secs => i * 86400.0 / :rows) AS at) g;
INSERT INTO saga_events (saga_id, version, event, step, status, at)
SELECT s.id, n, CASE n WHEN 1 THEN 'started' WHEN 4 THEN s.status ELSE 'step_done' END,
       'service' || least(n, 3), CASE WHEN n = 4 THEN s.status ELSE 'running' END,
       s.created_at + make_interval(secs => 0.05 * n)
FROM sagas s CROSS JOIN generate_series(1, 4) AS n
WHERE s.saga = 'bench'
ORDER BY s.created_at, n;
VACUUM ANALYZE sagas;
VACUUM ANALYZE saga_events;
SQL
echo "retention-bench: filled in $((SECONDS - t0)) s" >&2

# The plan of one delete batch at full size, as the sweep prepares it (generic plan), rolled back.
sql > "$OUT/plan.txt" <<'SQL'
SET plan_cache_mode = force_generic_plan;
BEGIN;
PREPARE batch(text, float8, timestamptz, uuid, bigint) AS
WITH doomed AS (
     SELECT id, created_at FROM sagas
      WHERE status = $1
        AND created_at < now() - make_interval(secs => $2)
        AND updated_at < now() - make_interval(secs => $2)
        AND (created_at, id) > ($3, $4)
      ORDER BY created_at, id
      LIMIT $5
        FOR UPDATE SKIP LOCKED),
 q AS (DELETE FROM saga_quarantine q USING doomed d WHERE q.saga_id = d.id RETURNING 1),
 e AS (DELETE FROM saga_events e USING doomed d WHERE e.saga_id = d.id RETURNING 1),
 s AS (DELETE FROM sagas s USING doomed d WHERE s.id = d.id RETURNING 1)
 SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM e), (SELECT count(*) FROM q);
EXPLAIN (ANALYZE, BUFFERS) EXECUTE batch('completed', 86400, '0001-01-01 00:00:00+00', '00000000-0000-0000-0000-000000000000', 1000);
ROLLBACK;
SQL
batch_ms=$(grep -oE 'Execution Time: [0-9.]+' "$OUT/plan.txt" | grep -oE '[0-9.]+$')
batch_index=$(grep -oE 'Index Scan( Backward)? using [a-z_]+ on sagas' "$OUT/plan.txt" | head -1)
echo "retention-bench: one batch of 1,000 sagas at full size: ${batch_ms} ms, ${batch_index:-no index scan (see $OUT/plan.txt)}" >&2

for i in 1 2 3; do
    RUST_LOG=warn "$BIN/saga-stub" --queue "$Q.c$i" --service "service$i" --prefetch 500 >> "$OUT/stubs.log" 2>&1 &
    STUB_PIDS+=($!)
done

run_phase() { # label
    bench warmup --sagas 2000 --concurrency 200 >/dev/null
    for _ in $(seq "$RUNS"); do
        local before after t0 t1
        before=$(deleted); t0=$(date +%s.%N)
        bench "$1" --sagas "$SAGAS" --concurrency 1000 | tee -a "$RESULTS" >&2
        after=$(deleted); t1=$(date +%s.%N)
        echo "sweep during [$1]: $((after - before)) sagas deleted, $(echo "($after - $before) / ($t1 - $t0)" | bc) sagas/s" | tee -a "$RESULTS" >&2
    done
}

# 1. No sweep.
stop_service
start_service 0
run_phase no-sweep
# 2. The same with the sweep deleting the backlog (restarted, same data: nothing deleted yet).
stop_service
sweep_t0=$(date +%s.%N)
start_service 1d
run_phase sweeping
# 3. The sweep alone, to the end of the backlog.
deadline=$((SECONDS + 600))
until (($(deleted) >= ROWS)); do
    ((SECONDS < deadline)) || { echo "retention-bench: the sweep did not finish in 10 min" >&2; break; }
    sleep 0.5
done
sweep_t1=$(date +%s.%N)
left=$(sql -c "SELECT count(*) FROM sagas WHERE created_at < now() - interval '1 day'")
total=$(deleted)
events=$(metric 'saga_retention_deleted_total{table="saga_events"}')

# One table row per run: its saga-bench line and the sweep's rate during it.
{
    echo "Happy path, $SAGAS sagas per run, 1,000 in flight, on $ROWS pre-loaded finished sagas ($((ROWS * 4)) history rows)"
    printf '| %-40s | %7s | %7s | %7s | %7s | %13s |\n' run "sagas/s" "p50 ms" "p95 ms" "p99 ms" "swept sagas/s"
    printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..42})" --------- --------- --------- --------- ---------------
    awk '/^workload=/ {
            for (i = 1; i <= NF; i++) { split($i, a, "="); v[a[1]] = a[2] }
            label = ($0 ~ /\[no-sweep\]/) ? "SAGA_RETENTION=0 (no sweep)" : "SAGA_RETENTION=1d, sweeping the backlog"
            n[label]++
         }
         /^sweep during/ {
            printf "| %-40s | %7s | %7s | %7s | %7s | %13s |\n", label " #" n[label], v["sagas_per_s"], v["p50_ms"], v["p95_ms"], v["p99_ms"], $(NF-1)
         }' "$RESULTS"
    echo "Sweep: $total sagas and $events history rows deleted in $(echo "$sweep_t1 - $sweep_t0" | bc | xargs printf '%.0f') s from the restart, $left expired left; one batch of 1,000 at full size ${batch_ms} ms ($batch_index)"
} | tee "$OUT/summary.md"
