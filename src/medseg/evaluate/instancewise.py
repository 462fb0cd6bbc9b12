"""Instance-wise scores of the current BraTS scorer (``brats-evaluation`` on ``panoptica``), per region.

``brats-evaluation`` 0.0.10 (the official BraTS scorer, AGPL-3.0; not a dependency of medseg)
runs ``panoptica`` (Apache-2.0) with one configuration for every tumour type; only the label
groups differ. :func:`brats_evaluator` builds the same evaluator in code for one binary region:

* input: a semantic (binary) mask; instances are its 26-connected components
  (``ConnectedComponentsInstanceApproximator``, cc3d backend for 3-D);
* matching: maximum bipartite matching on Dice, a pair is matched if Dice > 1e-6
  (any overlap);
* instance metrics DSC, NSD, HD95 and global (whole-mask) metrics DSC, NSD, HD95;
* zero-TP edge cases: DSC and NSD 0, HD95 infinite, and "undefined" (NaN) when neither side
  has an instance; the standard deviation of an empty list is NaN.

Metrics returned (panoptica's names in brackets):

* ``tp``, ``fp``, ``fn``: matched reference instances, unmatched predicted ones, unmatched
  reference ones; ``n_ref_instances``, ``n_pred_instances``;
* ``precision`` [prec] = tp / (tp + fp), ``recall`` [rec] = tp / (tp + fn),
  ``rq`` = F1 = tp / (tp + (fp + fn) / 2) (recognition quality);
* ``sq_dsc`` (mean Dice of matched pairs; segmentation quality), ``sq_dsc_std``,
  ``pq_dsc`` = ``sq_dsc * rq`` (panoptic quality);
* ``sq_hd95``, ``sq_hd95_std``: mean HD95 of matched pairs; ``sq_nsd``, ``sq_nsd_std``;
* ``global_dsc``, ``global_hd95``, ``global_nsd`` [global_bin_*]: on the whole binary masks;
* ``instances``: one entry per reference instance: ``volume_mm3``, ``matched``, ``dsc``,
  ``hd95``, ``nsd``.

HD95 is panoptica's (MedPy's): the 95th percentile of the pooled border-voxel distances of both
masks (:mod:`medseg.evaluate.metrics` ``pooled``). **Units**, as panoptica 2.1.7 computes them:

* per-instance metrics (``sq_*``, ``instances``) use the spacing: HD95 in mm, NSD with a
  tolerance of ``min(spacing)`` mm (one voxel of the finest axis), volumes in mm³;
* global metrics (``global_*``) are computed **without the spacing**: ``global_hd95`` is in
  voxels (a unit-spaced grid) and ``global_nsd`` uses a tolerance of 0.5 voxel. On BraTS' 1 mm
  grid voxels and mm coincide.

medseg passes the spacing in array axis order. ``brats-evaluation`` hands panoptica NIfTI paths;
panoptica 2.1.7 reads them with SimpleITK and pairs the ``(z, y, x)`` array with the ``(x, y,
z)`` spacing, so on an anisotropic grid its per-instance distances are those of the reversed
spacing (identical on isotropic grids).

Undefined values (NaN: every score when neither side has an instance, ``precision`` with no
prediction, ``recall`` with no reference instance, a ``*_std`` without matched pairs) and an
infinite HD95 (no matched pair; ``global_hd95`` with one side empty) are returned as ``None``,
``null`` in JSON; ``brats-evaluation``'s result parser replaces an infinite HD95 by 373 mm and
averages over cases skipping NaN.
"""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SOURCE = "brats-evaluation 0.0.10 (github.com/BraTS/BraTS_evaluation) on panoptica (github.com/BrainLesion/panoptica)"
MATCHING_THRESHOLD = 1e-6
"""Dice above which a predicted and a reference instance can be matched (brats-evaluation configs)."""
REGION_GROUP = "region"

_SUMMARY_KEYS: dict[str, str] = {  # medseg name -> panoptica result key
    "n_ref_instances": "n_ref_instances", "n_pred_instances": "n_pred_instances",
    "tp": "tp", "fp": "fp", "fn": "fn", "precision": "prec", "recall": "rec", "rq": "rq",
    "sq_dsc": "sq_dsc", "sq_dsc_std": "sq_dsc_std", "pq_dsc": "pq_dsc",
    "sq_hd95": "sq_hd95", "sq_hd95_std": "sq_hd95_std", "sq_nsd": "sq_nsd", "sq_nsd_std": "sq_nsd_std",
    "global_dsc": "global_bin_dsc", "global_hd95": "global_bin_hd95", "global_nsd": "global_bin_nsd",
}
_INSTANCE_KEYS: dict[str, str] = {"volume_mm3": "volume", "matched": "is_matched", "dsc": "sq_dsc", "hd95": "sq_hd95", "nsd": "sq_nsd"}
UNITS = {"sq_hd95": "mm", "sq_hd95_std": "mm", "instances.hd95": "mm", "instances.volume_mm3": "mm3",
         "sq_nsd tolerance": "min(spacing) mm", "global_hd95": "voxels (panoptica ignores the spacing here)",
         "global_nsd tolerance": "0.5 voxel"}
