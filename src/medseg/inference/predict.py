"""Segment a new patient's raw scans with a model bundle (:mod:`medseg.inference.bundle`): ``medseg predict``.

The bundle's plan says what to run: its recipe's stages, through the very functions the
workflow's rules call (:mod:`medseg.preprocess.stages`, :mod:`medseg.preprocess.intensity`,
:func:`medseg.inference.case.predict_case`), on a case folder laid out as the workflow's
(:class:`~medseg.preprocess.case.CaseFolder`) in a temporary directory.

Before any work: the bundle is verified (every file against its SHA-256,
:func:`~medseg.inference.bundle.load_bundle`), the inputs are matched to the task's modalities
(by name when their names say, :func:`medseg.cohort.sources.match_modalities`), and each case
gets the case sheet's checks (:func:`medseg.cohort.sources.check_case`). Each failure is one line
naming the bundle or case, the file and the fix (exit status 2).
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

    The case is checked first, as the workflow's case sheet checks it
    (:func:`medseg.cohort.sources.check_case`: headers, one grid, without registration one space,
    every voxel readable), so a case the workflow rejects is rejected here before any
    preprocessing. Intermediate files go to ``workdir`` (default: a temporary folder, removed
    afterwards).

    Raises:
        InputError: naming the case, the file and the fix.
    """
    from medseg.cohort.sources import check_case
    from medseg.tasks.layouts.base import CaseFiles

    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else load_bundle(bundle_dir)
    mods = list(bundle.plan.task.modalities)
    missing = [m for m in mods if m not in images]
    if missing:
        raise InputError(f"case {case}: the bundle's task needs modalities {mods}; missing {missing}")
    files = CaseFiles({m: str(images[m]) for m in mods}, dict(channels or {}))
    check_case(case, files, mods, full=True, same_space=not bundle.plan.recipe.steps.register)
    with tempfile.TemporaryDirectory(prefix="medseg-predict-") as tmp:
        job = CaseJob(case, dict(files.images), CaseFolder(str(workdir or tmp)), channels=dict(files.channels),
                      figures=False)
        Path(job.folder.root).mkdir(parents=True, exist_ok=True)
        return run_stages(job, bundle, out_path, threads)


def cases_from_inputs(inputs: Sequence[str], mods: Sequence[str]) -> dict[str, tuple[dict[str, str], dict[str, int]]]:
    """``-i`` as given -> case -> (modality -> file, modality -> channel of a 4-D file).

    One folder in a known layout (every case in it; cases it cannot use are logged and left out),
    or one case's files: named (``t1=a.nii.gz``), or matched to the modalities by the names they
    carry (BraTS suffixes, nnU-Net ``_0000``) in any order, or in the bundle's modality order
    (:func:`medseg.cohort.sources.match_modalities`).
    """
    from medseg.cohort.sources import case_of, match_modalities

    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        return _folder_cases(inputs[0])[0]
    images = match_modalities(inputs, mods)
    return {case_of(images, mods): (images, {})}


def _folder_cases(folder: str) -> tuple[dict[str, tuple[dict[str, str], dict[str, int]]], dict[str, str]]:
    """(case -> (images, channels), case -> why it cannot be used) of a dataset folder; the unusable logged."""
    from medseg.tasks.layouts import discover

    found = discover(folder)  # a folder that fits no layout: InputError saying what each layout expects
    for c, why in found.problems.items():
        log.error("case %s skipped: %s", c, why)
    return {c: (dict(f.images), dict(f.channels)) for c, f in found.cases.items()}, dict(found.problems)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment raw scans of new patients with a trained model bundle",
                       description="Segment raw scans (not preprocessed) with a model bundle the workflow wrote "
                                   "(results/<dataset>/bundles/<model>/): the same preprocessing, fold ensemble and "
                                   "return to the native grid as the workflow, written in the task's label values.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-i", "--input", nargs="+", required=True,
                   help="one case's scans: named (t1=a.nii.gz flair=b.nii.gz), or matched by the modality their names "
                        "carry (BraTS _t1ce/-t2f, nnU-Net _0000) in any order, or in the bundle's modality order; or a "
                        "dataset folder (BraTS, nnU-Net raw, Decathlon): every case in it, labelled or not")
    p.add_argument("-m", "--model", required=True, help="model bundle folder")
    p.add_argument("-o", "--output", required=True,
                   help="label map to write (one case: a .nii.gz file) or folder (<case>.nii.gz per case)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of inference (preprocessing uses one, as in the workflow)")
    p.set_defaults(func=_cli)


def _cli(a: argparse.Namespace) -> int:
    bundle = load_bundle(a.model)  # verified (every file's SHA-256) before any work
    out = Path(a.output)
    if not (len(a.input) == 1 and Path(a.input[0]).is_dir()):
        (case, (images, channels)), = cases_from_inputs(a.input, bundle.plan.task.modalities).items()
        predict_raw(case, images, bundle, out, channels, threads=a.threads)
        log.info("case %s -> %s", case, out)
        return 0
    cases, failed = _folder_cases(a.input[0])
    total = len(cases) + len(failed)
    out.mkdir(parents=True, exist_ok=True)
    for case, (images, channels) in cases.items():
        try:  # one case never breaks another
            predict_raw(case, images, bundle, out / f"{case}.nii.gz", channels, threads=a.threads)
            log.info("case %s -> %s", case, out / f"{case}.nii.gz")
        except InputError as e:
            failed[case] = str(e)
            log.error("%s", e)
    if failed:
        raise InputError(f"{len(failed)} of {total} case(s) of {a.input[0]} not predicted (their reasons are logged "
                         f"above): {sorted(failed)}")
    return 0
