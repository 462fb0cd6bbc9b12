"""Registration error against the demo truth: reference -> atlas (affine vs B-spline) and
modality -> reference (rigid), per case and as the mean over cases, with the time per registration.

The demo cohort knows the true native -> atlas mapping (affine + elastic) and each modality's
head motion, so the target registration error (TRE, mm) is measured at atlas brain points:
``|truth(T(p)) - p|`` for the atlas registration ``T`` (atlas -> native), and through the
numerical inverse the predictions use for the way back. Images are N4-corrected first, as in
the workflow.

    python benchmarks/bench_register.py                    # 4 demo cases at 2 mm, sitk backend
    python benchmarks/bench_register.py --backend elastix  # itk-elastix (~20 s to load)

Output: one line per case, the mean line, and benchmarks/out/register/bench_register.json.
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

from medseg.cohort.synth import SynthConfig, generate_cohort, true_head_motion, true_native_to_atlas
from medseg.preprocess.atlas import atlas_images
from medseg.preprocess.n4 import N4Config, n4_correct
from medseg.preprocess.register import RegConfig, register
from medseg.preprocess.warp import factor_warp, fixed_to_moving, moving_to_fixed

REPO = Path(__file__).resolve().parents[1]


def tre(points, a, b) -> np.ndarray:
    """Distances (mm) between ``a(p)`` and ``b(p)`` over ``points`` (``a``, ``b``: point -> point)."""
    return np.array([np.linalg.norm(np.subtract(a(p), b(p))) for p in points])


def measure_case(case_dir: Path, truth_dir: Path, fixed: sitk.Image, points, cfg: RegConfig) -> dict:
    truth = true_native_to_atlas(truth_dir)
    raw = sitk.ReadImage(str(case_dir / f"{case_dir.name}_t1ce.nii.gz"), sitk.sitkFloat32)
    ref, _ = n4_correct(raw, None, N4Config())
    row: dict = {"case": case_dir.name}
    for kind in ("affine", "bspline"):
        t0 = time.perf_counter()
        linear, field = factor_warp(register(fixed, ref, kind, cfg), fixed)
        row[f"{kind}_s"] = time.perf_counter() - t0
        fwd = fixed_to_moving(linear, field)
        d = tre(points, lambda p: truth.TransformPoint(fwd.TransformPoint(p)), lambda p: p)
        back = moving_to_fixed(linear, field)
        native = [fwd.TransformPoint(p) for p in points]
        d_back = tre(native, back.TransformPoint, truth.TransformPoint)
        row[kind] = {"mean_mm": float(d.mean()), "p95_mm": float(np.percentile(d, 95)), "max_mm": float(d.max()),
                     "way_back_mean_mm": float(d_back.mean())}
    row["rigid"] = {}
    native = [fwd.TransformPoint(p) for p in points[::4]]
    for mod in ("t1", "t2", "flair"):
        moving = sitk.ReadImage(str(case_dir / f"{case_dir.name}_{mod}.nii.gz"), sitk.sitkFloat32)
        t0 = time.perf_counter()
        tfm = register(raw, moving, "rigid", cfg)
        seconds = time.perf_counter() - t0
        motion = true_head_motion(truth_dir, mod)
        d = tre(native, lambda q: motion.TransformPoint(tfm.TransformPoint(q)), lambda q: q)
        row["rigid"][mod] = {"mean_mm": float(d.mean()), "s": seconds}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--spacing", type=float, default=2.0, help="demo voxel size and atlas grid (mm)")
    ap.add_argument("--backend", choices=["sitk", "elastix"], default="sitk")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "register")
    a = ap.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    atlas = atlas_images(a.spacing)
    fixed = atlas.head
    points = [fixed.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]])
              for idx in np.argwhere(sitk.GetArrayFromImage(atlas.mask) > 0)[::10]]
    cfg = RegConfig(backend=a.backend, atlas_spacing_mm=a.spacing)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medseg-bench-reg-") as tmp:
        generate_cohort(SynthConfig(n_cases=a.cases, seed=a.seed, spacing_mm=(a.spacing,) * 3), tmp, workers=1)
        for case_dir in sorted((Path(tmp) / "images").iterdir()):
            r = measure_case(case_dir, Path(tmp) / "truth" / case_dir.name, fixed, points, cfg)
            rows.append(r)
            print(f"{r['case']}: affine TRE {r['affine']['mean_mm']:.2f} mm (max {r['affine']['max_mm']:.2f}, "
                  f"{r['affine_s']:.1f} s) | bspline {r['bspline']['mean_mm']:.2f} mm (max {r['bspline']['max_mm']:.2f}, "
                  f"{r['bspline_s']:.1f} s; way back {r['bspline']['way_back_mean_mm']:.2f} mm) | rigid "
                  + " ".join(f"{m} {v['mean_mm']:.2f} mm" for m, v in r["rigid"].items()), flush=True)
    summary = {k: float(np.mean([r[k]["mean_mm"] for r in rows])) for k in ("affine", "bspline")}
    summary["rigid"] = float(np.mean([v["mean_mm"] for r in rows for v in r["rigid"].values()]))
    print(f"mean over {len(rows)} cases ({a.backend}, {a.spacing:g} mm): atlas affine TRE {summary['affine']:.2f} mm, "
          f"atlas bspline TRE {summary['bspline']:.2f} mm, modality rigid TRE {summary['rigid']:.2f} mm "
          f"(issue target: <= 1 mm)")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_register.json").write_text(json.dumps({"summary": summary, "cases": rows}, indent=2) + "\n")
    return 0 if max(summary.values()) <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
