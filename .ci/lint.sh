#!/usr/bin/env bash
# CI: static checks of the workflow, in about 20 s, without running a job.
#   1. snakemake --lint     (fails on errors; lint findings are printed as warnings,
#                            and fail too with LINT_STRICT=1)
#   2. snakefmt --check     Snakefile and workflow/rules/*.smk (prints the diff it wants)
#   3. dry runs (-n)        the default config.yaml, each tests/configs/*.yaml on top of it,
#                           and the default config through each profile in profiles/
#
#   bash .ci/lint.sh
#
# Env: SNAKEMAKE, SNAKEFMT (default: next to the venv's python, else on PATH), LINT_STRICT.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(dirname "$(command -v "$REPO/../venv/bin/snakemake" /work/venv/bin/snakemake snakemake 2>/dev/null | head -1)")
SNAKEMAKE=${SNAKEMAKE:-$BIN/snakemake}
SNAKEFMT=${SNAKEFMT:-$(command -v "$BIN/snakefmt" snakefmt 2>/dev/null | head -1)}
LINT_STRICT=${LINT_STRICT:-0}
WORK=$(mktemp -d /tmp/medseg-lint.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
failed=()
step() { printf '\n=== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failed+=("$1"); }

# every snakemake call runs in a scratch working dir: nothing is written into the repo
smk() { "$SNAKEMAKE" --snakefile "$REPO/Snakefile" --directory "$WORK" "$@"; }

step "snakemake --lint"
out=$(smk --lint --configfile "$REPO/config.yaml" 2>&1)
rc=$?
echo "$out"
if [[ $rc != 0 ]]; then
  if grep -q '^Lints for' <<<"$out"; then
    if [[ $LINT_STRICT == 1 ]]; then fail "lint: findings above (LINT_STRICT=1)"
    else echo "WARNING: lint findings above (not fatal; LINT_STRICT=1 makes them fatal)"; fi
  else
    fail "lint: snakemake could not lint the workflow"
  fi
fi

step "snakefmt --check"
if [[ -z $SNAKEFMT ]]; then
  fail "snakefmt: not installed (pip install snakefmt)"
else
  files=("$REPO/Snakefile" "$REPO"/workflow/rules/*.smk)
  if ! "$SNAKEFMT" --check "${files[@]}"; then
    "$SNAKEFMT" --diff "${files[@]}"
    fail "snakefmt: run '$SNAKEFMT Snakefile workflow/rules/*.smk'"
  fi
fi

dry_run() {  # label, then snakemake arguments
  local label=$1
  shift
  local t0=$SECONDS out
  if out=$(smk -n --quiet rules "$@" 2>&1); then
    printf '%-45s ok (%ss)\n' "$label" $((SECONDS - t0))
  else
    echo "$out" | tail -n 30
    fail "dry run: $label"
  fi
}

step "dry runs"
dry_run "config.yaml" --configfile "$REPO/config.yaml"
for cfg in "$REPO"/tests/configs/*.yaml; do
  [[ -e $cfg ]] || continue
  dry_run "config.yaml + tests/configs/$(basename "$cfg")" --configfile "$REPO/config.yaml" "$cfg"
done
for prof in "$REPO"/profiles/*/; do
  [[ -f $prof/config.yaml ]] || continue
  dry_run "config.yaml via profiles/$(basename "$prof")" --configfile "$REPO/config.yaml" --workflow-profile "$prof"
done

echo
if [[ ${#failed[@]} -gt 0 ]]; then
  printf 'lint.sh: %d check(s) failed: %s\n' "${#failed[@]}" "${failed[*]}"
  exit 1
fi
echo "lint.sh: all checks passed"
