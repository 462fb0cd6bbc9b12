"""Segment a new patient's raw scans with a model bundle (:mod:`medseg.inference.bundle`): ``medseg predict``.

The bundle's plan says what to run: its recipe's stages, through the very functions the
workflow's rules call (:mod:`medseg.preprocess.stages`, :mod:`medseg.preprocess.intensity`,
:func:`medseg.inference.case.predict_case`), on a case folder laid out as the workflow's
(:class:`~medseg.preprocess.case.CaseFolder`) in a temporary directory.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from medseg.inference.bundle import Bundle, load_bundle
from medseg.io import InputError
from medseg.preprocess.case import CaseFolder, CaseJob

log = logging.getLogger(__name__)


def run_stages(job: CaseJob, bundle: Bundle, out_path: str | Path, threads: int = 2) -> dict:
    """The bundle plan's stages on ``job`` (its folder a scratch folder): N4, registration, skull
    stripping, normalisation with the bundle's fold normalisers, fold ensemble, native grid.

    Preprocessing runs on one thread and inference on ``threads``, as the workflow's jobs do, so
    the result equals the workflow's prediction bit for bit.
    """
    from medseg.inference.case import predict_case
    from medseg.pipeline.job import set_threads
    from medseg.preprocess.atlas import atlas_images
    from medseg.preprocess.intensity import normalize_case
    from medseg.preprocess.stages import n4_case, register_case, skullstrip_case

    recipe = bundle.plan.recipe
    set_threads(1)
    n4_case(job, recipe.n4_stage())
    atlas_dir = None
    if recipe.steps.register or (recipe.steps.skullstrip and recipe.skullstrip.method == "atlas"):
        atlas_dir = f"{job.folder.root}/atlas"
        atlas_images(recipe.register.atlas_spacing_mm).save(atlas_dir)
    if recipe.steps.register:
        register_case(job, recipe.register_stage(), atlas_dir)
    if recipe.steps.skullstrip:
        skullstrip_case(job, recipe.skullstrip_stage(), atlas_dir)
    normalize_case(job, recipe.normalize_stage(), bundle.normalizers)
    set_threads(threads)
    return predict_case(job, recipe.native_stage(), bundle.models, bundle.run.inference, bundle.plan.task,
                        str(out_path))


def predict_raw(case: str, images: Mapping[str, str], bundle_dir: str | Path | Bundle, out_path: str | Path,
                channels: Mapping[str, int] | None = None, workdir: str | Path | None = None, threads: int = 2) -> dict:
    """Segment one case from its raw scans (modality -> file, the bundle's modalities) with a bundle.

    Intermediate files go to ``workdir`` (default: a temporary folder, removed afterwards).
    """
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else load_bundle(bundle_dir)
    mods = list(bundle.plan.task.modalities)
    missing = [m for m in mods if m not in images]
    if missing:
        raise InputError(f"case {case}: the bundle's task needs modalities {mods}; missing {missing}")
    with tempfile.TemporaryDirectory(prefix="medseg-predict-") as tmp:
        job = CaseJob(case, {m: str(images[m]) for m in mods}, CaseFolder(str(workdir or tmp)),
                      channels=dict(channels or {}), figures=False)
        Path(job.folder.root).mkdir(parents=True, exist_ok=True)
        return run_stages(job, bundle, out_path, threads)


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
    bundle = load_bundle(a.model)
    cases = _cases_from_inputs(a.input, bundle.plan.task.modalities)
    out = Path(a.output)
    single = len(cases) == 1 and not (len(a.input) == 1 and Path(a.input[0]).is_dir())
    if not single:
        out.mkdir(parents=True, exist_ok=True)
    for case, (images, channels) in cases.items():
        target = out if single else out / f"{case}.nii.gz"
        predict_raw(case, images, bundle, target, channels, threads=a.threads)
        log.info("case %s -> %s", case, target)
    return 0


