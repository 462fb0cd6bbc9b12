"""Time and accuracy of the three per-case preprocessing stages, old settings against new, in one run.

Each 2 mm demo case (``SynthConfig``: 120x120x80, default anatomy ``robex`` with clinical fields of
view; ``--icbm N`` adds heads of the atlas's own anatomy, where the true native -> atlas mapping
is known) goes through the workflow's stage functions ``n4_case`` -> ``register_case`` ->
``skullstrip_case`` twice, once with each setting, on one thread (``set_threads(1)``), old and
new alternating (old first on even cases, new first on odd ones) so that the load of a shared
machine falls on both alike. Times are wall and CPU seconds of the stage function (the process is
warm: deepbet's networks are loaded once, before; ``--process`` adds what a fresh job pays for
importing and loading them). Settings compared (``old`` = before issue 27):

| stage | old | new |
|---|---|---|
| N4 | each modality's atlas registration from scratch, ``init: search``, ``min_step_mm: 1e-4``, ``gradient_image: true`` | ``share_registration``, ``min_step_mm: 0.01``, ``gradient_image: false`` |
| register | ``init: search``, ``min_step_mm: 1e-4``, ``gradient_image: true`` | the config's defaults (``min_step_mm: 1e-3``, ``gradient_image: false``; ``--init`` to choose the start) |
| skullstrip | ``deepbet_size: 256``, ``deepbet_margin: 0.1`` (deepbet itself) | the config's defaults |

(N4's own registration has no config key: the bench gives it the old optimiser settings by
building it with ``RegConfig`` defaults swapped for the old ones.)

Accuracy columns: N4 -- ``truth_log_bias_corr`` (recovered vs applied log bias in the true brain,
mean of the 4 modalities) and the deep-WM coefficient of variation after; register -- the atlas
NMI, whether the start search ran, the Dice of the atlas brain mask brought to the T1ce with the
true brain mask, and on ``icbm`` heads the target registration error (mm) of the atlas affine and
of the 3 rigid modality registrations against the truth; skullstrip -- Dice of the brain mask
(on the atlas grid, ``reg/t1``) with the true brain mask brought there by the registration.

    python benchmarks/bench_stages.py                        # 4 robex heads + 2 icbm heads
    python benchmarks/bench_stages.py --cases 8 --icbm 4 --process

Output: a line per case and variant, the table (means; time ratios new/old computed per case),
and benchmarks/out/stages/bench_stages.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.cohort.synth import SynthConfig, generate_cohort, true_brain_mask, true_head_motion, true_native_to_atlas
from medseg.pipeline.job import set_threads
from medseg.preprocess import n4 as n4_module
from medseg.preprocess.atlas import atlas_images
from medseg.preprocess.case import CaseFolder, CaseJob
from medseg.preprocess.config import N4Config, N4Stage, RegConfig, RegisterStage, SkullstripConfig, SkullstripStage
from medseg.preprocess.stages import n4_case, register_case, skullstrip_case

REPO = Path(__file__).resolve().parents[1]
MODS = ("t1", "t1ce", "t2", "flair")
STAGES = ("n4", "register", "skullstrip")
OLD_REG = {"init": "search", "min_step_mm": 1e-4, "gradient_image": True}
OLD_SKULL = {"deepbet_size": 256, "deepbet_margin": 0.1}


def settings(variant: str, init: str | None) -> dict:
    """The stages' settings of ``old`` or ``new`` (``init``: the new registration start, None: the default)."""
    if variant == "old":
        return {"n4": N4Stage(N4Config(share_registration=False)),
                "register": RegisterStage(RegConfig(**OLD_REG), reference="t1ce"),
                "skullstrip": SkullstripStage(SkullstripConfig(**OLD_SKULL), modality="t1", stage="reg")}
    reg = RegConfig() if init is None else RegConfig(init=init)
    return {"n4": N4Stage(N4Config()), "register": RegisterStage(reg, reference="t1ce"),
            "skullstrip": SkullstripStage(SkullstripConfig(), modality="t1", stage="reg")}


@contextlib.contextmanager
def n4_registration(variant: str):
    """N4's internal atlas registration with the old optimiser settings (``old``) or as it is (``new``)."""
    if variant != "old":
        yield
        return
    original = n4_module.RegConfig
    n4_module.RegConfig = lambda **kw: original(**{**kw, **OLD_REG})
    try:
        yield
    finally:
        n4_module.RegConfig = original


