#!/usr/bin/env bash
# One command: set up .venv with the test dependencies and run the whole test suite
# (unit tests, the tiny end-to-end DAG run, lint checks). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh test
exec .venv/bin/python -m pytest "$@"
