"""Evaluate one predicted label map against its reference: geometry and conventions checked first.

The result is a JSON-able dict (schema in ``docs/results_schema.md``) with every metric of
:func:`medseg.evaluate.metrics.all_metrics` for each BraTS region (WT, TC, ET) and each label
(NCR, ED, ET), and optionally the lesion-wise scores of :mod:`medseg.evaluate.lesionwise`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.evaluate import edge_cases as ec
from medseg.evaluate import metrics
from medseg.evaluate.lesionwise import lesionwise_metrics
from medseg.io import InputError, grid_differences, read_labels
from medseg.labels import REGIONS, ConventionError, check_convention, detect_convention, validate_labels, labels_to_regions

log = logging.getLogger(__name__)


def check_same_geometry(pred: sitk.Image, ref: sitk.Image, pred_path: str | Path, ref_path: str | Path) -> None:
    """Raise :class:`InputError` naming both files unless the two are on the same voxel grid.

    Same grid: :func:`medseg.io.grid_differences` (size equal; spacing, origin and direction
    within :data:`medseg.io.GRID_TOLERANCE_VOXELS` of a voxel), the test the case sheet uses too.
    """
    bad = grid_differences(pred, ref)
    if bad:
        raise InputError(f"prediction {pred_path} and reference {ref_path} are not on the same voxel grid: "
                         + "; ".join(bad) + " (prediction vs reference); resample the prediction onto the reference")


def check_conventions(pred: np.ndarray, ref: np.ndarray, convention: str, pred_path: str | Path, ref_path: str | Path) -> None:
    """Raise :class:`ConventionError` if either label map does not fit ``convention``.

    A prediction and a reference that are each recognisably of a different BraTS convention get
    a message saying which is which.
    """
    check_convention(convention)
    pred_conv = detect_convention(np.unique(pred).tolist())
    ref_conv = detect_convention(np.unique(ref).tolist())
    if pred_conv and ref_conv and pred_conv != ref_conv:
        raise ConventionError(f"prediction {pred_path} uses BraTS {pred_conv} labels but reference {ref_path} uses "
                              f"BraTS {ref_conv} labels; convert one of them so both use the same convention")
    validate_labels(pred, convention, where=f"prediction {pred_path}: ")
    validate_labels(ref, convention, where=f"reference {ref_path}: ")


def _check_regions(regions: Sequence[str]) -> tuple[str, ...]:
    regions = tuple(regions)
    if not regions or not set(regions) <= set(REGIONS):
        raise ValueError(f"regions must be a non-empty subset of {list(REGIONS)}, got {list(regions)}")
    return regions


def evaluate_arrays(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], *, case_id: str, convention: str = "2021",
                    regions: Sequence[str] = REGIONS, lesionwise: bool = False, edition: str = "2023-glioma",
                    hd_max_mm: float = ec.DEFAULT_HD_MAX_MM, nsd_tolerance_mm: float = metrics.DEFAULT_NSD_TOLERANCE_MM,
                    hd95_method: str = "pooled") -> dict:
    """Evaluate label arrays already checked for convention (see :func:`evaluate_case`).

    Args:
        pred: predicted label map ``(z, y, x)``.
        ref: reference label map, same shape.
        spacing: voxel size in mm in array axis order.
    """
    regions = _check_regions(regions)
    kw = {"hd_max_mm": hd_max_mm, "nsd_tolerance_mm": nsd_tolerance_mm, "hd95_method": hd95_method}
    pred_r = dict(zip(REGIONS, labels_to_regions(pred, convention).astype(bool)))
    ref_r = dict(zip(REGIONS, labels_to_regions(ref, convention).astype(bool)))
    result = {
        "case": case_id,
        "convention": convention,
        "spacing_mm": [float(s) for s in spacing],
        "settings": {"hd_max_mm": float(hd_max_mm), "nsd_tolerance_mm": float(nsd_tolerance_mm), "hd95_method": hd95_method},
        "regions": {r: metrics.all_metrics(ref_r[r], pred_r[r], spacing, **kw) for r in regions},
        "labels": {name: metrics.all_metrics(ref == v, pred == v, spacing, **kw) for name, v in check_convention(convention).items()},
    }
    if lesionwise:
        result["lesionwise"] = lesionwise_metrics({r: ref_r[r] for r in regions}, {r: pred_r[r] for r in regions}, spacing, edition)
    for r, m in result["regions"].items():
        log.debug("case %s %s: dice %.4f hd95 %.2f mm (%s)", case_id, r, m["dice"], m["hd95"], m["edge_case"])
    return result


def evaluate_case(pred_path: str | Path, ref_path: str | Path, *, case_id: str, convention: str = "2021",
                  regions: Sequence[str] = REGIONS, lesionwise: bool = False, edition: str = "2023-glioma",
                  hd_max_mm: float = ec.DEFAULT_HD_MAX_MM, nsd_tolerance_mm: float = metrics.DEFAULT_NSD_TOLERANCE_MM,
                  hd95_method: str = "pooled") -> dict:
    """Read a prediction and its reference and compute every metric.

    Args:
        pred_path: predicted label map (NIfTI).
        ref_path: reference label map on the same grid.
        case_id: case identifier written into the result.
        convention: BraTS label convention of both files, ``"2021"`` or ``"2023"``.
        regions: which of WT, TC, ET to report.
        lesionwise: also compute BraTS 2023 lesion-wise scores.
        edition: lesion-wise edition name (see :data:`medseg.evaluate.lesionwise.EDITIONS`).
        hd_max_mm: HD95/ASSD in mm when exactly one side is empty.
        nsd_tolerance_mm: tolerance in mm of the normalised surface Dice.
        hd95_method: ``"pooled"`` (official BraTS) or ``"max_directed"``.

    Returns:
        JSON-able dict ``{"case", "convention", "spacing_mm", "settings", "regions", "labels"[, "lesionwise"]}``.

    Raises:
        InputError: unreadable file or the two files on different grids (both named).
        ConventionError: label values outside ``convention`` or the two files in different conventions.
    """
    check_convention(convention)
    pred_img = read_labels(pred_path, case=case_id)
    ref_img = read_labels(ref_path, case=case_id)
    check_same_geometry(pred_img, ref_img, pred_path, ref_path)
    pred, ref = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(ref_img)
    check_conventions(pred, ref, convention, pred_path, ref_path)
    spacing = ref_img.GetSpacing()[::-1]  # SimpleITK (x, y, z) -> array (z, y, x)
    return evaluate_arrays(pred, ref, spacing, case_id=case_id, convention=convention, regions=regions, lesionwise=lesionwise,
                           edition=edition, hd_max_mm=hd_max_mm, nsd_tolerance_mm=nsd_tolerance_mm, hd95_method=hd95_method)