def timed(fn) -> tuple[dict, float, float]:
    """``fn()``, its wall and CPU seconds."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run_case(case_dir: Path, truth_dir: Path, out: Path, variant: str, init: str | None) -> dict:
    """The three stages of one case with ``variant``'s settings; seconds and QC per stage."""
    case = case_dir.name
    job = CaseJob(case, {m: str(case_dir / f"{case}_{m}.nii.gz") for m in MODS}, CaseFolder(str(out)),
                  seg=str(case_dir / f"{case}_seg.nii.gz"), truth_dir=str(truth_dir), figures=False)
    cfg = settings(variant, init)
    row: dict = {"case": case, "variant": variant}
    with n4_registration(variant):
        row["n4"], row["n4_s"], row["n4_cpu"] = timed(lambda: n4_case(job, cfg["n4"]))
    row["register"], row["register_s"], row["register_cpu"] = timed(lambda: register_case(job, cfg["register"]))
    row["skullstrip"], row["skullstrip_s"], row["skullstrip_cpu"] = timed(lambda: skullstrip_case(job, cfg["skullstrip"]))
    row.update(accuracy(job, truth_dir))
    return row


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def accuracy(job: CaseJob, truth_dir: Path) -> dict:
    """N4, registration and skull-stripping accuracy of a case's written outputs against its truth."""
    n4 = json.loads(Path(job.folder.n4_qc).read_text())
    reg = json.loads(Path(job.folder.register_qc).read_text())
    ref = sitk.ReadImage(job.images["t1ce"], sitk.sitkFloat32)
    to_ref = sitk.ReadTransform(job.folder.atlas_transform)  # atlas world -> T1ce native world
    atlas = atlas_images(2.0)
    truth_ref = sitk.GetArrayFromImage(true_brain_mask(truth_dir, "t1ce", ref)) > 0
    atlas_mask = sitk.Resample(sitk.Cast(atlas.mask, sitk.sitkFloat32), ref, to_ref.GetInverse(), sitk.sitkLinear, 0.0)
    grid_mask = sitk.ReadImage(job.folder.brain_mask, sitk.sitkUInt8)
    truth_grid = sitk.Resample(true_brain_mask(truth_dir, "t1ce", ref), grid_mask, to_ref, sitk.sitkNearestNeighbor, 0)
    out = {"bias_corr": float(np.mean([n4[m]["truth_log_bias_corr"] for m in MODS])),
           "wm_cv": float(np.mean([n4[m]["cv_wm_after"] for m in MODS])),
           "atlas_nmi": reg["atlas_nmi"], "search_ran": reg.get("atlas_search_ran"),
           "atlas_mask_dice": dice(sitk.GetArrayFromImage(atlas_mask) > 0.5, truth_ref),
           "skull_dice": dice(sitk.GetArrayFromImage(grid_mask) > 0, sitk.GetArrayFromImage(truth_grid) > 0)}
    if json.loads((truth_dir / "truth.json").read_text()).get("anatomy") == "icbm":
        out.update(target_errors(job, truth_dir, to_ref))
    return out


def target_errors(job: CaseJob, truth_dir: Path, to_ref: sitk.Transform) -> dict:
    """Mean TRE (mm) of the atlas affine at atlas brain points and of the rigid modality registrations there."""
    atlas = atlas_images(2.0)
    points = [atlas.mask.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]])
              for idx in np.argwhere(sitk.GetArrayFromImage(atlas.mask) > 0)[::40]]
    truth = true_native_to_atlas(truth_dir)
    native = [to_ref.TransformPoint(p) for p in points]
    atlas_tre = np.mean([np.linalg.norm(np.subtract(truth.TransformPoint(q), p)) for p, q in zip(points, native)])
    rigid = []
    for mod, path in job.folder.modality_transforms(job.modalities).items():
        if mod == "t1ce":
            continue
        tfm, motion = sitk.ReadTransform(path), true_head_motion(truth_dir, mod)
        rigid.append(np.mean([np.linalg.norm(np.subtract(motion.TransformPoint(tfm.TransformPoint(q)), q)) for q in native]))
    return {"atlas_tre_mm": float(atlas_tre), "rigid_tre_mm": float(np.mean(rigid))}


def process_costs() -> dict:
    """Seconds a fresh process pays to import deepbet and load its networks: deepbet's own class (its package
    imports pandas) vs :func:`_deepbet_model` (the TorchScript files only)."""
    snippets = {"old": "from deepbet.bet import BrainExtraction; BrainExtraction(no_gpu=True)",
                "new": "_deepbet_model()"}
    out: dict[str, float] = {}
    for _ in range(3):  # alternating; the best of three (a cold file cache or a busy machine only adds)
        for name, code in snippets.items():  # after what a skull-stripping job has imported (torch: deepbet runs)
            base = ("import time, torch; from medseg.preprocess.stages import skullstrip_case; "
                    "from medseg.preprocess.skullstrip import _deepbet_model; t = time.perf_counter(); ")
            res = subprocess.run([sys.executable, "-c", base + code + "; print(time.perf_counter() - t)"],
                                 capture_output=True, text=True, check=True)
            out[name] = min(out.get(name, float("inf")), float(res.stdout.strip().splitlines()[-1]))
    return out


