#!/usr/bin/env bash
# Make sure the local services saga-service and its tests need are answering:
#   PostgreSQL on 127.0.0.1:5432 and RabbitMQ (AMQP) on 127.0.0.1:5672.
#
# For each service:
#   - already answering          -> nothing to do;
#   - installed but not answering -> start it and wait (with a deadline);
#   - not installed              -> install it with apt-get when we are root on
#                                   Debian, otherwise say what is missing and exit 1.
# One line per service says what was found and done. Exit 0 when both answer.
#
# With --with-browser (what `make test` passes) it also makes sure headless
# Chromium and chromedriver are there for the saga browser's test
# (tests/api/ui.rs): installed with apt-get (chromium, chromium-driver) when
# missing and we are root on Debian, otherwise it says what to install and exits 1.
#
# Environment:
#   SERVICES_TIMEOUT   seconds to wait for a service to answer after starting it (60)
#   SAGA_TEST_CHROMIUM, SAGA_TEST_CHROMEDRIVER
#                      the browser and driver the test uses (/usr/bin/chromium, /usr/bin/chromedriver)
set -euo pipefail

WITH_BROWSER=0
for arg in "$@"; do
    case "$arg" in
    --with-browser) WITH_BROWSER=1 ;;
    *)
        printf 'usage: %s [--with-browser]\n' "$0" >&2
        exit 2
        ;;
    esac
done

readonly PG_HOST=127.0.0.1 PG_PORT=5432
readonly AMQP_HOST=127.0.0.1 AMQP_PORT=5672
readonly TIMEOUT="${SERVICES_TIMEOUT:-60}"
readonly POLL_INTERVAL=0.5

# Set when this script installed PostgreSQL: only then may it touch pg_hba.conf.
PG_FRESH_INSTALL=0
APT_UPDATED=0
FAILED=0

say() { printf '%s\n' "$*"; }
warn() { printf '%s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# True when something accepts a TCP connection on host:port (bash /dev/tcp, 2 s cap).
tcp_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" >/dev/null 2>&1
}

# wait_until SECONDS CMD...: poll CMD until it succeeds or the deadline passes.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep "$POLL_INTERVAL"
    done
}

is_root_debian() {
    [[ -f /etc/debian_version && "$(id -u)" -eq 0 ]] && have apt-get
}

