"""BraTS 2023 lesion-wise Dice and HD95, with the per-challenge parameters as editions.

Re-implemented from the official scorer, github.com/rachitsaluja/BraTS-2023-Metrics
(``brats_2023_metrics/surface_distance/brats_metrics.py``: ``get_lesion_wise_score`` and
``get_lesion_wise_results``), per region (WT, TC, ET):

1. Reference lesions: the reference is dilated ``dilation_voxels`` times with the 18-connected
   structuring element (``generate_binary_structure(3, 2)``); each 26-connected component of
   the dilated mask groups the reference voxels inside it into one lesion, so nearby fragments
   count as one lesion. The reference itself is not changed.
2. Predicted lesions: 26-connected components of the prediction.
3. Each reference lesion is dilated again the same way; every predicted component touching
   that dilated lesion is matched to it. Lesion Dice and HD95 are computed between the
   (undilated) lesion and the union of its matched components; a missed lesion gets Dice 0
   and HD95 = ``hd_max_mm`` (374 mm).
4. Reference lesions of volume ``<= min_volume_mm3`` are dropped from the score (the official
   code compares voxel count times voxel volume, i.e. voxels at BraTS' 1 mm isotropic).
5. Predicted components matched to no reference lesion (small ones included) are false
   positives, each scored Dice 0 and HD95 ``hd_max_mm``.
6. Score = mean over kept reference lesions and false positives; with neither (nothing to
   find, nothing predicted) Dice 1 and HD95 0.

As in the official code, a predicted component touching two reference lesions counts for both.
HD95 uses the ``max_directed`` definition of :mod:`medseg.evaluate.metrics`, like the 2023
scorer's ``compute_robust_hausdorff`` (which measures between voxel-corner surfels, so values
can differ by a fraction of a voxel).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from medseg.evaluate import edge_cases as ec
from medseg.evaluate import metrics

log = logging.getLogger(__name__)

SOURCE = "https://github.com/rachitsaluja/BraTS-2023-Metrics"
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_DILATION_STRUCTURE = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class Edition:
    """Lesion-wise parameters of one challenge edition.

    Attributes:
        name: registry key, e.g. ``"2023-glioma"``.
        dilation_voxels: dilation iterations (18-connected) for grouping and matching lesions.
        min_volume_mm3: reference lesions at or below this volume are not scored.
        hd_max_mm: HD95 given to missed and spurious lesions.
        hd95_method: key of :data:`medseg.evaluate.metrics.HD95_METHODS`.
    """

    name: str
    dilation_voxels: int
    min_volume_mm3: float
    hd_max_mm: float = 374.0
    hd95_method: str = "max_directed"

    def __post_init__(self) -> None:
        if self.dilation_voxels < 0:
            raise ValueError(f"dilation_voxels must be >= 0, got {self.dilation_voxels}")
        if self.min_volume_mm3 < 0:
            raise ValueError(f"min_volume_mm3 must be >= 0 mm³, got {self.min_volume_mm3}")
        ec.check_hd_max(self.hd_max_mm)
        metrics.check_hd95_method(self.hd95_method)


# get_challenge_parameters() of the official scorer: (dilation, threshold) per challenge.
EDITIONS: dict[str, Edition] = {e.name: e for e in (
    Edition("2023-glioma", 3, 50),       # BraTS-GLI
    Edition("2023-ssa", 3, 50),          # BraTS-SSA (sub-Saharan Africa glioma)
    Edition("2023-meningioma", 1, 50),   # BraTS-MEN
    Edition("2023-pediatric", 3, 50),    # BraTS-PED
    Edition("2023-metastases", 1, 2),    # BraTS-MET
)}


def get_edition(name: str) -> Edition:
    """Look up an edition by name, raising ``ValueError`` that lists the valid names."""
    if name not in EDITIONS:
        raise ValueError(f"lesion-wise edition must be one of {sorted(EDITIONS)}, got {name!r}")
    return EDITIONS[name]


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    # iterations=0 would mean "until nothing changes" in scipy, hence the guard.
    return ndimage.binary_dilation(mask, _DILATION_STRUCTURE, iterations=iterations) if iterations else mask


def _grow(box: tuple[slice, ...], by: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - by, 0), min(s.stop + by, n)) for s, n in zip(box, shape))


def _union(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(len(boxes[0])))


def lesionwise_region(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], edition: Edition | str = "2023-glioma") -> dict:
    """Lesion-wise scores of one binary region.

    Args:
        ref: reference mask ``(z, y, x)``.
        pred: predicted mask, same shape.
        spacing: voxel size in mm in array axis order.
        edition: :class:`Edition` or its name in :data:`EDITIONS`.

    Returns:
        ``{"dice", "hd95" (mm), "n_tp", "n_fn", "n_fp", "n_small" (reference lesions too small
        to score), "edge_case", "lesions": [{"volume_mm3", "dice", "hd95", "n_matched",
        "scored"}, ...]}``.
    """
    ed = get_edition(edition) if isinstance(edition, str) else edition
    ref, pred = np.asarray(ref, dtype=bool), np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape or ref.ndim != 3:
        raise ValueError(f"ref and pred must be 3-D masks of one shape, got {ref.shape} and {pred.shape}")
    voxel_mm3 = metrics.volume_ml(np.ones((1, 1, 1), bool), spacing) * 1000.0
    case = metrics.edge_case(ref, pred)
    box = metrics.bounding_box(ref | pred, 2 * ed.dilation_voxels + 1)  # exact: outside is background
    if box is not None:
        ref, pred = ref[box], pred[box]

    pred_cc, n_pred = ndimage.label(pred, _CONNECTIVITY_26)
    groups, _ = ndimage.label(_dilate(ref, ed.dilation_voxels), _CONNECTIVITY_26)
    lesions_cc = np.where(ref, groups, 0)
    pred_boxes = ndimage.find_objects(pred_cc)

    lesions, matched_all = [], set()
    for i, lbox in enumerate(ndimage.find_objects(lesions_cc), start=1):
        if lbox is None:
            continue
        grown = _grow(lbox, ed.dilation_voxels, ref.shape)
        near = _dilate(lesions_cc[grown] == i, ed.dilation_voxels)
        matched = sorted(set(np.unique(pred_cc[grown][near]).tolist()) - {0})
        matched_all.update(matched)
        joint = _union([lbox] + [pred_boxes[m - 1] for m in matched])
        lesion, hit = lesions_cc[joint] == i, np.isin(pred_cc[joint], matched)
        volume = float(np.count_nonzero(lesion) * voxel_mm3)
        lesions.append({"volume_mm3": volume, "n_matched": len(matched), "scored": volume > ed.min_volume_mm3,
                        "dice": metrics.dice(lesion, hit),
                        "hd95": metrics.hd95(lesion, hit, spacing, method=ed.hd95_method, hd_max_mm=ed.hd_max_mm)})

    scored = [les for les in lesions if les["scored"]]
    n_fp = n_pred - len(matched_all)
    n = len(scored) + n_fp
    return {
        "dice": sum(les["dice"] for les in scored) / n if n else 1.0,
        "hd95": (sum(les["hd95"] for les in scored) + n_fp * ed.hd_max_mm) / n if n else 0.0,
        "n_tp": sum(1 for les in scored if les["n_matched"]),
        "n_fn": sum(1 for les in scored if not les["n_matched"]),
        "n_fp": n_fp,
        "n_small": len(lesions) - len(scored),
        "edge_case": case,
        "lesions": lesions,
    }


def lesionwise_metrics(ref_regions: dict[str, np.ndarray], pred_regions: dict[str, np.ndarray], spacing: Sequence[float],
                       edition: Edition | str = "2023-glioma") -> dict:
    """Lesion-wise scores for each named region, plus the edition used.

    Returns:
        ``{"edition": {...parameters...}, "source": url, "regions": {name: lesionwise_region(...)}}``.
    """
    ed = get_edition(edition) if isinstance(edition, str) else edition
    if set(ref_regions) != set(pred_regions):
        raise ValueError(f"pred_regions {sorted(pred_regions)} must name the same regions as ref_regions {sorted(ref_regions)}")
    out = {name: lesionwise_region(ref_regions[name], pred_regions[name], spacing, ed) for name in ref_regions}
    return {"edition": asdict(ed), "source": SOURCE, "regions": out}
