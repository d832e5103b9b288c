#!/usr/bin/env bash
# `make list-bench`: GET /sagas at a million rows (README, Performance).
#
# Fills a scratch database with LIST_BENCH_ROWS sagas (default 1,000,000) and their
# history, schema from `saga-service migrate`, a realistic mix of statuses and types over
# 30 days; serves it with the release binary; times every filter shape of GET /sagas
# (LIST_BENCH_REPS requests each, one keep-alive connection, after a warm-up) and runs
# EXPLAIN ANALYZE on the same statement; prints one table row per shape. The database is
# dropped at the end unless LIST_BENCH_KEEP=1; LIST_BENCH_REUSE=1 reuses a kept one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${SAGA_BIN_DIR:-target/release}
PORT=${LIST_BENCH_PORT:-3101}
ROWS=${LIST_BENCH_ROWS:-1000000}
REPS=${LIST_BENCH_REPS:-200}
KEEP=${LIST_BENCH_KEEP:-0}
REUSE=${LIST_BENCH_REUSE:-0}
ADMIN=${SAGA_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=saga_list_bench
DB_URL="${ADMIN%/*}/$DB"
Q=saga_list_bench # prefix of the queues the orchestrator declares
OUT=target/list-bench
DEFS=$OUT/definitions.toml
mkdir -p "$OUT"

SVC_PID=""
cleanup() {
    if [[ -n $SVC_PID ]]; then kill "$SVC_PID" 2>/dev/null || true; wait "$SVC_PID" 2>/dev/null || true; fi
    for q in $Q.commands $Q.responses $Q.responses.dlq; do
        rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done
    if [[ $KEEP != 1 ]]; then
        psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

sql() { psql "$DB_URL" -XAtq -v ON_ERROR_STOP=1 "$@"; }

# Four saga types of three steps; a day's time-out, so nothing fires during the run, and
# `stuck=true` means idle for over 3 days (timeout_ms x max_attempts).
{
    for t in default trip order refund; do
        printf '[[sagas]]\nname = "%s"\n' "$t"
        for s in s1 s2 s3; do
            printf '[[sagas.steps]]\nname = "%s"\nqueue = "%s.commands"\ntimeout_ms = 86400000\n' "$s" "$Q"
        done
    done
} > "$DEFS"

start_service() {
    SAGA_DATABASE_URL=$DB_URL SAGA_HTTP_ADDR=127.0.0.1:$PORT SAGA_DEFINITIONS=$DEFS \
        SAGA_REPLY_QUEUE=$Q.responses SAGA_PASSIVATE_AFTER_MS=1000 RUST_LOG=warn \
        "$BIN/saga-service" serve >> "$OUT/orchestrator.log" 2>&1 &
    SVC_PID=$!
    local deadline=$((SECONDS + 300))
    until curl -fs "http://127.0.0.1:$PORT/readiness" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then echo "list-bench: not ready, see $OUT/orchestrator.log" >&2; exit 1; fi
        sleep 0.1
    done
}

have=0
if [[ $REUSE == 1 ]] && psql "$ADMIN" -XAtqc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    have=$(sql -c "SELECT count(*) FROM sagas" 2>/dev/null || echo 0)
fi
if ((have < ROWS)); then
    psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
    SAGA_DATABASE_URL=$DB_URL RUST_LOG=warn "$BIN/saga-service" migrate
    start_service # registers the definitions; there is nothing to rehydrate yet
    echo "list-bench: filling $DB with $ROWS sagas and their history..." >&2
    t0=$SECONDS
    # Newest first is i = 1; one saga every 30 days / ROWS. Status and type from hashes of i:
    # 300 newest in flight (running or compensating); older ones ~93.9% completed, 5%
    # compensated, 0.2% failed, 0.15% stuck running or compensating. Types 60/25/14/1 %.
    sql -v rows="$ROWS" <<'SQL'
CREATE TEMP TABLE gen AS
SELECT i,
       md5('list-bench' || i)::uuid AS id,
       CASE WHEN h % 100 < 60 THEN 'default' WHEN h % 100 < 85 THEN 'trip'
            WHEN h % 100 < 99 THEN 'order' ELSE 'refund' END AS saga,
       CASE WHEN i <= 300 THEN CASE WHEN i % 10 = 0 THEN 'compensating' ELSE 'running' END
            WHEN g % 10000 < 10 THEN 'running'
            WHEN g % 10000 < 15 THEN 'compensating'
            WHEN g % 10000 < 35 THEN 'failed'
            WHEN g % 10000 < 535 THEN 'compensated'
            ELSE 'completed' END AS status,
       now() - make_interval(secs => i * (30 * 86400.0 / :rows)) AS created_at
FROM (SELECT i, abs(hashint4(i)) AS h, abs(hashint4(i + 7919)) AS g
      FROM generate_series(1, :rows) AS i) s;

INSERT INTO sagas (id, saga, definition_version, status, version, step, payload, state, created_at, updated_at)
SELECT g.id, g.saga, d.version, g.status, v.version, v.step,
       jsonb_build_object('order', g.i),
       jsonb_build_object(
           'saga_id', g.id, 'saga', g.saga, 'definition_version', d.version,
           'payload', jsonb_build_object('order', g.i), 'status', g.status,
           'version', v.version, 'results', j.results, 'steps', j.steps,
           'pending', CASE WHEN v.step IS NULL THEN NULL ELSE jsonb_build_object(
               'step', v.step_index, 'action', v.action,
               'command_id', g.id || '/' || v.step || '/' || v.action,
               'attempt', 1, 'phase', v.phase) END,
           'to_compensate', '[]'::jsonb,
           'started_at_ms', (extract(epoch FROM g.created_at) * 1000)::bigint),
       g.created_at,
       g.created_at + make_interval(secs => 0.05 * v.version)
FROM gen g
JOIN (SELECT name, max(version) AS version FROM saga_definitions GROUP BY name) d ON d.name = g.saga
JOIN (VALUES
    ('completed', 4, NULL, NULL, NULL, NULL,
     '{"s1": {}, "s2": {}, "s3": {}}',
     '[{"status":"done","attempts":1},{"status":"done","attempts":1},{"status":"done","attempts":1}]'),
    ('compensated', 6, NULL, NULL, NULL, NULL, '{"s1": {}, "s2": {}}',
     '[{"status":"compensated","attempts":1,"compensate_attempts":1},{"status":"compensated","attempts":1,"compensate_attempts":1},{"status":"failed","attempts":1,"error":"card declined"}]'),
    ('running', 2, 's2', 1, 'execute', 'awaiting_reply', '{"s1": {}}',
     '[{"status":"done","attempts":1},{"status":"executing","attempts":1},{"status":"not_started","attempts":0}]'),
    ('compensating', 4, 's1', 0, 'compensate', 'awaiting_reply', '{"s1": {}}',
     '[{"status":"compensating","attempts":1,"compensate_attempts":1},{"status":"failed","attempts":1,"error":"out of stock"},{"status":"not_started","attempts":0}]'),
    ('failed', 7, 's1', 0, 'compensate', 'parked', '{"s1": {}}',
     '[{"status":"compensation_failed","attempts":1,"compensate_attempts":3},{"status":"failed","attempts":1,"error":"out of stock"},{"status":"not_started","attempts":0}]')
) AS v(status, version, step, step_index, action, phase, results, steps) ON v.status = g.status
CROSS JOIN LATERAL (SELECT v.results::jsonb AS results, v.steps::jsonb AS steps) j
ORDER BY g.created_at;

INSERT INTO saga_events (saga_id, version, event, step, status, at)
SELECT s.id, n,
       CASE WHEN n = 1 THEN 'started' WHEN n = s.version AND s.status <> 'running' THEN s.status
            ELSE 'step_done' END,
       's' || (1 + (n - 1) % 3),
       CASE WHEN n = s.version THEN s.status ELSE 'running' END,
       s.created_at + make_interval(secs => 0.05 * n)
FROM sagas s CROSS JOIN LATERAL generate_series(1, s.version) AS n
ORDER BY s.created_at, n;
SQL
    sql -c "VACUUM ANALYZE sagas" -c "VACUUM ANALYZE saga_events"
    echo "list-bench: filled in $((SECONDS - t0)) s" >&2
else
    start_service # rehydrates the unfinished sagas of the kept database
fi

# --- the shapes -------------------------------------------------------------------------
# Each shape is a query string of GET /sagas and the statement src/store/queries.rs::list
# builds for it (same predicates, same order, literal values instead of parameters).
COLS="id, saga, definition_version, status, step, version, created_at, updated_at"
UNFINISHED="status IN ('running', 'compensating', 'failed')"
ts() { date -u -d "$1" +%Y-%m-%dT%H:%M:%S.%6NZ; }
longest_wait_s=$((86400 * 3))
# Cursors `<created_at µs>_<id>` at a depth of the unfiltered list and of one status.
cursor_at() { # $1 extra WHERE ("" for none), $2 offset
    sql -c "SELECT (extract(epoch FROM created_at) * 1000000)::bigint || '_' || id FROM sagas
            ${1:+WHERE $1} ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1"
}
after_sql() { # cursor -> predicate
    local us=${1%%_*} id=${1#*_}
    echo "(created_at, id) < (timestamptz 'epoch' + $us * interval '1 microsecond', '$id'::uuid)"
}
page2=$(cursor_at "" 49)
deep=$(cursor_at "" $((ROWS / 2)))
deepest=$(cursor_at "" $((ROWS - 1000)))
deep_completed=$(cursor_at "status = 'completed'" $((ROWS * 4 / 10)))
deep_refund=$(cursor_at "saga = 'refund'" $((ROWS / 100 - 100)))
d1=$(ts '-1 day'); d2=$(ts '-2 days'); d7=$(ts '-7 days'); d15=$(ts '-15 days'); h1=$(ts '-1 hour')
idle1h=$(ts '-1 hour'); idle3d=$(ts "-$longest_wait_s seconds"); idle40d=$(ts '-40 days')
# The stuck filter's bound on created_at (src/store/queries.rs): the idle time plus an hour.
born1h=$(ts '0 hours'); born3d=$(ts "-$longest_wait_s seconds 1 hour"); born40d=$(ts '-40 days 1 hour')

SHAPES=(
    "none|limit=50|"
    "none, limit=500|limit=500|"
    "status=completed|status=completed|status = 'completed'"
    "status=running|status=running|status = 'running'"
    "status=failed|status=failed|status = 'failed'"
    "saga=trip|saga=trip|saga = 'trip'"
    "saga=refund (1%)|saga=refund|saga = 'refund'"
    "created_after 1 h|created_after=$h1|created_at > '$h1'"
    "created 2..1 days ago|created_after=$d2&created_before=$d1|created_at > '$d2' AND created_at < '$d1'"
    "created_before 15 days|created_before=$d15|created_at < '$d15'"
    "stuck=true (idle > 3 d)|stuck=true|updated_at < '$idle3d' AND $UNFINISHED AND created_at < '$born3d'"
    "stuck_s=3600|stuck_s=3600|updated_at < '$idle1h' AND $UNFINISHED AND created_at < '$born1h'"
    "stuck_s=40 days (none idle so long)|stuck_s=$((40 * 86400))|updated_at < '$idle40d' AND $UNFINISHED AND created_at < '$born40d'"
    "status=completed&saga=refund|status=completed&saga=refund|status = 'completed' AND saga = 'refund'"
    "status=failed&saga=refund|status=failed&saga=refund|status = 'failed' AND saga = 'refund'"
    "status=compensated&saga=refund|status=compensated&saga=refund|status = 'compensated' AND saga = 'refund'"
    "status=compensated&created 7 d|status=compensated&created_after=$d7|status = 'compensated' AND created_at > '$d7'"
    "saga=order&created_before 15 d|saga=order&created_before=$d15|saga = 'order' AND created_at < '$d15'"
    "saga=trip&stuck_s=3600|saga=trip&stuck_s=3600|saga = 'trip' AND updated_at < '$idle1h' AND $UNFINISHED AND created_at < '$born1h'"
    "cursor: page 2|after=$page2|$(after_sql "$page2")"
    "cursor: $((ROWS / 2)) rows deep|after=$deep|$(after_sql "$deep")"
    "cursor: $((ROWS - 1000)) rows deep|after=$deepest|$(after_sql "$deepest")"
    "status=completed, cursor 40% deep|status=completed&after=$deep_completed|status = 'completed' AND $(after_sql "$deep_completed")"
    "saga=refund, cursor at its end|saga=refund&after=$deep_refund|saga = 'refund' AND $(after_sql "$deep_refund")"
)

# Index names and top-N sorts of a plan, on one line.
plan_summary() {
    grep -oE '(Seq Scan on [a-z_]+|Index Only Scan( Backward)? using [a-z_]+|Index Scan( Backward)? using [a-z_]+|Bitmap Index Scan on [a-z_]+|Sort Method: (top-N heapsort|quicksort|external merge)|BitmapAnd|BitmapOr)' |
        sed -E 's/Index Only Scan( Backward)? using/index-only/; s/Index Scan( Backward)? using/index/;
                s/Bitmap Index Scan on/bitmap/; s/Seq Scan on/SEQ SCAN/; s/Sort Method: /sort: /' |
        awk '!seen[$0]++' | paste -sd ',' | sed 's/,/, /g'
}

url=http://127.0.0.1:$PORT/sagas
: > "$OUT/plans.txt"
{
    printf '%s\n' "GET /sagas on $ROWS sagas ($(sql -c "SELECT count(*) FROM saga_events") history rows); $REPS requests per shape after 20 warm-up, one keep-alive connection"
    printf '| %-40s | %5s | %7s | %7s | %7s | %8s | %s |\n' shape rows "p50 ms" "p99 ms" "max ms" "SQL ms" "plan (EXPLAIN ANALYZE)"
    printf '|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..42})" ------- --------- --------- --------- ---------- ------------------------
    for s in "${SHAPES[@]}"; do
        IFS='|' read -r label query where <<< "$s"
        limit=50; [[ $query =~ limit=([0-9]+) ]] && limit=${BASH_REMATCH[1]}
        rows=$(curl -fsS "$url?$query" | jq '.sagas | length')
        args=()
        for _ in $(seq 20); do args+=(-o /dev/null "$url?$query"); done
        curl -fsS "${args[@]}" >/dev/null
        args=()
        for _ in $(seq "$REPS"); do args+=(-o /dev/null "$url?$query"); done
        stats=$(curl -fsS -w '%{time_total}\n' "${args[@]}" | sort -g |
            awk '{ t[NR] = $1 * 1000 } END {
                p50 = t[int((NR + 1) / 2)]; i = int(NR * 0.99 + 0.999); if (i > NR) i = NR
                printf "%.2f %.2f %.2f", p50, t[i], t[NR] }')
        read -r p50 p99 max <<< "$stats"
        plan=$(sql -c "EXPLAIN (ANALYZE, BUFFERS) SELECT $COLS FROM sagas ${where:+WHERE $where} ORDER BY created_at DESC, id DESC LIMIT $limit")
        exec_ms=$(grep -oE 'Execution Time: [0-9.]+' <<< "$plan" | grep -oE '[0-9.]+$')
        printf '| %-40s | %5s | %7s | %7s | %7s | %8s | %s |\n' "$label" "$rows" "$p50" "$p99" "$max" "$exec_ms" "$(plan_summary <<< "$plan")"
        echo "== $label: $where" >> "$OUT/plans.txt"
        echo "$plan" >> "$OUT/plans.txt"
    done
} | tee "$OUT/results.md"
echo "plans: $OUT/plans.txt" >&2
