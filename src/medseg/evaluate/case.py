"""Evaluate one predicted label map against its reference: geometry and label values checked first.

The result is a JSON-able dict (schema in ``docs/results_schema.md``) with every metric of
:func:`medseg.evaluate.metrics.all_metrics` for each region of the task (BraTS: WT, TC, ET) and
each label (BraTS: NCR, ED, ET), and optionally the lesion-wise scores of
:mod:`medseg.evaluate.lesionwise` (BraTS tasks).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.config import with_options
from medseg.evaluate import metrics
from medseg.evaluate.config import EvalConfig
from medseg.evaluate.lesionwise import lesionwise_metrics
from medseg.io import InputError, grid_differences, read_labels
from medseg.tasks.definition import LabelError, Task
from medseg.tasks.presets import brats_task, convention_mismatch

log = logging.getLogger(__name__)


def read_label_map(path: str | Path, role: str) -> sitk.Image:
    """:func:`medseg.io.read_labels` of the exact file ``path``; an error names its role and the file
    (``prediction file /p/x.nii.gz: 3 voxels are NaN ...``), not a case id guessed from the other file."""
    try:
        return read_labels(path)
    except InputError as e:
        raise InputError(f"{role} {e}") from e


def check_same_geometry(pred: sitk.Image, ref: sitk.Image, pred_path: str | Path, ref_path: str | Path) -> None:
    """Raise :class:`InputError` naming both files unless the two are on the same voxel grid.

    Same grid: :func:`medseg.io.grid_differences` (size equal; spacing, origin and direction
    within :data:`medseg.io.GRID_TOLERANCE_VOXELS` of a voxel), the test the case sheet uses too.
    """
    bad = grid_differences(pred, ref)
    if bad:
        raise InputError(f"prediction {pred_path} and reference {ref_path} are not on the same voxel grid: "
                         + "; ".join(bad) + " (prediction vs reference); resample the prediction onto the reference")


def check_labels(pred: np.ndarray, ref: np.ndarray, task: Task, pred_path: str | Path, ref_path: str | Path) -> None:
    """Raise :class:`LabelError` if either label map holds values outside ``task``.

    For BraTS tasks a prediction and a reference that are each recognisably of a different
    convention get a message saying which is which.
    """
    if task.preset and task.preset.startswith("brats"):
        conv = task.preset[len("brats"):]
        for what, arr, path in (("prediction", pred, pred_path), ("reference", ref, ref_path)):
            why = convention_mismatch(np.unique(arr).tolist(), conv, f"{what} {path}: ")
            if why:
                raise LabelError(why)
    task.check_values(np.unique(pred).tolist(), f"prediction {pred_path}: ")
    task.check_values(np.unique(ref).tolist(), f"reference {ref_path}: ")


def _check_regions(task: Task, regions: Sequence[str] | None) -> tuple[str, ...]:
    if regions is None:
        return tuple(task.regions)
    regions = tuple(regions)
    if not set(regions) <= set(task.regions):
        raise ValueError(f"regions must be a subset of the task's {list(task.regions)}, got {list(regions)}")
    return regions


def task_for(task: Task | None, convention: str | None) -> Task:
    """``task``, or the BraTS task of ``convention`` (the CLI's ``--convention``)."""
    if task is not None:
        return task
    return brats_task("brats", convention or "2021")


def evaluate_arrays(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], *, case_id: str,
                    task: Task | None = None, convention: str | None = None, regions: Sequence[str] | None = None,
                    config: EvalConfig | None = None) -> dict:
    """Evaluate label arrays already checked against the task (see :func:`evaluate_case`).

    Args:
        pred: predicted label map ``(z, y, x)``.
        ref: reference label map, same shape.
        spacing: voxel size in mm in array axis order.
        task: the dataset's task; ``None``: BraTS in ``convention``.
        config: metric settings (:class:`~medseg.evaluate.config.EvalConfig`; default: its defaults).
    """
    task = task_for(task, convention)
    regions = _check_regions(task, regions)
    cfg = EvalConfig() if config is None else config
    kw = {"hd_max_mm": cfg.hd_max_mm, "nsd_tolerance_mm": cfg.nsd_tolerance_mm, "hd95_method": cfg.hd95_method}
    values = task.region_values()
    pred_r = {r: np.isin(pred, values[r]) for r in regions}
    ref_r = {r: np.isin(ref, values[r]) for r in regions}
    result = {
        "case": case_id,
        "task": task.name,
        "convention": task.preset[len("brats"):] if task.preset else None,
        "spacing_mm": [float(s) for s in spacing],
        "settings": {"hd_max_mm": float(cfg.hd_max_mm), "nsd_tolerance_mm": float(cfg.nsd_tolerance_mm),
                     "hd95_method": cfg.hd95_method},
        "regions": {r: metrics.all_metrics(ref_r[r], pred_r[r], spacing, **kw) for r in regions},
        "labels": {name: metrics.all_metrics(ref == v, pred == v, spacing, **kw) for name, v in task.labels.items()},
    }
    if cfg.lesionwise and regions:
        result["lesionwise"] = lesionwise_metrics({r: ref_r[r] for r in regions}, {r: pred_r[r] for r in regions},
                                                  spacing, cfg.edition)
    for r, m in {**result["regions"], **result["labels"]}.items():
        log.debug("case %s %s: dice %.4f hd95 %.2f mm (%s)", case_id, r, m["dice"], m["hd95"], m["edge_case"])
    return result