"""Units of the instance-wise numbers (the rest are counts or fractions in [0, 1])."""


def brats_evaluator(groups: dict[str, Any] | None = None):
    """A ``panoptica.Panoptica_Evaluator`` configured like ``brats-evaluation``'s bundled configs.

    Args:
        groups: ``{name: panoptica LabelGroup}``; default one group ``"region"`` = label 1 of a
            binary mask.
    """
    from panoptica import ConnectedComponentsInstanceApproximator, InputType, MaxBipartiteMatching, Metric, Panoptica_Evaluator
    from panoptica.utils.edge_case_handling import EdgeCaseHandler, EdgeCaseResult, MetricZeroTPEdgeCaseHandling
    from panoptica.utils.label_group import LabelGroup
    from panoptica.utils.segmentation_class import SegmentationClassGroups

    def zero_tp(value: EdgeCaseResult) -> MetricZeroTPEdgeCaseHandling:
        return MetricZeroTPEdgeCaseHandling(empty_prediction_result=value, empty_reference_result=value,
                                            no_instances_result=EdgeCaseResult.NAN, normal=value)

    handler = EdgeCaseHandler(listmetric_zeroTP_handling={
        Metric.DSC: zero_tp(EdgeCaseResult.ZERO), Metric.NSD: zero_tp(EdgeCaseResult.ZERO), Metric.HD95: zero_tp(EdgeCaseResult.INF)},
        empty_list_std=EdgeCaseResult.NAN)
    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(cca_backend=None),
        instance_matcher=MaxBipartiteMatching(matching_metric=Metric.DSC, matching_threshold=MATCHING_THRESHOLD),
        edge_case_handler=handler,
        segmentation_class_groups=SegmentationClassGroups(groups or {REGION_GROUP: LabelGroup([1], single_instance=False)}),
        instance_metrics=[Metric.DSC, Metric.NSD, Metric.HD95],
        global_metrics=[Metric.DSC, Metric.NSD, Metric.HD95],
        decision_metric=None, decision_threshold=None, log_times=False, save_group_times=False, verbose=False,
    )


@lru_cache(maxsize=1)
def _region_evaluator():
    from panoptica import disable_citation_reminder

    disable_citation_reminder()
    return brats_evaluator()


def _json_number(v: Any) -> float | int | None:
    """A finite plain number, or None for NaN/inf/missing (JSON has no NaN)."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def from_panoptica(result_dict: dict[str, Any]) -> dict[str, Any]:
    """medseg's instance-wise dict from a ``PanopticaResult.to_dict(True)`` of one group."""
    out: dict[str, Any] = {k: _json_number(result_dict.get(src)) for k, src in _SUMMARY_KEYS.items()}
    out["instances"] = [{k: _json_number(inst.get(src)) for k, src in _INSTANCE_KEYS.items()}
                        for inst in result_dict.get("reference_instances", [])]
    return out


def instancewise_region(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """Instance-wise scores of one binary region, as ``brats-evaluation`` computes them.

    Args:
        ref: reference mask ``(z, y, x)``.
        pred: predicted mask, same shape.
        spacing: voxel size in mm in array axis order.

    Returns:
        The keys of the module doc; counts as int, the rest float in [0, 1] or mm, or None
        where panoptica's value is NaN or infinite.
    """
    ref, pred = np.asarray(ref, dtype=bool), np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape or ref.ndim != 3:
        raise ValueError(f"ref and pred must be 3-D masks of one shape, got {ref.shape} and {pred.shape}")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be 3 positive voxel sizes in mm (array axis order), got {tuple(spacing)}")
    with warnings.catch_warnings():  # panoptica warns on every call that global NSD uses its 0.5 default
        warnings.filterwarnings("ignore", message="The threshold is set to 0.5", category=UserWarning)
        res = _region_evaluator().evaluate(pred.astype(np.uint8), ref.astype(np.uint8), voxelspacing=sp, verbose=False)
    return from_panoptica(res[REGION_GROUP].to_dict(True))
