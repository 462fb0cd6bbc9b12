"""Overlap, surface-distance and volume metrics on binary masks with physical spacing.

All functions take boolean (or 0/1) arrays ``ref`` and ``pred`` of the same shape and, where
distances or volumes are involved, ``spacing`` in mm **in array axis order** (for an array
from SimpleITK that is ``(z, y, x)``, i.e. ``image.GetSpacing()[::-1]``).

Surface definition (the one of the official BraTS scorer ``brats-evaluation`` 0.0.10, via
panoptica 2.1.7, which is MedPy's): the surface of a mask is its border voxels,
``mask XOR binary_erosion(mask)`` with the 6-connected structuring element (voxels outside the
array count as background). For every border voxel of one mask the distance in mm to the
nearest border voxel of the other is read from ``scipy.ndimage.distance_transform_edt`` with
``sampling=spacing``. From the two directed distance sets ``d(ref->pred)`` and
``d(pred->ref)``:

* **HD95** ``pooled`` (default, official ``brats-evaluation`` and MedPy ``hd95``): the 95th
  percentile (numpy linear interpolation) of the union of both sets.
  ``max_directed`` (MONAI): the larger of the two directed 95th percentiles.
  ``surfel`` (BraTS 2023 scorer, both its legacy and its lesion-wise HD95): DeepMind's
  ``surface-distance`` ``compute_robust_hausdorff(compute_surface_distances(ref, pred,
  spacing), 95)``. Its surface is made of surface elements ("surfels") on the voxel-corner
  grid, each weighted by its area in mm²; per direction the HD95 is the smallest distance at
  which the cumulative surfel area reaches 95 % of that surface; the result is the larger of the
  two directions. It differs from ``pooled``/``max_directed`` by up to a voxel or so.
* **ASSD**: mean of the two directed mean distances (MedPy, panoptica).
* **NSD** at tolerance ``tau`` (Nikolov et al. 2021, counting border voxels instead of surfel
  areas): fraction of all border voxels of both masks lying within ``tau`` mm of the other
  surface.

Speed: both masks are cropped to their joint bounding box plus a margin before eroding and
transforming. The crop is exact: every surface voxel lies inside it and voxels outside are
background in both masks.

Empty masks are never computed on; their values come from :mod:`medseg.evaluate.edge_cases`.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.evaluate import edge_cases as ec
from medseg.evaluate.config import EvalConfig

DEFAULT_NSD_TOLERANCE_MM = EvalConfig.nsd_tolerance_mm


def _pair(ref: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, pred = np.asarray(ref, dtype=bool), np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape:
        raise ValueError(f"pred shape {pred.shape} must equal ref shape {ref.shape}")
    return ref, pred


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be {ndim} positive voxel sizes in mm (array axis order), got {tuple(spacing)}")
    return sp


def edge_case(ref: np.ndarray, pred: np.ndarray) -> str:
    """Edge case of a pair: ``none``, ``both_empty``, ``ref_empty`` or ``pred_empty``."""
    ref, pred = _pair(ref, pred)
    return ec.classify(bool(ref.any()), bool(pred.any()))


def _with_edge_cases(name: str, ref: np.ndarray, pred: np.ndarray, compute: Callable[[np.ndarray, np.ndarray], float],
                     hd_max_mm: float = ec.DEFAULT_HD_MAX_MM) -> float:
    """``compute(ref, pred)`` for two non-empty masks, else the edge-case value of metric ``name``."""
    ref, pred = _pair(ref, pred)
    hd_max_mm = ec.check_hd_max(hd_max_mm)
    if (case := edge_case(ref, pred)) != ec.NONE:
        return ec.edge_value(case, name, hd_max_mm)
    return float(compute(ref, pred))


def dice(ref: np.ndarray, pred: np.ndarray) -> float:
    """Dice coefficient ``2|R∩P| / (|R|+|P|)`` in [0, 1]."""
    return _with_edge_cases("dice", ref, pred, lambda r, p: 2.0 * np.count_nonzero(r & p) / (np.count_nonzero(r) + np.count_nonzero(p)))


def iou(ref: np.ndarray, pred: np.ndarray) -> float:
    """Intersection over union (Jaccard) ``|R∩P| / |R∪P|`` in [0, 1]."""
    return _with_edge_cases("iou", ref, pred, lambda r, p: np.count_nonzero(r & p) / np.count_nonzero(r | p))


def sensitivity(ref: np.ndarray, pred: np.ndarray) -> float:
    """True-positive rate ``|R∩P| / |R|`` (edge cases: see :mod:`~medseg.evaluate.edge_cases`)."""
    return _with_edge_cases("sensitivity", ref, pred, lambda r, p: np.count_nonzero(r & p) / np.count_nonzero(r))


def specificity(ref: np.ndarray, pred: np.ndarray) -> float:
    """True-negative rate ``|¬R∩¬P| / |¬R|``; 1 when the reference has no background voxel."""
    ref, pred = _pair(ref, pred)
    negatives = np.count_nonzero(~ref)
    return 1.0 if negatives == 0 else float(np.count_nonzero(~ref & ~pred) / negatives)


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of ``mask`` in mL (1 mL = 1000 mm³)."""
    mask = np.asarray(mask, dtype=bool)
    return np.count_nonzero(mask) * float(np.prod(_spacing(spacing, mask.ndim))) / 1000.0


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels (clipped); None if empty."""
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        return None
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + 1 + margin, n)) for i, n in zip(idx, mask.shape))


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed surface distances in mm.

    Attributes:
        ref_to_pred: one distance per reference border voxel, to the nearest prediction border voxel.
        pred_to_ref: one distance per prediction border voxel, to the nearest reference border voxel.
    """

    ref_to_pred: np.ndarray
    pred_to_ref: np.ndarray