def summary(rows: list[dict]) -> dict:
    """Means per anatomy and variant, and the per-case time ratios new / old."""
    table = {}
    for anatomy in sorted({r["anatomy"] for r in rows}):
        for variant in ("old", "new"):
            sel = [r for r in rows if r["anatomy"] == anatomy and r["variant"] == variant]
            keys = [k for k in sel[0] if isinstance(sel[0][k], float)]
            table[f"{anatomy}/{variant}"] = {k: float(np.mean([r[k] for r in sel])) for k in keys} | {
                "searches": sum(bool(r["search_ran"]) for r in sel), "n": len(sel)}
        pairs = [(o, n) for o in rows for n in rows if o["case"] == n["case"] and o["anatomy"] == n["anatomy"] == anatomy
                 and o["variant"] == "old" and n["variant"] == "new"]
        table[f"{anatomy}/ratio"] = {f"{s}_{u}": float(np.mean([n[f"{s}_{u}"] / o[f"{s}_{u}"] for o, n in pairs]))
                                     for s in STAGES for u in ("s", "cpu")}
    return table


def print_table(table: dict) -> None:
    cols = [("n4_s", "N4 s"), ("n4_cpu", "cpu"), ("bias_corr", "bias r"), ("wm_cv", "WM CV"),
            ("register_s", "reg s"), ("register_cpu", "cpu"), ("atlas_nmi", "NMI"), ("atlas_mask_dice", "atl.D"),
            ("atlas_tre_mm", "TRE"), ("rigid_tre_mm", "rigTRE"), ("skullstrip_s", "strip s"),
            ("skullstrip_cpu", "cpu"), ("skull_dice", "Dice")]
    print(f"\n{'':14s}" + "".join(f"{name:>8s}" for _, name in cols) + "  searches")
    for key, v in table.items():
        cells = "".join(f"{v[k]:8.3f}" if k in v else f"{'':8s}" for k, _ in cols)
        print(f"{key:14s}{cells}" + (f"  {v['searches']}/{v['n']}" if "n" in v else "   (time new/old, per case)"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4, help="robex heads (clinical FOVs, one of each kind per 4)")
    ap.add_argument("--icbm", type=int, default=2, help="heads of the atlas's anatomy (registration TRE known)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--init", choices=["auto", "moments", "search"], default=None, help="new registration start")
    ap.add_argument("--process", action="store_true", help="also time deepbet's import + load in fresh processes")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "stages")
    a = ap.parse_args(argv)
    set_threads(1)
    import torch  # noqa: F401  (loaded before timing, as in a job)
    from medseg.preprocess.skullstrip import _deepbet_model
    _deepbet_model()
    rows = []
    with tempfile.TemporaryDirectory(prefix="medseg-bench-stages-") as tmp:
        for anatomy, n in (("robex", a.cases), ("icbm", a.icbm)):
            if n < 1:
                continue
            root = Path(tmp) / anatomy
            generate_cohort(SynthConfig(n_cases=n, seed=a.seed, anatomy=anatomy), root)
            for k, case_dir in enumerate(sorted((root / "images").iterdir())):
                for variant in (("old", "new") if k % 2 == 0 else ("new", "old")):
                    row = run_case(case_dir, root / "truth" / case_dir.name, root / variant / case_dir.name, variant, a.init)
                    row["anatomy"] = anatomy
                    rows.append(row)
                    print(f"{anatomy} {row['case']} {variant}: " + ", ".join(
                        f"{s} {row[s + '_s']:.1f} s ({row[s + '_cpu']:.1f} cpu)" for s in STAGES) +
                        f" | bias r {row['bias_corr']:.3f}, NMI {row['atlas_nmi']:.3f}, search {row['search_ran']}, "
                        f"skull Dice {row['skull_dice']:.4f}" +
                        (f", TRE {row['atlas_tre_mm']:.2f} / rigid {row['rigid_tre_mm']:.2f} mm" if "atlas_tre_mm" in row else ""),
                        flush=True)
    table = summary(rows)
    print_table(table)
    result = {"summary": table, "cases": [{k: v for k, v in r.items() if k not in STAGES} | {s: r[s] for s in STAGES}
                                          for r in rows]}
    if a.process:
        result["process_load_s"] = process_costs()
        print(f"\nfresh process, import + load deepbet's networks: old {result['process_load_s']['old']:.2f} s, "
              f"new {result['process_load_s']['new']:.2f} s")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_stages.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
