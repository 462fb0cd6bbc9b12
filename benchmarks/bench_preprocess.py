"""Preprocessing time per case on a BraTS-size case (4 x 240x240x155 at 1 mm): medseg's stages
against the same steps in ANTsPy, measured in the same run on the same files, on 2 threads.

Steps, each reading its inputs from and writing its outputs to .nii.gz files as a workflow does:

| step | medseg (the workflow's stage functions) | ANTsPy peer |
|---|---|---|
| N4, 4 modalities | ``n4_case``: atlas brain mask + tissue prior | ``n4_bias_field_correction`` (its defaults, head mask) |
| registration | ``register_case``: 3 x rigid to T1ce, T1ce affine to the atlas, 4 images + labels resampled | ``registration`` Rigid x 3, Affine, ``apply_transforms`` |
| skull stripping | ``skullstrip_case`` (the default method, deepbet) | atlas head registered (Affine) to the T1, its mask warped |
| normalisation | ``collect_stats`` + Nyul fit + ``normalize_case`` | z-score in the mask |

The atlas is the same ICBM152 head (written to a local file for ANTsPy). The demo case knows its
applied bias fields, so the recovered-vs-applied log-bias correlation inside the brain is printed
for both N4s (not timed). QC figures are not drawn (the peer has none).

    python benchmarks/bench_preprocess.py                 # 1 case, atlas grid 1 mm (BraTS/SRI24-like)
    python benchmarks/bench_preprocess.py --atlas-spacing 2 --cases 2
    python benchmarks/bench_preprocess.py --no-peer       # medseg only

Output: per-step seconds for each, the ratio, and benchmarks/out/preprocess/bench_preprocess.json.
Exit 1 if medseg is over 60 s per case or not faster than the peer.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")  # before ANTsPy / ITK load

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from medseg.cohort.synth import SynthConfig, generate_cohort, true_brain_mask  # noqa: E402
from medseg.preprocess.atlas import atlas_images  # noqa: E402
from medseg.preprocess.case import CaseFolder, CaseJob  # noqa: E402
from medseg.preprocess.config import (N4Config, N4Stage, NormalizeStage, NormConfig, RegConfig,  # noqa: E402
                                      RegisterStage, SkullstripConfig, SkullstripStage)
from medseg.preprocess.intensity import collect_stats, fit_normalizer, normalize_case  # noqa: E402
from medseg.preprocess.n4 import log_field_correlation  # noqa: E402
from medseg.preprocess.stages import n4_case, register_case, skullstrip_case  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODS = ("t1", "t1ce", "t2", "flair")
REFERENCE = "t1ce"
STEPS = ("n4", "register", "skullstrip", "normalize")
TARGET_S = 60.0


class Timer(dict):
    """Seconds per named step."""

    @contextmanager
    def __call__(self, step: str):
        t0 = time.perf_counter()
        yield
        self[step] = self.get(step, 0.0) + time.perf_counter() - t0


def truth_corr(field_path: str, truth_dir: Path, mod: str) -> float:
    """Correlation of recovered and applied log bias inside the true brain mask in ``mod``'s frame."""
    field = sitk.ReadImage(field_path, sitk.sitkFloat32)
    brain = true_brain_mask(truth_dir, mod, field)
    return log_field_correlation(field, sitk.ReadImage(str(truth_dir / f"bias_{mod}.nii.gz"), sitk.sitkFloat32), brain)


def run_medseg(case_dir: Path, out: Path, atlas_dir: Path, spacing: float) -> Timer:
    case = case_dir.name
    job = CaseJob(case, {m: str(case_dir / f"{case}_{m}.nii.gz") for m in MODS}, CaseFolder(str(out)),
                  seg=str(case_dir / f"{case}_seg.nii.gz"), figures=False)
    t = Timer()
    with t("n4"):
        n4_case(job, N4Stage(N4Config()))
    with t("register"):
        register_case(job, RegisterStage(RegConfig(atlas_spacing_mm=spacing), reference=REFERENCE), atlas_dir=str(atlas_dir))
    with t("skullstrip"):  # (writes the brain's intensity quantiles too, as in the workflow)
        skullstrip_case(job, SkullstripStage(SkullstripConfig(), modality="t1", stage="reg"), atlas_dir=str(atlas_dir))
    with t("normalize"):
        collect_stats([job.folder.brain_stats], str(out / "stats.json"))
        fit_normalizer([case], str(out / "stats.json"), str(out / "nyul.json"), NormConfig())
        normalize_case(job, NormalizeStage(NormConfig()), [str(out / "nyul.json")])
    t["fields"] = job.folder.bias_fields(MODS)
    return t