SURFEL = "surfel"
_BORDER_HD95: dict[str, Callable[[SurfaceDistances], float]] = {
    "pooled": lambda sd: float(np.percentile(np.concatenate([sd.ref_to_pred, sd.pred_to_ref]), 95)),
    "max_directed": lambda sd: float(max(np.percentile(sd.ref_to_pred, 95), np.percentile(sd.pred_to_ref, 95))),
}
HD95_METHODS: tuple[str, ...] = (*_BORDER_HD95, SURFEL)
"""Valid ``hd95_method`` names (see the module doc)."""


def check_hd95_method(method: str) -> str:
    """Return ``method`` if it names an HD95 definition, else raise ``ValueError`` listing the valid ones."""
    if method not in HD95_METHODS:
        raise ValueError(f"hd95_method must be one of {sorted(HD95_METHODS)}, got {method!r}")
    return method


def surfel_hd95(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], percent: float = 95.0) -> float:
    """Surface-element HD95 in mm of two non-empty masks: surface-distance's ``compute_robust_hausdorff``.

    This is the BraTS 2023 scorer's definition (legacy and lesion-wise HD95). The masks are
    cropped to their joint bounding box plus one voxel first, which does not change the result
    (``compute_surface_distances`` crops to the same box itself).

    Raises:
        ValueError: a mask is empty (use the edge-case values instead), or bad shapes/spacing.
    """
    import surface_distance  # DeepMind's package (PyPI ``surface-distance``), imported only when used

    ref, pred, sp, box = _surface_pair(ref, pred, spacing, 1)
    with warnings.catch_warnings():  # surface-distance 0.1 uses scipy.ndimage.filters/morphology (gone in SciPy 2)
        warnings.simplefilter("ignore", DeprecationWarning)
        dists = surface_distance.compute_surface_distances(np.ascontiguousarray(ref[box]), np.ascontiguousarray(pred[box]), sp)
    return float(surface_distance.compute_robust_hausdorff(dists, percent))


def _surface_pair(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], margin: int):
    """Checked masks, spacing and their joint bounding box (+ ``margin``) for surface distances."""
    ref, pred = _pair(ref, pred)
    sp = _spacing(spacing, ref.ndim)
    if (case := edge_case(ref, pred)) != ec.NONE:
        raise ValueError(f"surface distances need two non-empty masks, got edge case {case!r}")
    return ref, pred, sp, bounding_box(ref | pred, margin)


