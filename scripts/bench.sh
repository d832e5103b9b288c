#!/usr/bin/env bash
# Reproduces the README's Performance table (`make bench`): starts the release
# orchestrator and stub participants against the local PostgreSQL and RabbitMQ,
# runs every workload with saga-bench, and prints one line per run plus medians.
# Knobs: BENCH_RUNS (3), BENCH_SAGAS (20000), BENCH_IDLE_SAGAS (100000), BENCH_PORT (3100),
# BENCH_BIN (target/release: the binaries to measure, e.g. another build for a before/after),
# BENCH_SVC (the orchestrator alone from another build; stubs and saga-bench from BENCH_BIN),
# BENCH_ONLY (space-separated subset of: classic quorum steps10 payload rehydrate instances;
# also `half`, not in the default set: the half-peak runs alone, after one peak run),
# BENCH_HALF_RUNS (1: runs at half the peak rate), BENCH_HALF_RATE (that rate; default half
# the median happy rate at C = 1,000 of this run), BENCH_TIMELINE (1: the half-peak runs also
# print each second's p50, p99, worst latency and machine busy share).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${BENCH_BIN:-target/release}
SVC=${BENCH_SVC:-$BIN/saga-service}
PORT=${BENCH_PORT:-3100}
RUNS=${BENCH_RUNS:-3}
HALF_RUNS=${BENCH_HALF_RUNS:-1}
TIMELINE=$([ "${BENCH_TIMELINE:-0}" = 1 ] && echo --timeline || true)
SAGAS=${BENCH_SAGAS:-20000}
IDLE=${BENCH_IDLE_SAGAS:-100000}
ONLY=${BENCH_ONLY:-classic quorum steps10 payload rehydrate instances}
ADMIN=${SAGA_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=saga_bench
DB_URL="${ADMIN%/*}/$DB"
OUT=target/bench
DEFS=$OUT/definitions.toml
RESULTS=$OUT/results.txt
mkdir -p "$OUT"
: > "$RESULTS"

SVC_PID=""
SVC_PIDS=()
STUB_PIDS=()

stop_stack() {
    for p in "${STUB_PIDS[@]}" "${SVC_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${STUB_PIDS[@]}" "${SVC_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    STUB_PIDS=()
    SVC_PIDS=()
    SVC_PID=""
}

# Queues the orchestrator declares under bench.responses: its DLQ and 64 partition queues.
reply_queues() { echo bench.responses bench.responses.dlq; seq -f 'bench.responses.p%g' 0 63; seq -f 'bench.responses.i.bench-%g' 0 2; }
trap stop_stack EXIT

wants() { [[ " $ONLY " == *" $1 "* ]]; }

step_names() { seq -s, -f 'service%g' 1 "$1"; }

write_definitions() {
    {
        echo '[[sagas]]'
        echo 'name = "bench"'
        for i in $(seq 1 "$1"); do
            printf '[[sagas.steps]]\nname = "service%s"\nqueue = "bench.c%s"\n' "$i" "$i"
        done
    } > "$DEFS"
}

wait_ready() { # $1 instance index (default 0)
    local deadline=$((SECONDS + 120))
    until curl -fs "http://127.0.0.1:$((PORT + ${1:-0}))/readiness" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then echo "bench: orchestrator not ready" >&2; exit 1; fi
        sleep 0.05
    done
}

start_orchestrator() { # $1 queue type, $2 instance index (default 0): port PORT + index
    local idx=${2:-0}
    SAGA_DATABASE_URL=$DB_URL SAGA_HTTP_ADDR=127.0.0.1:$((PORT + idx)) SAGA_DEFINITIONS=$DEFS \
        SAGA_REPLY_QUEUE=bench.responses SAGA_QUEUE_TYPE=$1 SAGA_INSTANCE_ID="bench-$idx" \
        RUST_LOG=warn "$SVC" serve >> "$OUT/orchestrator.log" 2>&1 &
    SVC_PIDS+=($!)
    SVC_PID=${SVC_PIDS[0]}
}

start_stubs() { # $1 first step, $2 last step
    for i in $(seq "$1" "$2"); do
        RUST_LOG=warn "$BIN/saga-stub" --queue "bench.c$i" --service "service$i" --prefetch 500 \
            >> "$OUT/stubs.log" 2>&1 &
        STUB_PIDS+=($!)
    done
}

# Every queue a run may have declared (rabbitmqctl starts a VM per call: four at a time).
delete_queues() {
    # shellcheck disable=SC2016 # $1 is expanded by the inner sh
    { reply_queues; seq -f 'bench.c%g' 1 10; } |
        xargs -P 4 -I{} sh -c 'rabbitmqctl -q delete_queue "$1" >/dev/null 2>&1 || true' _ {}
}

# A fresh database and queues, the orchestrator, and stubs for steps $3..$2.
fresh_stack() { # $1 queue type, $2 steps, $3 first stubbed step (default 1)
    stop_stack
    psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
    delete_queues
    write_definitions "$2"
    start_orchestrator "$1"
    wait_ready
    start_stubs "${3:-1}" "$2"
}

# Row updates of `sagas` so far, and how many were HOT (no index entry written).
sagas_updates() {
    psql "$DB_URL" -tAc "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'sagas'" 2>/dev/null || echo "0 0"
}

bench() { # label, steps, saga-bench args...
    local label=$1 steps=$2
    shift 2
    local u0 u1
    u0=$(sagas_updates)
    "$BIN/saga-bench" --url "http://127.0.0.1:$PORT" --saga bench --steps "$(step_names "$steps")" \
        --pid "$SVC_PID" --label "$label" "$@" | tee -a "$RESULTS"
    # The backends report their counts within a second of going idle.
    sleep 1
    u1=$(sagas_updates)
    awk -v a="$u0" -v b="$u1" -v l="$label" 'BEGIN {
        split(a, x, " "); split(b, y, " "); n = y[1] - x[1]; h = y[2] - x[2];
        printf "  db[%s]: sagas rows updated %d, HOT %d (%.0f%%)\n", l, n, h, (n > 0 ? 100 * h / n : 0)
    }' | tee -a "$OUT/db.txt"
}

