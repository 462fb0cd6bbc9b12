#!/usr/bin/env bash
# One command: set up .venv with the test dependencies and run the whole test suite
# (unit tests, the tiny end-to-end DAG run, lint checks). Extra args go to pytest.
# Test files run side by side in MEDSEG_TEST_WORKERS processes (default: the CPU count, at most 4;
# 1: one process), each file whole in one of them (its module fixtures, e.g. the tiny run, once).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh test
workers=${MEDSEG_TEST_WORKERS:-$(n=$(nproc 2>/dev/null || echo 1); echo $((n < 4 ? n : 4)))}
if [ "$workers" -gt 1 ]; then
  exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
fi
exec .venv/bin/python -m pytest "$@"