apt_install() {
    if ((APT_UPDATED == 0)); then
        say "apt: apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        APT_UPDATED=1
    fi
    say "apt: apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL

pg_answers() {
    if have pg_isready; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
    else
        tcp_open "$PG_HOST" "$PG_PORT"
    fi
}

pg_installed() {
    have pg_ctlcluster && [[ -n "$(pg_cluster_version)" ]]
}

# Version of the Debian cluster "main" that serves port 5432 (or the first one).
pg_cluster_version() {
    local ver="" dir
    if have pg_lsclusters; then
        # columns: Ver Cluster Port Status Owner Data-directory Log-file
        ver="$(pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$2 == "main" && $3 == port { print $1; exit }')"
    fi
    if [[ -z "$ver" && -d /etc/postgresql ]]; then
        for dir in /etc/postgresql/*/main; do
            if [[ -d "$dir" ]]; then
                ver="${dir#/etc/postgresql/}"
                ver="${ver%/main}"
                break
            fi
        done
    fi
    printf '%s' "$ver"
}

pg_cluster_running() {
    # pg_ctlcluster status: 0 running, 3 not running, 4 no such cluster
    pg_ctlcluster --skip-systemctl-redirect "$1" main status >/dev/null 2>&1
}

# On a PostgreSQL this script has just installed, let the postgres user in over
# TCP from 127.0.0.1 without a password, as the tests' URL expects
# (postgres://postgres@127.0.0.1:5432/postgres). pg_hba.conf is first-match, so
# the rule goes before every other one.
pg_trust_localhost() {
    local ver="$1" hba
    hba="/etc/postgresql/$ver/main/pg_hba.conf"
    [[ -f "$hba" ]] || return 0
    if grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        return 0
    fi
    say "PostgreSQL: fresh install: adding 'host all all 127.0.0.1/32 trust' to $hba"
    local tmp
    tmp="$(mktemp)"
    {
        printf '# Added by scripts/services.sh (saga-service): password-less TCP from 127.0.0.1.\n'
        printf 'host all all 127.0.0.1/32 trust\n'
        cat "$hba"
    } >"$tmp"
    cat "$tmp" >"$hba" # keeps the file's owner and mode
    rm -f "$tmp"
    if pg_cluster_running "$ver"; then
        pg_ctlcluster --skip-systemctl-redirect "$ver" main reload >/dev/null
    fi
}

pg_start_and_wait() {
    local ver
    ver="$(pg_cluster_version)"
    if ((PG_FRESH_INSTALL)); then
        pg_trust_localhost "$ver"
    fi
    if pg_cluster_running "$ver"; then
        say "PostgreSQL: cluster $ver/main is already running; waiting up to ${TIMEOUT}s for it to accept connections"
    else
        if ! pg_ctlcluster --skip-systemctl-redirect "$ver" main start; then
            warn "PostgreSQL: FAILED to start cluster $ver/main (try as root: pg_ctlcluster --skip-systemctl-redirect $ver main start; log: /var/log/postgresql/postgresql-$ver-main.log)"
            return 1
        fi
    fi
    if wait_until "$TIMEOUT" pg_answers; then
        return 0
    fi
    warn "PostgreSQL: FAILED: cluster $ver/main does not answer on $PG_HOST:$PG_PORT after ${TIMEOUT}s (log: /var/log/postgresql/postgresql-$ver-main.log)"
    return 1
}

# Not fatal: tell the user early when the tests' URL would be refused.
pg_check_test_login() {
    have psql || return 0
    if ! PGCONNECT_TIMEOUT=3 psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
        warn "PostgreSQL: warning: user postgres cannot log in over TCP without a password;" \
            "the tests' default postgres://postgres@$PG_HOST:$PG_PORT/postgres will fail" \
            "(set SAGA_TEST_DATABASE_URL, or add 'host all all 127.0.0.1/32 trust' to pg_hba.conf)"
    fi
}

# ---------------------------------------------------------------- RabbitMQ

# The AMQP listener accepts connections. (rabbitmq-diagnostics ping alone is
# not enough: after `rabbitmqctl stop_app` the node answers ping but port 5672
# is closed.)
amqp_answers() {
    tcp_open "$AMQP_HOST" "$AMQP_PORT"
}

rabbit_installed() {
    have rabbitmq-server && have rabbitmqctl
}

# The Erlang node is up, whether or not the rabbit application runs in it.
# (`rabbitmqctl status` is no test: it fails while the app is stopped.)
rabbit_node_up() {
    if have rabbitmq-diagnostics; then
        timeout 20 rabbitmq-diagnostics -q ping >/dev/null 2>&1
    else
        timeout 20 rabbitmqctl -q ping >/dev/null 2>&1
    fi
}

# Run a start command. As root a failure is not final (a node that is already
# booting refuses a second start; the wait that follows decides); as another
# user it usually means "not allowed", so say so and give up.
rabbit_run() {
    local out
    if out="$("$@" 2>&1)"; then
        return 0
    fi
    if [[ "$(id -u)" -eq 0 ]]; then
        return 0
    fi
    warn "RabbitMQ: FAILED: '$*' failed (run this script as root?): $(printf '%s' "$out" | tr -s '\n' ' ' | cut -c1-300)"
    return 1
}

rabbit_start_and_wait() {
    if rabbit_node_up; then
        # The node runs but the rabbit app does not listen: `rabbitmqctl
        # stop_app` was used, or the node is still booting.
        say "RabbitMQ: node is running but $AMQP_HOST:$AMQP_PORT is closed; rabbitmqctl start_app"
        rabbit_run timeout "$TIMEOUT" rabbitmqctl -q start_app || return 1
    else
        say "RabbitMQ: node not running; rabbitmq-server -detached"
        rabbit_run rabbitmq-server -detached || return 1
    fi
    local deadline=$((SECONDS + TIMEOUT)) left
    if ! wait_until "$TIMEOUT" amqp_answers; then
        warn "RabbitMQ: FAILED: nothing answers on $AMQP_HOST:$AMQP_PORT after ${TIMEOUT}s (logs: /var/log/rabbitmq/)"
        return 1
    fi
    # The listener opens near the end of boot; wait for the boot to finish.
    left=$((deadline - SECONDS))
    ((left >= 5)) || left=5
    if ! timeout "$((left + 5))" rabbitmqctl -q await_startup --timeout "$left" >/dev/null 2>&1; then
        warn "RabbitMQ: FAILED: port $AMQP_PORT is open but the node did not finish booting (rabbitmqctl await_startup)"
        return 1
    fi
}

# ---------------------------------------------------------------- main

pg_state=missing
if pg_answers; then
    pg_state=up
elif pg_installed; then
    pg_state=stopped
fi

rabbit_state=missing
if amqp_answers; then
    rabbit_state=up
elif rabbit_installed; then
    rabbit_state=stopped
fi

# Install what is missing, in one go, when we may.
missing_pkgs=()
[[ "$pg_state" == missing ]] && missing_pkgs+=(postgresql)
[[ "$rabbit_state" == missing ]] && missing_pkgs+=(rabbitmq-server)
if ((${#missing_pkgs[@]} > 0)); then
    if is_root_debian; then
        apt_install "${missing_pkgs[@]}"
        if [[ "$pg_state" == missing ]]; then
            PG_FRESH_INSTALL=1
            if pg_installed; then
                pg_state=stopped
            else
                warn "PostgreSQL: FAILED: apt-get installed postgresql but no cluster 'main' exists (create one: pg_createcluster <version> main)"
                FAILED=1
            fi
        fi
        if [[ "$rabbit_state" == missing ]]; then
            rabbit_state=stopped
        fi
    else
        warn "Missing: ${missing_pkgs[*]} (nothing answers on the port and the package is not installed)."
        warn "Install with:  sudo apt-get install -y ${missing_pkgs[*]}   (Debian/Ubuntu), then run this script again."
        warn "This script installs them itself only when run as root on Debian."
        [[ " ${missing_pkgs[*]} " == *" postgresql "* ]] &&
            warn "PostgreSQL: MISSING: nothing on $PG_HOST:$PG_PORT and no pg_ctlcluster / cluster in /etc/postgresql"
        [[ " ${missing_pkgs[*]} " == *" rabbitmq-server "* ]] &&
            warn "RabbitMQ: MISSING: nothing on $AMQP_HOST:$AMQP_PORT and no rabbitmq-server / rabbitmqctl"
        exit 1
    fi
fi

case "$pg_state" in
up)
    say "PostgreSQL: already answering on $PG_HOST:$PG_PORT"
    ;;
stopped)
    if ((PG_FRESH_INSTALL)); then
        say "PostgreSQL: installed by this script; starting it"
    else
        say "PostgreSQL: installed but not answering on $PG_HOST:$PG_PORT; starting it"
    fi
    if pg_start_and_wait; then
        say "PostgreSQL: started, answering on $PG_HOST:$PG_PORT"
    else
        FAILED=1
    fi
    ;;
esac
if [[ "$pg_state" != missing ]] && pg_answers; then
    pg_check_test_login
fi

case "$rabbit_state" in
up)
    say "RabbitMQ: already answering on $AMQP_HOST:$AMQP_PORT"
    ;;
stopped)
    if rabbit_start_and_wait; then
        say "RabbitMQ: started, answering on $AMQP_HOST:$AMQP_PORT"
    else
        FAILED=1
    fi
    ;;
esac

# ---------------------------------------------------------------- Chromium

readonly CHROMIUM="${SAGA_TEST_CHROMIUM:-/usr/bin/chromium}"
readonly CHROMEDRIVER="${SAGA_TEST_CHROMEDRIVER:-/usr/bin/chromedriver}"

browser_present() {
    [[ -x "$CHROMIUM" && -x "$CHROMEDRIVER" ]]
}

if ((WITH_BROWSER)); then
    if browser_present; then
        say "Chromium: $CHROMIUM and $CHROMEDRIVER are installed (for the saga browser's test)"
    elif is_root_debian && [[ -z "${SAGA_TEST_CHROMIUM:-}${SAGA_TEST_CHROMEDRIVER:-}" ]]; then
        say "Chromium: $CHROMIUM or $CHROMEDRIVER missing; installing them for the saga browser's test"
        apt_install chromium chromium-driver fonts-dejavu-core
        if browser_present; then
            say "Chromium: installed"
        else
            warn "Chromium: FAILED: apt-get ran but $CHROMIUM or $CHROMEDRIVER is still missing"
            FAILED=1
        fi
    else
        warn "Chromium: MISSING: the saga browser's test (tests/api/ui.rs) needs $CHROMIUM and $CHROMEDRIVER."
        warn "Install with:  sudo apt-get install -y chromium chromium-driver   (Debian), or run this script as root,"
        warn "or point SAGA_TEST_CHROMIUM and SAGA_TEST_CHROMEDRIVER at a Chromium and its matching chromedriver."
        FAILED=1
    fi
fi

# The Makefile puts ~/.cargo/bin on PATH; a shell may not have it.
if ! have cargo; then
    if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        say "cargo: not on PATH, but $HOME/.cargo/bin/cargo exists (make adds ~/.cargo/bin to PATH; in your shell: . \"\$HOME/.cargo/env\")"
    else
        say "cargo: not found; install Rust >= 1.85 with rustup: curl https://sh.rustup.rs -sSf | sh"
    fi
fi

if ((FAILED)); then
    exit 1
fi