# The median happy rate at C = 1,000 of this run so far (the `[classic]` lines).
peak_rate() {
    awk '/\[classic\]/ {for (i=1;i<=NF;i++) if ($i ~ /^sagas_per_s=/) {split($i,a,"="); print a[2]}}' "$RESULTS" |
        sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)] + 0}'
}

# BENCH_HALF_RUNS runs offered BENCH_HALF_RATE starts per second, or half of $1.
half_peak_runs() { # $1 peak rate
    for _ in $(seq "$HALF_RUNS"); do
        bench half-peak 3 --sagas "$SAGAS" --concurrency 100000 --rate "${BENCH_HALF_RATE:-$(($1 / 2))}" ${TIMELINE:+"$TIMELINE"}
    done
}

metric() { curl -fs "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

echo "bench: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -sr); PostgreSQL, RabbitMQ, orchestrator and stubs on this machine"

if wants classic; then
    fresh_stack classic 3
    bench warmup 3 --sagas 2000 --concurrency 200 >/dev/null
    for _ in $(seq "$RUNS"); do bench classic 3 --sagas "$SAGAS" --concurrency 1000; done
    for _ in $(seq "$RUNS"); do bench classic-200 3 --sagas "$SAGAS" --concurrency 200; done
    peak=$(peak_rate)
    bench one-at-a-time 3 --sagas 500 --concurrency 1
    half_peak_runs "$peak"
    for _ in $(seq "$RUNS"); do bench compensate 3 --sagas "$SAGAS" --concurrency 1000 --workload compensate; done
    for _ in $(seq "$RUNS"); do bench mixed 3 --sagas "$SAGAS" --concurrency 1000 --workload mixed; done
fi
if wants half; then
    fresh_stack classic 3
    bench warmup 3 --sagas 2000 --concurrency 200 >/dev/null
    [ -n "${BENCH_HALF_RATE:-}" ] || bench classic 3 --sagas "$SAGAS" --concurrency 1000
    half_peak_runs "$(peak_rate)"
fi
if wants payload; then
    fresh_stack classic 3
    bench payload-100B 3 --sagas "$SAGAS" --concurrency 1000 --payload-bytes 100
    bench payload-10KiB 3 --sagas "$SAGAS" --concurrency 1000 --payload-bytes 10240
fi
if wants quorum; then
    fresh_stack quorum 3
    bench warmup 3 --sagas 2000 --concurrency 200 >/dev/null
    for _ in $(seq "$RUNS"); do bench quorum 3 --sagas "$SAGAS" --concurrency 1000; done
fi
if wants steps10; then
    fresh_stack classic 10
    bench steps-10 10 --sagas "$((SAGAS / 2))" --concurrency 1000
fi
if wants rehydrate; then
    # Step 1's participant is held (no consumer): every saga waits on its first command.
    fresh_stack classic 3 2
    before=$(rss_kib "$SVC_PID")
    bench idle 3 --sagas "$IDLE" --concurrency 500 --workload hold
    # Idle actors passivate after SAGA_PASSIVATE_AFTER_MS (10 s): wait until none is live.
    deadline=$((SECONDS + 120))
    until [ "$(metric saga_live_actors || echo 1)" = 0 ] || ((SECONDS > deadline)); do sleep 0.5; done
    after=$(rss_kib "$SVC_PID")
    echo "idle: $IDLE sagas in flight, orchestrator RSS ${before} KiB -> ${after} KiB, $(( (after - before) * 1024 / IDLE )) bytes per saga" | tee -a "$RESULTS"
    kill -9 "$SVC_PID"
    wait "$SVC_PID" 2>/dev/null || true
    SVC_PIDS=()
    t0=$(date +%s.%N)
    start_orchestrator classic
    wait_ready
    t1=$(date +%s.%N)
    deadline=$((SECONDS + 300))
    until [ "$(metric saga_commands_confirmed_total || echo 0)" -ge "$IDLE" ] 2>/dev/null; do
        ((SECONDS < deadline)) || { echo "bench: re-sends did not finish" >&2; break; }
        sleep 0.1
    done
    t2=$(date +%s.%N)
    echo "rehydrate: $IDLE sagas, ready after $(echo "$t1 - $t0" | bc) s, every pending command re-sent and confirmed after $(echo "$t2 - $t0" | bc) s, RSS $(rss_kib "$SVC_PID") KiB" | tee -a "$RESULTS"
fi
if wants instances; then
    # 1, 2 and 3 instances on one database and broker; starts spread round-robin over them.
    for k in 1 2 3; do
        fresh_stack classic 3
        urls="http://127.0.0.1:$PORT"
        for idx in $(seq 1 $((k - 1))); do
            start_orchestrator classic "$idx"
            wait_ready "$idx"
            urls="$urls,http://127.0.0.1:$((PORT + idx))"
        done
        # Wait until the 64 partitions are spread over all k instances.
        deadline=$((SECONDS + 60))
        until [ "$(psql "$DB_URL" -tAc "SELECT count(DISTINCT owner) FROM saga_partitions WHERE expires_at > now()")" = "$k" ]; do
            ((SECONDS < deadline)) || { echo "bench: partitions not spread over $k instances" >&2; break; }
            sleep 0.2
        done
        bench warmup 3 --sagas 2000 --concurrency 200 --url "$urls" >/dev/null
        for _ in $(seq "$RUNS"); do bench "instances-$k" 3 --sagas "$SAGAS" --concurrency 1000 --url "$urls"; done
    done
fi
stop_stack
delete_queues
psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null

echo "bench: medians (sagas/s, p50 ms, p99 ms, transitions/s) per label"
awk '/^workload=/ && !/\[warmup\]/ {
    label=$1; for (i=1;i<=NF;i++) { split($i,a,"="); v[a[1]]=a[2] }
    n[label]++; k=n[label]; s[label,k]=v["sagas_per_s"]; p50[label,k]=v["p50_ms"]; p99[label,k]=v["p99_ms"]; t[label,k]=v["transitions_per_s"]
} END {
    for (l in n) {
        # the run with the median saga rate
        best=1
        for (i=1;i<=n[l];i++) { below=0; for (j=1;j<=n[l];j++) if (s[l,j]+0 < s[l,i]+0) below++; if (below == int((n[l]-1)/2)) best=i }
        printf "  %-45s %6s %8s %8s %7s\n", l, s[l,best], p50[l,best], p99[l,best], t[l,best]
    }
}' "$RESULTS"
