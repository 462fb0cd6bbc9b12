"""A case's intensities: brain statistics, the fold normalisers fitted on training cases, normalised
arrays (what prediction reads) and training tiles.

The brain is the skull-stripping job's mask, or without skull stripping (BraTS data comes
stripped) the voxels nonzero in any modality (:func:`nonzero_brain`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.io import InputError, read_image, read_labels, read_json, save_npz, write_json
from medseg.preprocess.case import CaseJob
from medseg.preprocess.config import NormalizeStage, NormConfig
from medseg.preprocess.normalize import brain_quantiles, fit_model_from_quantiles, normalize
from medseg.tasks.definition import Task

log = logging.getLogger(__name__)


def nonzero_brain(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The brain of scans that come skull-stripped: voxels nonzero in any modality, holes filled."""
    from scipy import ndimage as ndi

    return ndi.binary_fill_holes(np.logical_or.reduce([a != 0 for a in arrays.values()]))


def _load(case: str, images: dict[str, str], mask: str | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The case's arrays and its brain: ``mask``, or with ``None`` (steps.skullstrip off) :func:`nonzero_brain`."""
    arrays = {m: sitk.GetArrayFromImage(read_image(p, case=case)) for m, p in images.items()}
    brain = sitk.GetArrayFromImage(read_labels(mask, case=case)) > 0 if mask else nonzero_brain(arrays)
    return arrays, brain


def _check_brain(case: str, brain: np.ndarray, images: Mapping[str, str], mask: str | None) -> None:
    """Raise InputError naming the case and the files if there is no brain left to normalise."""
    if not brain.any():
        raise InputError(f"case {case!r}, file {mask}: the brain mask is empty: no brain voxels to compute intensity "
                         "statistics on or normalise (check the skull-stripping QC image)" if mask else
                         f"case {case!r}, files {sorted(images.values())}: every voxel is 0 in every modality: no "
                         "brain voxels to compute intensity statistics on or normalise")


def case_quantiles(case: str, images: dict[str, str], mask: str | None) -> dict:
    """The case's intensity quantiles inside its brain (what fitting a fold reads)."""
    arrays, brain = _load(case, images, mask)
    _check_brain(case, brain, images, mask)
    return {"case": case, **brain_quantiles(arrays, brain)}


def brain_stats(case: str, images: dict[str, str], mask: str | None, out_json: str) -> dict:
    """Write :func:`case_quantiles` to ``out_json``."""
    out = case_quantiles(case, images, mask)
    write_json(out, out_json)
    return out


def quantiles_from_images(images: Mapping[str, Mapping[str, str]], threads: int = 1) -> list[dict]:
    """:func:`case_quantiles` inside :func:`nonzero_brain` for every case (case -> {modality: path}),
    ``threads`` cases at a time (steps.skullstrip off: there is no per-case skull-stripping job)."""
    from medseg.io import thread_map

    return thread_map(lambda c: case_quantiles(c, dict(images[c]), None), images, threads, "intensity statistics",
                      "case")


def collect_stats(stats: Sequence[str | Mapping], out_json: str) -> dict:
    """Gather per-case :func:`brain_stats` files (or their dicts) into one ``{case: quantiles}`` table."""
    table = {}
    for st in stats:
        st = st if isinstance(st, Mapping) else read_json(st)
        table[st["case"]] = {k: v for k, v in st.items() if k != "case"}
    write_json(table, out_json)
    return table


def fit_normalizer(cases: Sequence[str], stats_table: str, out_json: str, cfg: NormConfig,
                   modalities: Sequence[str] | None = None) -> dict:
    """Fit the Nyul standard scale on ``cases``' quantiles (from :func:`collect_stats`) and write it."""
    table = read_json(stats_table)
    missing = [c for c in cases if c not in table]
    if missing:
        raise InputError(f"{stats_table} has no intensity statistics for training case(s) {missing[:5]}: "
                         "re-run collect_brain_stats")
    model = fit_model_from_quantiles([table[c] for c in cases], cfg, modalities)
    model["cases"] = list(cases)
    write_json(model, out_json)
    return model


def gather_normalizers(model_jsons: Sequence[str], out_json: str) -> dict:
    """Every fold's normaliser (one :func:`fit_normalizer` file per fold, in fold order) in one file:
    what each case's normalisation reads, one input instead of one per fold."""
    gathered = {"folds": [read_json(p) for p in model_jsons]}
    write_json(gathered, out_json)
    return gathered


def fold_models(model_jsons: str | Sequence[str]) -> list[dict]:
    """The fold normalisers from a :func:`gather_normalizers` file, or from one file per fold."""
    if isinstance(model_jsons, (str, Path)):
        return read_json(model_jsons)["folds"]
    return [read_json(p) for p in model_jsons]


def normalized_arrays(case: str, images: dict[str, str], mask: str | None, model_jsons: str | Sequence[str],
                      cfg: NormConfig, seg: str | None = None, task: Task | None = None) -> dict[str, np.ndarray]:
    """``case`` normalised with each fold's normaliser (``mask=None``: :func:`nonzero_brain`).

    ``model_jsons``: see :func:`fold_models`. Returns ``image`` (folds, C, z, y, x) float32 (fold
    k normalised with fold k's normaliser, channels in modality order), ``brain`` (uint8) and, if
    ``seg`` is given, ``labels`` (checked against ``task``; a label map on another grid than the
    images, e.g. the source one when the images were resampled, is resampled onto theirs with
    nearest neighbour).
    """
    arrays, brain = _load(case, images, mask)
    _check_brain(case, brain, images, mask)
    folds = []
    for model in fold_models(model_jsons):
        norm = normalize(arrays, brain, model, cfg)
        folds.append(np.stack([norm[m] for m in images]))
    out = {"image": np.stack(folds), "brain": brain.astype(np.uint8)}
    if seg is not None:
        if task is None:
            raise ValueError(f"case {case}: a label map needs the task to check its values against")
        seg_img = read_labels(seg, case=case)
        grid = read_image(next(iter(images.values())), case=case)
        if seg_img.GetSize() != grid.GetSize() or not np.allclose(seg_img.GetSpacing(), grid.GetSpacing(), atol=1e-3) \
                or not np.allclose(seg_img.GetOrigin(), grid.GetOrigin(), atol=1e-3):
            seg_img = sitk.Resample(seg_img, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        labels = sitk.GetArrayFromImage(seg_img)
        task.check_values(np.unique(labels).tolist(), f"case {case}, file {seg}: ")
        out["labels"] = labels
    return out


def case_brain(job: CaseJob, stage: NormalizeStage) -> tuple[dict[str, str], str | None]:
    """The stage folder's images of ``job`` and its brain mask file (None: the nonzero voxels)."""
    return job.folder.images(stage.stage, job.modalities), (job.folder.brain_mask if stage.masked else None)


def normalize_case(job: CaseJob, stage: NormalizeStage, normalizers: str | Sequence[str]) -> None:
    """Write :func:`normalized_arrays` of the case to its ``norm.npz`` (what prediction reads)."""
    images, mask = case_brain(job, stage)
    save_npz(job.folder.norm, **normalized_arrays(job.case, images, mask, normalizers, stage.settings))


def tile_training_case(job: CaseJob, stage: NormalizeStage, normalizers: str | Sequence[str], task: Task,
                       out_npy: str) -> dict:
    """Normalise a labelled case for every fold and write its training tiles (``out_npy`` and the
    slice table beside it, ``.json``); the label map is the registered one (``reg/seg.nii.gz``) or,
    without registration, the source file."""
    from medseg.preprocess.tiling import tile_case

    images, mask = case_brain(job, stage)
    seg = job.folder.reg_seg if stage.stage == "reg" else job.seg
    if seg is None:
        raise InputError(f"case {job.case}: no label map to tile (an unlabelled case)")
    arrays = normalized_arrays(job.case, images, mask, normalizers, stage.settings, seg, task)
    return tile_case(job.case, arrays, task, out_npy, str(Path(out_npy).with_suffix(".json")))


def collect_case_stats(cases: Sequence[str], inputs, out_json: str, modalities: Sequence[str], threads: int = 1) -> dict:
    """The intensity table of the training ``cases`` (what :func:`fit_normalizer` reads): from their
    ``brain_stats.json`` (``inputs.stats``), or without skull stripping from their image folders
    (``inputs.images``, the nonzero voxels; ``threads`` cases at a time)."""
    if inputs.get("stats"):
        return collect_stats(inputs.stats, out_json)
    images = {c: {m: f"{d}/{m}.nii.gz" for m in modalities} for c, d in zip(cases, inputs.images)}
    return collect_stats(quantiles_from_images(images, threads), out_json)
