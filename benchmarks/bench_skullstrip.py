"""Brain-mask Dice and seconds of every skull-stripping method, on heads whose anatomy is not the
atlas's (both ways crosswise) and on the old demo (the atlas's own anatomy), in one table.

Setups (each a demo cohort scored against its true brain mask, in each T1's own frame):

- ``robex-head/icbm-atlas``: heads made of the ROBEX subject (``demo.anatomy: robex``, clinical
  FOVs: standard, with neck and face, cropped at the vertex, tilted 15-25 degrees); the ``atlas``
  method uses the ICBM152 atlas. (``robex``'s own reference is this subject: its score here is
  inflated.)
- ``icbm-head/robex-atlas``: heads made of the ICBM152 brain, same FOV variety; the ``atlas`` method
  uses an atlas made from the ROBEX head. (``robex`` is fair here.)
- ``demo-icbm/icbm-atlas``: the old demo (ICBM152 heads, standard FOV, the ICBM152 atlas): what the
  demo used to report; ``atlas`` is inflated (same anatomy).

    python benchmarks/bench_skullstrip.py                 # 4 cases per setup, every method
    python benchmarks/bench_skullstrip.py --cases 2 --methods deepbet atlas
    python benchmarks/bench_skullstrip.py --methods deepbet --deepbet 256:0.1 192:0.05   # deepbet's box size / margin

``--deepbet SIZE:MARGIN ...`` scores deepbet once per setting (``skullstrip.deepbet_size``,
``deepbet_margin``; ``256:0.1`` is deepbet itself), named ``deepbet@SIZE/MARGIN``, alternating.

Each line also gives the share of the true tumour inside the mask (a method that cuts out a dark
necrotic core or a tumour at the brain's edge loses it for segmentation).

Output: one line per mask, the table, and benchmarks/out/skullstrip/bench_skullstrip.json.
Exit 1 if the default method's mean Dice on a crosswise setup is below 0.95.
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

from medseg.cohort.synth import (
    SynthConfig,
    generate_cohort,
    true_brain_mask,
    true_head_motion,
)
from medseg.preprocess.atlas import atlas_images
from medseg.preprocess.skullstrip import METHODS, skullstrip
from medseg.preprocess.config import SkullstripConfig

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.95
SETUPS = {  # name: (anatomy of the heads, FOV variety, anatomy of the atlas)
    "robex-head/icbm-atlas": ("robex", True, "icbm"),
    "icbm-head/robex-atlas": ("icbm", True, "robex"),
    "demo-icbm/icbm-atlas": ("icbm", False, "icbm"),
}


def dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))


def tumour_in_t1(case_dir: Path, truth_dir: Path, t1: sitk.Image) -> np.ndarray:
    """The true whole tumour (the seg is in the T1ce frame) as seen in the T1 (head motion applied), (z, y, x) bool."""
    seg = sitk.ReadImage(str(case_dir / f"{case_dir.name}_seg.nii.gz"), sitk.sitkUInt8)
    moved = sitk.Resample(seg, t1, true_head_motion(truth_dir, "t1"), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(moved) > 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4, help="cases per setup (4 = one of each FOV kind)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--deepbet", nargs="+", default=None, metavar="SIZE:MARGIN",
                    help="deepbet settings to compare (e.g. 256:0.1 192:0.05); default: the config's")
    ap.add_argument("--robex-cases", type=int, default=None,
                    help="score robex (~1.5-7 min per mask on a busy 2-core machine) on the first N cases per setup only")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "skullstrip")
    a = ap.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    default = SkullstripConfig().method
    variants = method_variants(a.methods, a.deepbet)
    names = list(variants)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medseg-bench-ss-") as tmp:
        for setup, (anatomy, variety, atlas_anatomy) in SETUPS.items():
            root = Path(tmp) / setup.replace("/", "_")
            atlas_dir = None
            if atlas_anatomy != "icbm":
                atlas_dir = str(root / "atlas")
                atlas_images(2.0, anatomy=atlas_anatomy).save(atlas_dir)
            generate_cohort(SynthConfig(n_cases=a.cases, seed=a.seed, anatomy=anatomy, fov_variety=variety), root)
            for k, case_dir in enumerate(sorted((root / "images").iterdir())):
                t1 = sitk.ReadImage(str(case_dir / f"{case_dir.name}_t1.nii.gz"), sitk.sitkFloat32)
                truth_dir = root / "truth" / case_dir.name
                truth = true_brain_mask(truth_dir, "t1", t1)
                fov = json.loads((truth_dir / "truth.json").read_text()).get("fov", "standard")
                tumour = tumour_in_t1(case_dir, truth_dir, t1)
                for m in (names if k % 2 == 0 else names[::-1]):  # alternating: a shared machine's load falls on all
                    if m == "robex" and a.robex_cases is not None and k >= a.robex_cases:
                        continue
                    t0 = time.perf_counter()
                    mask = skullstrip(t1, SkullstripConfig(**variants[m], atlas_dir=atlas_dir))
                    row = {"setup": setup, "case": case_dir.name, "fov": fov, "method": m, "dice": dice(mask, truth),
                           "seconds": time.perf_counter() - t0,
                           "tumour_kept": float((sitk.GetArrayViewFromImage(mask)[tumour] > 0).mean())}
                    rows.append(row)
                    print(f"{setup:22s} {row['case']} {fov:14s} {m:8s} Dice {row['dice']:.4f} ({row['seconds']:.1f} s), "
                          f"tumour inside the mask {row['tumour_kept']:.1%}", flush=True)
    table = {s: {m: {"dice": float(np.mean([r["dice"] for r in rows if r["setup"] == s and r["method"] == m])),
                     "seconds": float(np.mean([r["seconds"] for r in rows if r["setup"] == s and r["method"] == m])),
                     "tumour_kept": float(np.mean([r["tumour_kept"] for r in rows if r["setup"] == s and r["method"] == m])),
                     "n": sum(r["setup"] == s and r["method"] == m for r in rows)}
                 for m in names} for s in SETUPS}
    print(f"\nmean brain-mask Dice (mean seconds per mask), {a.cases} T1 heads per setup"
          + (f" ({a.robex_cases} for robex)" if a.robex_cases is not None else "") + ", 2 threads:")
    print(f"{'setup':24s}" + "".join(f"{m:>20s}" for m in names))
    for s, per in table.items():
        print(f"{s:24s}" + "".join(f"{v['dice']:>12.4f} ({v['seconds']:4.1f} s)" for v in per.values()))
    print("fraction of the true tumour inside the mask:")
    for s, per in table.items():
        print(f"{s:24s}" + "".join(f"{v['tumour_kept']:>20.1%}" for v in per.values()))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_skullstrip.json").write_text(json.dumps({"mean": table, "masks": rows}, indent=2) + "\n")
    if default not in names:
        return 0
    crosswise = [table[s][default]["dice"] for s in SETUPS if SETUPS[s][0] != SETUPS[s][2]]
    return 0 if min(crosswise) >= TARGET else 1


def method_variants(methods: list[str], deepbet: list[str] | None) -> dict[str, dict]:
    """Name -> SkullstripConfig keys of each method scored (``deepbet`` once per ``SIZE:MARGIN`` when given)."""
    out: dict[str, dict] = {}
    for m in methods:
        if m != "deepbet" or not deepbet:
            out[m] = {"method": m}
            continue
        for setting in deepbet:
            size, margin = setting.split(":")
            out[f"deepbet@{int(size)}/{float(margin):.2f}"] = {"method": m, "deepbet_size": int(size),
                                                               "deepbet_margin": float(margin)}
    return out


if __name__ == "__main__":
    sys.exit(main())
