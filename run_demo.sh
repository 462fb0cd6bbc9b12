#!/usr/bin/env bash
# One command: set up .venv and run the whole workflow on the embedded demo cohort.
# Writes results/brats_timm.json (+ results/brats_timm_cases.csv, results/brats_timm_boxplots.png).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh
exec .venv/bin/snakemake --cores "${CORES:-all}" results/brats_timm.json "$@"
