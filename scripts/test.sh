#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what is missing, then runs the
# linters, the type checker, the profiles' golden vectors and pytest (unit + integration
# tests against a real Mosquitto and InfluxDB that the tests start on free loopback ports).
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== golden vectors (hub profiles test)"
.venv/bin/hub profiles test
echo "== pytest"
# pytest exits 5 when it collected no test: that is a failure here too (set -e).
.venv/bin/pytest "$@"
