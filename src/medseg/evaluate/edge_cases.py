"""The one place where empty masks are given metric values, so no metric is ever NaN.

A region can be empty in the reference, the prediction or both (ET is absent in many BraTS
low-grade cases). Ratios and surface distances are undefined there; BraTS fixes them by
convention, and every metric in :mod:`medseg.evaluate.metrics` and
:mod:`medseg.evaluate.lesionwise` looks its value up here instead of deciding for itself.

=============  =====  =====  ======  ======  =====  ===========
edge case      dice   iou    hd95    assd    nsd    sensitivity
=============  =====  =====  ======  ======  =====  ===========
``both_empty``  1      1      0       0       1      1
``ref_empty``   0      0      max     max     0      0
``pred_empty``  0      0      max     max     0      0
=============  =====  =====  ======  ======  =====  ===========

``max`` is the configured worst distance: 373.13 mm by default, the diagonal of the
240 x 240 x 155 BraTS grid at 1 mm (``sqrt(240² + 240² + 155²)``), which the legacy BraTS
scorer (CaPTk) reports; the BraTS 2023 lesion-wise scorer uses 374 mm. Sensitivity with an
empty reference follows the BraTS 2023 scorer (``tp / (tp + fn + eps)``, set to 1 when both
are empty). Specificity and volumes are always well defined and never looked up here
(specificity is 1 when the reference fills the whole image, so there is no negative voxel).

Each result dict carries its ``edge_case`` so aggregates can count how often a convention,
rather than a measurement, produced a number.
"""
from __future__ import annotations

import math

from medseg.evaluate.config import EvalConfig

NONE = "none"
BOTH_EMPTY = "both_empty"
REF_EMPTY = "ref_empty"
PRED_EMPTY = "pred_empty"
EDGE_CASES: tuple[str, ...] = (NONE, BOTH_EMPTY, REF_EMPTY, PRED_EMPTY)

DEFAULT_HD_MAX_MM = EvalConfig.hd_max_mm
"""Legacy BraTS worst-case distance in mm: diagonal of a 240 x 240 x 155 grid at 1 mm."""

_VALUES: dict[str, dict[str, float | None]] = {
    # None means "the configured maximum distance (hd_max_mm)".
    BOTH_EMPTY: {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "assd": 0.0, "nsd": 1.0, "sensitivity": 1.0},
    REF_EMPTY: {"dice": 0.0, "iou": 0.0, "hd95": None, "assd": None, "nsd": 0.0, "sensitivity": 0.0},
    PRED_EMPTY: {"dice": 0.0, "iou": 0.0, "hd95": None, "assd": None, "nsd": 0.0, "sensitivity": 0.0},
}
METRICS_WITH_EDGE_VALUES: tuple[str, ...] = tuple(_VALUES[BOTH_EMPTY])


def classify(ref_nonempty: bool, pred_nonempty: bool) -> str:
    """Name the edge case of a reference/prediction pair from whether each has a voxel."""
    if ref_nonempty and pred_nonempty:
        return NONE
    if not ref_nonempty and not pred_nonempty:
        return BOTH_EMPTY
    return REF_EMPTY if not ref_nonempty else PRED_EMPTY


def check_hd_max(hd_max_mm: float) -> float:
    """Return ``hd_max_mm`` as float, raising ``ValueError`` unless finite and positive."""
    if not (isinstance(hd_max_mm, (int, float)) and math.isfinite(hd_max_mm) and hd_max_mm > 0):
        raise ValueError(f"hd_max_mm must be a finite positive distance in mm, got {hd_max_mm!r}")
    return float(hd_max_mm)


def edge_value(edge_case: str, metric: str, hd_max_mm: float = DEFAULT_HD_MAX_MM) -> float:
    """Value of ``metric`` under ``edge_case`` (see the module table).

    Args:
        edge_case: one of ``both_empty``, ``ref_empty``, ``pred_empty``.
        metric: one of ``dice``, ``iou``, ``hd95``, ``assd``, ``nsd``, ``sensitivity``.
        hd_max_mm: worst-case distance in mm used for ``hd95`` and ``assd``.

    Raises:
        ValueError: unknown edge case (including ``none``, which has no fixed value) or metric.
    """
    if edge_case not in _VALUES:
        raise ValueError(f"edge_case must be one of {sorted(_VALUES)}, got {edge_case!r}")
    values = _VALUES[edge_case]
    if metric not in values:
        raise ValueError(f"metric must be one of {sorted(values)}, got {metric!r}")
    v = values[metric]
    return check_hd_max(hd_max_mm) if v is None else v