def evaluate_case(pred_path: str | Path, ref_path: str | Path, *, case_id: str, task: Task | None = None,
                  convention: str | None = None, regions: Sequence[str] | None = None,
                  config: EvalConfig | None = None, **options) -> dict:
    """Read a prediction and its reference and compute every metric.

    Args:
        pred_path: predicted label map (NIfTI).
        ref_path: reference label map on the same grid.
        case_id: case identifier written into the result.
        task: the dataset's task (labels, regions); ``None``: BraTS in ``convention``.
        convention: BraTS label convention of both files, ``"2021"`` or ``"2023"`` (without ``task``).
        regions: which of the task's regions to report (default all).
        config: metric settings (:class:`~medseg.evaluate.config.EvalConfig`, config key
            ``evaluation``; default: its defaults): ``hd_max_mm`` (HD95/ASSD in mm when exactly one
            side is empty), ``nsd_tolerance_mm`` (tolerance in mm of the normalised surface Dice),
            ``hd95_method`` (``"pooled"``, official BraTS, ``"max_directed"`` or ``"surfel"``),
            ``lesionwise`` (also the BraTS 2023 lesion-wise scores) and ``edition`` (their
            parameters, :data:`medseg.evaluate.lesionwise.EDITIONS`).
        **options: fields of :class:`~medseg.evaluate.config.EvalConfig` overriding ``config``
            (``lesionwise=True``, ...); an unknown name raises ``ValueError`` listing the valid ones.

    Returns:
        JSON-able dict ``{"case", "task", "convention", "spacing_mm", "settings", "regions", "labels"``
        ``[, "lesionwise"]}``.

    Raises:
        InputError: unreadable file or the two files on different grids (both named).
        LabelError: label values outside the task, or (BraTS) the two files in different conventions.
        ValueError: an unknown option or an invalid setting.
    """
    config = with_options(EvalConfig() if config is None else config, options, "evaluate_case")
    task = task_for(task, convention)
    pred_img, ref_img = read_label_map(pred_path, "prediction"), read_label_map(ref_path, "reference")
    check_same_geometry(pred_img, ref_img, pred_path, ref_path)
    pred, ref = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(ref_img)
    check_labels(pred, ref, task, pred_path, ref_path)
    spacing = ref_img.GetSpacing()[::-1]  # SimpleITK (x, y, z) -> array (z, y, x)
    return evaluate_arrays(pred, ref, spacing, case_id=case_id, task=task, regions=regions, config=config)
