# saga-service: local development, tests and images.
# `make` alone lists the targets. Environment variables pass through to the
# programs (SAGA_HTTP_ADDR, SAGA_DATABASE_URL, SAGA_AMQP_URL, RUST_LOG, ...),
# from the environment or the command line: `make run SAGA_HTTP_ADDR=0.0.0.0:3001`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# rustup installs cargo in ~/.cargo/bin, which a fresh shell may not have on PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
RUST_MIN_VERSION := 1.85
RELEASE_DIR := target/release
COMPOSE := docker compose -f docker/compose.yaml
IMAGE ?= saga-service:latest

# The tests create their own databases and queues on these servers.
export SAGA_TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
export SAGA_TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/%2f

# `make migrate` / `make run` against the local PostgreSQL, which trusts
# 127.0.0.1 (see scripts/services.sh), unless SAGA_DATABASE_URL says otherwise.
LOCAL_DATABASE_URL := postgres://postgres@127.0.0.1:5432/postgres

# Extra arguments: make test TEST_ARGS='saga::'; make bench BENCH_ONLY=classic BENCH_RUNS=1.
TEST_ARGS ?=

# The chaos suite's nemesis (tests/chaos/nemesis.rs): its length in seconds, and the seed of
# its fault schedule to replay one (printed at its start; empty: a new one).
export NEMESIS_SECS ?= 300
export NEMESIS_SEED ?=

.PHONY: help services toolchain build migrate run test check-ops lint bench list-bench retention-bench chaos nemesis dashboard-screenshot image up up-observability down

help:
	@echo 'saga-service make targets:'
	@echo '  services   make sure PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) answer'
	@echo '  build      cargo build --release --workspace --bins --examples (with kit/examples/payments.rs)'
	@echo '  migrate    services + build, then saga-service migrate'
	@echo '  run        services + build + migrate, then saga-service serve, stubs for commands1..3 and'
	@echo '             the payments example (logs in target/run/); Ctrl-C stops them all'
	@echo '  test       services (and headless Chromium + chromedriver), check-ops, then cargo test'
	@echo '             (SAGA_TEST_DATABASE_URL, SAGA_TEST_AMQP_URL; screenshots in target/ui-screenshots/)'
	@echo '  check-ops  alert rules and dashboard (promtool, scripts/check-observability.sh) and the'
	@echo '             Kubernetes manifests (kubernetes-validate in target/venv, scripts/check-k8s.sh)'
	@echo '  lint       cargo fmt --check and cargo clippy -D warnings'
	@echo '  bench      services + build, then scripts/bench.sh (every workload; BENCH_RUNS, BENCH_SAGAS, BENCH_ONLY)'
	@echo '  list-bench services + build, then scripts/list-bench.sh: GET /sagas latency and plans at'
	@echo '             1,000,000 sagas in a scratch database (LIST_BENCH_ROWS, LIST_BENCH_REPS, LIST_BENCH_KEEP)'
	@echo '  retention-bench services + build, then scripts/retention-bench.sh: the happy path with and'
	@echo '             without a retention sweep deleting 1,000,000 finished sagas (RETENTION_BENCH_ROWS, _SAGAS, _RUNS)'
	@echo '  chaos      services, then every ignored chaos test (cargo test --release --test chaos), the'
	@echo '             nemesis included (NEMESIS_SECS, default 300; NEMESIS_SEED to replay a schedule)'
	@echo '  nemesis    services, then the nemesis alone (NEMESIS_SECS, NEMESIS_SEED)'
	@echo '  dashboard-screenshot services + build, then scripts/dashboard-screenshot.sh: a few minutes of'
	@echo '             load scraped by Prometheus, the Grafana dashboard rendered into docs/dashboard.png'
	@echo '             (DASH_RATE, DASH_LOAD_SECS, DASH_OUT; Prometheus from Debian, matplotlib in target/dash-venv)'
	@echo '  image      docker build -f docker/Dockerfile -t $(IMAGE) .'
	@echo '  up / down  docker compose -f docker/compose.yaml up --build / down (every profile)'
	@echo '  up-observability  the same with Prometheus (:9090) and Grafana (:3002), profile observability'
	@echo '  toolchain  check that cargo (Rust >= $(RUST_MIN_VERSION)) is installed'

# `make test` adds --with-browser: headless Chromium and chromedriver for the saga browser's test.
services:
	bash scripts/services.sh $(SERVICES_ARGS)

# Fails with a clear message when cargo is missing or older than RUST_MIN_VERSION.
toolchain:
	@if ! command -v $(CARGO) >/dev/null 2>&1; then \
	  echo "cargo not found (looked on PATH and in $(HOME)/.cargo/bin)." >&2; \
	  echo "Install Rust >= $(RUST_MIN_VERSION) with rustup:  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh" >&2; \
	  echo "(Debian's apt package 'cargo' may be older than $(RUST_MIN_VERSION).)" >&2; \
	  exit 1; \
	fi; \
	ver="$$($(CARGO) --version | awk '{print $$2}')"; \
	if ! printf '%s\n%s\n' "$(RUST_MIN_VERSION)" "$${ver%%-*}" | sort -V -C; then \
	  echo "cargo $$ver is too old: saga-service needs Rust >= $(RUST_MIN_VERSION) (rustup update stable)." >&2; \
	  exit 1; \
	fi

build: toolchain
	$(CARGO) build --release --workspace --bins --examples

migrate: services build
	SAGA_DATABASE_URL="$${SAGA_DATABASE_URL:-$(LOCAL_DATABASE_URL)}" $(RELEASE_DIR)/saga-service migrate

run: migrate
	SAGA_BIN_DIR=$(RELEASE_DIR) bash scripts/run.sh

test: SERVICES_ARGS = --with-browser
test: services toolchain check-ops
	bash scripts/python-venv.sh
	$(CARGO) test --workspace $(TEST_ARGS) -- --test-threads=8

# promtool (Debian's prometheus package) and kubernetes-validate (PyPI, in target/venv)
# are installed by the scripts when missing; the metric names the dashboard and the rules
# use are checked by cargo test (tests/api/observability.rs).
check-ops:
	bash scripts/check-observability.sh
	bash scripts/check-k8s.sh

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: services build
	bash scripts/bench.sh

list-bench: services build
	bash scripts/list-bench.sh

retention-bench: services build
	bash scripts/retention-bench.sh

chaos: services toolchain
	$(CARGO) test --release --test chaos -- --ignored --test-threads=1 --nocapture

nemesis: services toolchain
	$(CARGO) test --release --test chaos -- --ignored --test-threads=1 --nocapture nemesis

# Not part of `make test`: it runs several minutes of load and needs Prometheus (Debian's
# package, installed by the script when missing and root) and matplotlib (in target/dash-venv).
dashboard-screenshot: services build
	bash scripts/dashboard-screenshot.sh

image:
	docker build -f docker/Dockerfile -t $(IMAGE) .

up:
	$(COMPOSE) up --build

up-observability:
	$(COMPOSE) --profile observability up --build

down:
	$(COMPOSE) --profile cluster --profile observability down
