"""Segment a new patient's raw scans with a model bundle (:mod:`medseg.bundle`): ``medseg predict``."""
from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from medseg.bundle import load_bundle
from medseg.io import InputError
from medseg.tasks.definition import Task

log = logging.getLogger(__name__)


def predict_raw(case: str, images: Mapping[str, str], bundle_dir: str | Path, out_path: str | Path,
                channels: Mapping[str, int] | None = None, workdir: str | Path | None = None, threads: int = 2) -> dict:
    """Segment one case from its raw scans (modality -> file, the bundle's modalities) with a bundle.

    Intermediate files go to ``workdir`` (default: a temporary folder, removed afterwards).
    Preprocessing runs on one thread and inference on ``threads``, as the workflow's jobs do,
    so the result equals the workflow's prediction bit for bit.
    """
    from medseg.jobs import set_threads

    from medseg.config import from_mapping
    from medseg.predict import predict_case
    from medseg.preprocess.atlas import atlas_images
    from medseg.preprocess.n4 import N4Config
    from medseg.preprocess.normalize import NormConfig
    from medseg.preprocess.register import RegConfig
    from medseg.preprocess.skullstrip import SkullstripConfig
    from medseg.preprocess.stages import n4_case, normalize_case, register_case, skullstrip_case, stage_images
    from medseg.volume_inference import InferenceConfig

    meta = load_bundle(bundle_dir)
    task = Task.from_dict(meta["task"])
    mods = list(task.modalities)
    missing = [m for m in mods if m not in images]
    if missing:
        raise InputError(f"case {case}: the bundle's task needs modalities {mods}; missing {missing}")
    steps, ref = meta["steps"], meta["reference"]
    set_threads(1)
    with tempfile.TemporaryDirectory(prefix="medseg-predict-") as tmp:
        work = Path(workdir or tmp)
        n4_dir = work / "n4"
        n4 = from_mapping(N4Config, meta["n4"], "n4.") if steps["n4"] else None
        n4_case(case, {m: str(images[m]) for m in mods}, stage_images(n4_dir, mods),
                {m: str(n4_dir / f"bias_{m}.nii.gz") for m in mods}, n4, channels=channels,
                spacing_mm=meta.get("spacing_mm"), orientation=meta.get("orientation"))
        stage, transform, warp = n4_dir, None, None
        if steps["register"]:
            reg = from_mapping(RegConfig, meta["register"], "register.")
            atlas_dir = work / "atlas"
            atlas_images(reg.atlas_spacing_mm).save(atlas_dir)
            stage, transform, warp = work / "reg", str(work / "tfm_atlas.tfm"), str(work / "warp_atlas.nii.gz")
            register_case(case, stage_images(n4_dir, mods), None, ref, stage_images(stage, mods), str(stage / "seg.nii.gz"),
                          {**{m: str(stage / f"tfm_{m}.tfm") for m in mods}, "atlas": transform}, reg,
                          not steps["skullstrip"], atlas_dir=str(atlas_dir), out_warp=warp)
        mask = None
        if steps["skullstrip"]:
            ss = dict(meta["skullstrip"])
            if ss.get("method", "atlas") == "atlas" and steps["register"]:
                ss["atlas_dir"] = str(work / "atlas")
            mask = str(work / "brain_mask.nii.gz")
            ss.pop("modality", None)
            skullstrip_case(case, stage_images(stage, mods)[meta["skullstrip_modality"]], mask,
                            from_mapping(SkullstripConfig, ss, "skullstrip."))
        norm = str(work / "norm.npz")
        normalize_case(case, stage_images(stage, mods), mask, str(Path(bundle_dir) / "normalizers.json"), norm,
                       from_mapping(NormConfig, meta["normalize"], "normalize."))
        models = [str(Path(bundle_dir) / f"fold_{k}" / "model.pt") for k in range(meta["n_folds"])]
        set_threads(threads)
        return predict_case(case, norm, models, str(stage / f"{ref}.nii.gz"), transform, str(images[ref]), task,
                            str(out_path), from_mapping(InferenceConfig, meta["inference"], "inference."), warp=warp,
                            native_channel=(channels or {}).get(ref))


def _cases_from_inputs(inputs: Sequence[str], mods: Sequence[str]) -> dict[str, tuple[dict[str, str], dict[str, int]]]:
    """``-i`` as given: one folder in a known layout (every case in it), or one case's files in modality order."""
    from medseg.tasks.layouts import discover
    from medseg.tasks.layouts.base import split_ext

    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        found = discover(inputs[0]) if (Path(inputs[0]) / "dataset.json").exists() or _has_case_folders(inputs[0]) \
            else None
        if found is None:
            raise InputError(f"{inputs[0]}: a folder must be a dataset (BraTS case folders, nnU-Net or Decathlon "
                             "dataset.json); for one case pass its files: -i T1 [T1CE ...] in the bundle's modality order")
        for c, why in found.problems.items():
            log.error("case %s skipped: %s", c, why)
        return {c: (dict(f.images), dict(f.channels)) for c, f in found.cases.items()}
    if len(inputs) != len(mods):
        raise InputError(f"-i got {len(inputs)} file(s) but the bundle's task has {len(mods)} modalities {list(mods)}: "
                         "give one file per modality, in that order")
    import os

    stem = os.path.commonprefix([split_ext(Path(i).name)[0] for i in inputs]).rstrip("_-.") if len(inputs) > 1 \
        else split_ext(Path(inputs[0]).name)[0]
    return {stem or "case": (dict(zip(mods, inputs)), {})}


def _has_case_folders(root: str) -> bool:
    from medseg.tasks.layouts import brats

    return brats.looks_like(Path(root))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment raw scans of new patients with a trained model bundle",
                       description="Segment raw scans (not preprocessed) with a model bundle the workflow wrote "
                                   "(results/<dataset>/bundles/<model>/): the same preprocessing, fold ensemble and "
                                   "return to the native grid as the workflow, written in the task's label values.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-i", "--input", nargs="+", required=True,
                   help="one case's scans in the bundle's modality order, or a dataset folder (BraTS, nnU-Net raw, "
                        "Decathlon): every case in it, labelled or not")
    p.add_argument("-m", "--model", required=True, help="model bundle folder")
    p.add_argument("-o", "--output", required=True,
                   help="label map to write (one case: a .nii.gz file) or folder (<case>.nii.gz per case)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of inference (preprocessing uses one, as in the workflow)")
    p.set_defaults(func=_cli)


def _cli(a: argparse.Namespace) -> int:
    meta = load_bundle(a.model)
    cases = _cases_from_inputs(a.input, meta["task"]["modalities"])
    out = Path(a.output)
    single = len(cases) == 1 and not (len(a.input) == 1 and Path(a.input[0]).is_dir())
    if not single:
        out.mkdir(parents=True, exist_ok=True)
    for case, (images, channels) in cases.items():
        target = out if single else out / f"{case}.nii.gz"
        predict_raw(case, images, a.model, target, channels, threads=a.threads)
        log.info("case %s -> %s", case, target)
    return 0