def run_ants(case_dir: Path, out: Path, atlas_dir: Path) -> Timer:
    import ants

    case = case_dir.name
    t = Timer()
    fields = {m: str(out / f"bias_{m}.nii.gz") for m in MODS}
    with t("n4"):
        for m in MODS:
            img = ants.image_read(str(case_dir / f"{case}_{m}.nii.gz"))
            head = ants.get_mask(img)
            field = ants.n4_bias_field_correction(img, mask=head, return_bias_field=True)
            ants.image_write(img / field, str(out / f"n4_{m}.nii.gz"))
            ants.image_write(field, fields[m])
    atlas_head = ants.image_read(str(atlas_dir / "head.nii.gz"))
    with t("register"):
        ref = ants.image_read(str(out / f"n4_{REFERENCE}.nii.gz"))
        to_atlas = ants.registration(fixed=atlas_head, moving=ref, type_of_transform="Affine")["fwdtransforms"]
        for m in MODS:
            img = ref if m == REFERENCE else ants.image_read(str(out / f"n4_{m}.nii.gz"))
            chain = to_atlas if m == REFERENCE else to_atlas + ants.registration(
                fixed=ref, moving=img, type_of_transform="Rigid")["fwdtransforms"]
            ants.image_write(ants.apply_transforms(atlas_head, img, chain, interpolator="linear"), str(out / f"reg_{m}.nii.gz"))
        seg = ants.image_read(str(case_dir / f"{case}_seg.nii.gz"))
        ants.image_write(ants.apply_transforms(atlas_head, seg, to_atlas, interpolator="nearestNeighbor"), str(out / "reg_seg.nii.gz"))
    with t("skullstrip"):
        t1 = ants.image_read(str(out / "reg_t1.nii.gz"))
        tfm = ants.registration(fixed=t1, moving=atlas_head, type_of_transform="Affine")["fwdtransforms"]
        mask = ants.apply_transforms(t1, ants.image_read(str(atlas_dir / "mask.nii.gz")), tfm, interpolator="nearestNeighbor")
        ants.image_write(mask, str(out / "brain_mask.nii.gz"))
    with t("normalize"):
        brain = mask.numpy() > 0
        arrays = []
        for m in MODS:
            a = ants.image_read(str(out / f"reg_{m}.nii.gz")).numpy()
            arrays.append(((a - a[brain].mean()) / a[brain].std() * brain).astype(np.float32))
        np.savez_compressed(out / "norm.npz", image=np.stack(arrays), brain=brain.astype(np.uint8))
    t["fields"] = fields
    return t


def report(name: str, t: Timer, truth_dir: Path) -> dict:
    corr = {m: truth_corr(f, truth_dir, m) for m, f in t.pop("fields").items()}
    total = sum(t[s] for s in STEPS)
    print(f"{name:>7}: " + "  ".join(f"{s} {t[s]:6.1f} s" for s in STEPS) + f"  | total {total:6.1f} s | N4 log-bias "
          "correlation with the applied field " + " ".join(f"{m} {c:.3f}" for m, c in corr.items()), flush=True)
    return {"seconds": {**{s: t[s] for s in STEPS}, "total": total}, "n4_truth_log_bias_corr": corr}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--atlas-spacing", type=float, default=1.0, help="atlas-space grid the case is resampled to (mm)")
    ap.add_argument("--no-peer", action="store_true", help="skip ANTsPy")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "preprocess")
    a = ap.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    if not a.no_peer:
        try:
            import ants  # noqa: F401
        except ImportError:
            sys.exit("ANTsPy is not installed: pip install antspyx (or run with --no-peer)")
    results = []
    with tempfile.TemporaryDirectory(prefix="medseg-bench-pre-") as tmp:
        tmp = Path(tmp)
        print(f"generating {a.cases} BraTS-size demo case(s): 4 x 240x240x155 at 1 mm ...", flush=True)
        generate_cohort(SynthConfig(n_cases=a.cases, seed=a.seed, spacing_mm=(1.0,) * 3, fov_mm=(240.0, 240.0, 155.0),
                                    anatomy="icbm", fov_variety=False),
                        tmp / "cohort")
        atlas_dir = tmp / "atlas"
        atlas_images(a.atlas_spacing).save(atlas_dir)
        for case_dir in sorted((tmp / "cohort" / "images").iterdir()):
            truth = tmp / "cohort" / "truth" / case_dir.name
            row: dict = {"case": case_dir.name}
            for name, run in (("medseg", lambda o: run_medseg(case_dir, o, atlas_dir, a.atlas_spacing)),
                              ("antspy", lambda o: run_ants(case_dir, o, atlas_dir))):
                if name == "antspy" and a.no_peer:
                    continue
                out = tmp / name / case_dir.name
                out.mkdir(parents=True)
                row[name] = report(name, run(out), truth)
            if "antspy" in row:
                row["ratio"] = row["antspy"]["seconds"]["total"] / row["medseg"]["seconds"]["total"]
                print(f"{case_dir.name}: medseg is {row['ratio']:.2f}x as fast as ANTsPy", flush=True)
            results.append(row)
    mean = {n: float(np.mean([r[n]["seconds"]["total"] for r in results])) for n in ("medseg", "antspy") if n in results[0]}
    summary = {"cases": len(results), "atlas_spacing_mm": a.atlas_spacing, "threads": 2, "mean_seconds": mean,
               "target_seconds": TARGET_S}
    line = f"mean per case: medseg {mean['medseg']:.1f} s (target <= {TARGET_S:g} s)"
    if "antspy" in mean:
        summary["ratio"] = mean["antspy"] / mean["medseg"]
        line += f", ANTsPy {mean['antspy']:.1f} s, ratio {summary['ratio']:.2f}x"
    print(line)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_preprocess.json").write_text(json.dumps({"summary": summary, "cases": results}, indent=2) + "\n")
    ok = mean["medseg"] <= TARGET_S and summary.get("ratio", 2.0) > 1.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
