#!/usr/bin/env bash
# Creates target/venv with pika and psycopg (binary) for examples/python/participant.py and
# its test (tests/api/python.rs, which uses $SAGA_TEST_PYTHON). Never fails the build: when
# python3, venv or the packages are unavailable it says so and the test skips itself.
#   bash scripts/python-venv.sh && export SAGA_TEST_PYTHON=target/venv/bin/python
set -u
VENV="${SAGA_VENV_DIR:-target/venv}"
if ! command -v python3 >/dev/null 2>&1; then
    echo "python-venv: no python3: the Python participant's test will be skipped" >&2
    exit 0
fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pika, psycopg' 2>/dev/null; then
    exit 0
fi
if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    echo "python-venv: python3 -m venv failed (apt-get install python3-venv?): the Python participant's test will be skipped" >&2
    exit 0
fi
if ! "$VENV/bin/pip" install --quiet pika 'psycopg[binary]'; then
    echo "python-venv: cannot install pika and psycopg: the Python participant's test will be skipped" >&2
    exit 0
fi
echo "python-venv: $VENV ready (pika, psycopg)" >&2