def _hd95(method: str, ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], sd: SurfaceDistances | None) -> float:
    if method == SURFEL:
        return surfel_hd95(ref, pred, spacing)
    return _BORDER_HD95[method](sd if sd is not None else surface_distances(ref, pred, spacing))


def _border(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def surface_distances(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], margin: int = 1) -> SurfaceDistances:
    """Directed distances in mm between the border voxels of two non-empty masks.

    Raises:
        ValueError: a mask is empty (use the edge-case values instead), or bad shapes/spacing.
    """
    ref, pred, sp, box = _surface_pair(ref, pred, spacing, margin)
    ref_b, pred_b = _border(ref[box]), _border(pred[box])
    to_pred = ndimage.distance_transform_edt(~pred_b, sampling=sp)
    to_ref = ndimage.distance_transform_edt(~ref_b, sampling=sp)
    return SurfaceDistances(ref_to_pred=to_pred[ref_b], pred_to_ref=to_ref[pred_b])


def hd95(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], *, method: str = "pooled",
         hd_max_mm: float = ec.DEFAULT_HD_MAX_MM) -> float:
    """95th-percentile Hausdorff distance in mm (``method``: ``pooled``, ``max_directed`` or ``surfel``, see module doc)."""
    check_hd95_method(method)
    return _with_edge_cases("hd95", ref, pred, lambda r, p: _hd95(method, r, p, spacing, None), hd_max_mm)


def assd(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], *, hd_max_mm: float = ec.DEFAULT_HD_MAX_MM) -> float:
    """Average symmetric surface distance in mm: mean of the two directed mean distances."""
    return _with_edge_cases("assd", ref, pred, lambda r, p: _assd(surface_distances(r, p, spacing)), hd_max_mm)


def nsd(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], *, tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice in [0, 1] at ``tolerance_mm``."""
    tol = _tolerance(tolerance_mm)
    return _with_edge_cases("nsd", ref, pred, lambda r, p: _nsd(surface_distances(r, p, spacing), tol))


def _assd(sd: SurfaceDistances) -> float:
    return float((sd.ref_to_pred.mean() + sd.pred_to_ref.mean()) / 2.0)


def _nsd(sd: SurfaceDistances, tol: float) -> float:
    within = np.count_nonzero(sd.ref_to_pred <= tol) + np.count_nonzero(sd.pred_to_ref <= tol)
    return float(within / (sd.ref_to_pred.size + sd.pred_to_ref.size))


def _tolerance(tolerance_mm: float) -> float:
    if not (isinstance(tolerance_mm, (int, float)) and math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"nsd_tolerance_mm must be a finite distance >= 0 mm, got {tolerance_mm!r}")
    return float(tolerance_mm)


def all_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], *, hd_max_mm: float = ec.DEFAULT_HD_MAX_MM,
                nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, hd95_method: str = "pooled") -> dict[str, float | str]:
    """Every metric of one region, computing the surface distances once.

    Returns:
        ``{"dice", "iou", "hd95" (mm), "assd" (mm), "nsd", "sensitivity", "specificity",
        "ref_volume_ml", "pred_volume_ml", "edge_case"}``; all floats finite.
    """
    ref, pred = _pair(ref, pred)
    sp = _spacing(spacing, ref.ndim)
    hd_max_mm, tol, hd95_method = ec.check_hd_max(hd_max_mm), _tolerance(nsd_tolerance_mm), check_hd95_method(hd95_method)
    case = edge_case(ref, pred)
    out: dict[str, float | str] = {"dice": dice(ref, pred), "iou": iou(ref, pred), "sensitivity": sensitivity(ref, pred),
                                   "specificity": specificity(ref, pred)}
    if case == ec.NONE:
        sd = surface_distances(ref, pred, sp)
        out |= {"hd95": _hd95(hd95_method, ref, pred, sp, sd), "assd": _assd(sd), "nsd": _nsd(sd, tol)}
    else:
        out |= {m: ec.edge_value(case, m, hd_max_mm) for m in ("hd95", "assd", "nsd")}
    out |= {"ref_volume_ml": volume_ml(ref, sp), "pred_volume_ml": volume_ml(pred, sp), "edge_case": case}
    return out
