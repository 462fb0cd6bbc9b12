"""BraTS lesion-wise Dice and HD95 per region, and the instance-wise scores of later scorers, by edition.

An *edition* (config ``evaluation.edition``, CLI ``--edition``) fixes every definition the way
that challenge's official code does; :data:`EDITIONS` lists them and the result JSON repeats the
edition's parameters and units.

``2023-*`` editions: re-implemented from the BraTS 2023 lesion-wise scorer,
github.com/rachitsaluja/BraTS-2023-Metrics (``metrics.py``: ``get_LesionWiseScores`` and
``get_LesionWiseResults``; tested equal to it in ``tests/test_lesionwise_reference.py``), per
region (WT, TC, ET):

1. Reference lesions: the reference is dilated ``dilation_voxels`` times with the 18-connected
   structuring element (``generate_binary_structure(3, 2)``); each 26-connected component of
   the dilated mask groups the reference voxels inside it into one lesion, so nearby fragments
   count as one lesion. The reference itself is not changed.
2. Predicted lesions: 26-connected components of the prediction.
3. Each reference lesion is dilated again the same way; every predicted component touching
   that dilated lesion is matched to it. Lesion Dice and HD95 are computed between the
   (undilated) lesion and the union of its matched components; a missed lesion gets Dice 0
   and HD95 = ``hd_max_mm`` (374 mm).
4. Reference lesions of volume ``<= min_volume_mm3`` (voxel count x voxel volume in mm³, as
   the scorer computes it from the NIfTI zooms) are dropped from the score.
5. Predicted components matched to no reference lesion (small ones included) are false
   positives, each scored Dice 0 and HD95 ``hd_max_mm``.
6. Score = mean over kept reference lesions and false positives; with neither (nothing to
   find, nothing predicted) Dice 1 and HD95 0.

As in the official code, a predicted component touching two reference lesions counts for both.
HD95 is the ``surfel`` definition of :mod:`medseg.evaluate.metrics` (DeepMind's
``surface-distance`` ``compute_robust_hausdorff``, which the scorer calls), in mm: the scorer
passes the NIfTI voxel size, so distances are in mm on any grid.

``2026-*`` editions: the scorer the challenge uses now, ``brats-evaluation`` on ``panoptica``
(:mod:`medseg.evaluate.instancewise`): each region additionally gets ``"instancewise"``
(``pq_dsc``, ``sq_dsc``, ``rq``, precision, recall, per-instance Dice/HD95/NSD...). Their
``dice``/``hd95``/``n_*`` keys keep the 2023 lesion-wise definition with the 2023 parameters of
the same tumour type, so lesion-wise numbers stay comparable across editions; the 2026
leaderboard numbers are the ``instancewise`` ones.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from medseg.evaluate import edge_cases as ec
from medseg.evaluate import instancewise, metrics

log = logging.getLogger(__name__)

SOURCE = "https://github.com/rachitsaluja/BraTS-2023-Metrics"
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_DILATION_STRUCTURE = ndimage.generate_binary_structure(3, 2)
UNITS = {"hd95": "mm", "volume_mm3": "mm3", "hd_max_mm": "mm", "min_volume_mm3": "mm3", "dilation_voxels": "voxels"}
"""Units of the lesion-wise numbers (written into the result as ``"units"``)."""


@dataclass(frozen=True)
class Edition:
    """Every definition of one challenge edition's lesion-wise (and instance-wise) scores.

    Attributes:
        name: registry key, e.g. ``"2023-glioma"``.
        dilation_voxels: dilation iterations (18-connected) for grouping and matching lesions.
        min_volume_mm3: reference lesions at or below this volume (mm³) are not scored.
        hd_max_mm: HD95 (mm) given to missed and spurious lesions.
        hd95_method: HD95 definition, one of :data:`medseg.evaluate.metrics.HD95_METHODS`
            (``surfel`` is the BraTS 2023 scorer's).
        instancewise: also compute the instance-wise scores of ``brats-evaluation``/panoptica.
        scorer: the official code this edition reproduces.
    """

    name: str
    dilation_voxels: int
    min_volume_mm3: float
    hd_max_mm: float = 374.0
    hd95_method: str = metrics.SURFEL
    instancewise: bool = False
    scorer: str = SOURCE

    def __post_init__(self) -> None:
        if self.dilation_voxels < 0:
            raise ValueError(f"dilation_voxels must be >= 0, got {self.dilation_voxels}")
        if self.min_volume_mm3 < 0:
            raise ValueError(f"min_volume_mm3 must be >= 0 mm³, got {self.min_volume_mm3}")
        ec.check_hd_max(self.hd_max_mm)
        metrics.check_hd95_method(self.hd95_method)


_SCORER_2026 = f"lesion-wise: {SOURCE} (2023 parameters); instance-wise: {instancewise.SOURCE}"
# get_LesionWiseResults() of the 2023 scorer: (dilation, threshold) per challenge.
EDITIONS: dict[str, Edition] = {e.name: e for e in (
    Edition("2023-glioma", 3, 50),       # BraTS-GLI
    Edition("2023-ssa", 3, 50),          # BraTS-SSA (sub-Saharan Africa glioma)
    Edition("2023-meningioma", 1, 50),   # BraTS-MEN
    Edition("2023-pediatric", 3, 50),    # BraTS-PED
    Edition("2023-metastases", 1, 2),    # BraTS-MET
    # brats-evaluation 0.0.10 configs gli, MenPre, ped, mets (one panoptica setup; label groups differ)
    Edition("2026-glioma", 3, 50, instancewise=True, scorer=_SCORER_2026),
    Edition("2026-meningioma", 1, 50, instancewise=True, scorer=_SCORER_2026),
    Edition("2026-pediatric", 3, 50, instancewise=True, scorer=_SCORER_2026),
    Edition("2026-metastases", 1, 2, instancewise=True, scorer=_SCORER_2026),
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
        "scored"}, ...]}``, plus ``"instancewise"`` (:func:`~medseg.evaluate.instancewise.instancewise_region`)
        for editions with ``instancewise``.
    """
    ed = get_edition(edition) if isinstance(edition, str) else edition
    ref, pred = np.asarray(ref, dtype=bool), np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape or ref.ndim != 3:
        raise ValueError(f"ref and pred must be 3-D masks of one shape, got {ref.shape} and {pred.shape}")
    extra = {"instancewise": instancewise.instancewise_region(ref, pred, spacing)} if ed.instancewise else {}
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
    } | extra


def lesionwise_metrics(ref_regions: dict[str, np.ndarray], pred_regions: dict[str, np.ndarray], spacing: Sequence[float],
                       edition: Edition | str = "2023-glioma") -> dict:
    """Lesion-wise scores for each named region, plus the edition used.

    Args:
        ref_regions: ``{region name: reference mask (z, y, x)}``.
        pred_regions: ``{region name: predicted mask}``, the same names.
        spacing: voxel size in mm in array axis order.
        edition: :class:`Edition` or its name in :data:`EDITIONS`.

    Returns:
        ``{"edition": {...parameters...}, "source": scorer, "units": {...}, "regions": {name:
        lesionwise_region(...)}}``; ``units`` also holds ``"instancewise"`` units when computed.
    """
    ed = get_edition(edition) if isinstance(edition, str) else edition
    if set(ref_regions) != set(pred_regions):
        raise ValueError(f"pred_regions {sorted(pred_regions)} must name the same regions as ref_regions {sorted(ref_regions)}")
    out = {name: lesionwise_region(ref_regions[name], pred_regions[name], spacing, ed) for name in ref_regions}
    units = dict(UNITS) | ({"instancewise": dict(instancewise.UNITS)} if ed.instancewise else {})
    return {"edition": asdict(ed), "source": ed.scorer, "units": units, "regions": out}
