"""Instance-wise scores against panoptica's evaluator configured like ``brats-evaluation``.

The oracle is an independent panoptica call: an evaluator loaded from a YAML config holding the
settings of brats-evaluation 0.0.10's ``config_gli.yaml`` (written out below), run on the whole
label map with its glioma label groups (wt = 1+2+3, tc = 1+3, et = 3), the way
``brats_evaluation.evaluation.evaluate_single_exam`` does. medseg evaluates each binary region
through its own evaluator built in code.
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from lesion_pairs import make_pair
from medseg.evaluate import instancewise, metrics
from medseg.evaluate.lesionwise import lesionwise_metrics
from medseg.tasks.presets import brats_task

REGIONS = ("WT", "TC", "ET")


def labels_to_regions(labels, convention):
    """``(3, *spatial)`` WT, TC, ET masks of a BraTS label map."""
    return brats_task("brats", convention).encode(labels)

panoptica = pytest.importorskip("panoptica")
nib = pytest.importorskip("nibabel")

# The evaluator settings of brats-evaluation 0.0.10 configs/config_gli.yaml (every bundled config
# shares them; only the label groups differ), as panoptica YAML.
BRATS_EVALUATION_GLI = """!Panoptica_Evaluator
decision_metric: null
decision_threshold: null
edge_case_handler: !EdgeCaseHandler
  empty_list_std: !EdgeCaseResult NAN
  listmetric_zeroTP_handling:
    !Metric DSC: !MetricZeroTPEdgeCaseHandling {empty_prediction_result: !EdgeCaseResult ZERO,
      empty_reference_result: !EdgeCaseResult ZERO, no_instances_result: !EdgeCaseResult NAN,
      normal: !EdgeCaseResult ZERO}
    !Metric NSD: !MetricZeroTPEdgeCaseHandling {empty_prediction_result: !EdgeCaseResult ZERO,
      empty_reference_result: !EdgeCaseResult ZERO, no_instances_result: !EdgeCaseResult NAN,
      normal: !EdgeCaseResult ZERO}
    !Metric HD95: !MetricZeroTPEdgeCaseHandling {empty_prediction_result: !EdgeCaseResult INF,
      empty_reference_result: !EdgeCaseResult INF, no_instances_result: !EdgeCaseResult NAN,
      normal: !EdgeCaseResult INF}
expected_input: !InputType SEMANTIC
global_metrics: [!Metric DSC, !Metric NSD, !Metric HD95]
instance_approximator: !ConnectedComponentsInstanceApproximator {cca_backend: null}
instance_matcher: !MaxBipartiteMatching {matching_metric: !Metric DSC, matching_threshold: 0.000001}
instance_metrics: [!Metric DSC, !Metric NSD, !Metric HD95]
log_times: false
save_group_times: false
segmentation_class_groups: !SegmentationClassGroups
  groups:
    et: !LabelGroup
      single_instance: false
      value_labels: [3]
    tc: !LabelMergeGroup
      single_instance: false
      value_labels: [1, 3]
    wt: !LabelMergeGroup
      single_instance: false
      value_labels: [1, 2, 3]
verbose: false
"""
GROUP = {"WT": "wt", "TC": "tc", "ET": "et"}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "config_gli.yaml"
    path.write_text(BRATS_EVALUATION_GLI)
    return panoptica.Panoptica_Evaluator.load_from_config(str(path))


def _official(evaluator, pred, ref, **kw) -> dict[str, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluator.evaluate(pred, ref, verbose=False, **kw)
    return {k: r.to_dict(True) for k, r in res.items()}


def _same(got, exp, where):
    """medseg value (None for NaN/inf) equals panoptica's."""
    if exp is None or (isinstance(exp, float) and not math.isfinite(exp)):
        assert got is None, where
    else:
        assert got is not None and abs(got - float(exp)) <= 1e-9, (where, got, exp)


def _compare(got: dict, exp: dict, where: str, ordered: bool = True) -> None:
    """Every summary value and every reference instance; ``ordered=False`` when the two labelled
    the components in different scan orders (a transposed array)."""
    for key, src in instancewise._SUMMARY_KEYS.items():
        _same(got[key], exp.get(src), f"{where} {key}")  # undefined ones may be absent
    got_i, exp_i = got["instances"], exp["reference_instances"]
    assert len(got_i) == len(exp_i), where
    if not ordered:
        got_i = sorted(got_i, key=lambda d: (d["volume_mm3"], d["dsc"] or -1.0))
        exp_i = sorted(exp_i, key=lambda d: (float(d["volume"]), float(d.get("sq_dsc", -1.0))))
    for i, (g, e) in enumerate(zip(got_i, exp_i)):
        for key, src in instancewise._INSTANCE_KEYS.items():
            _same(g[key], e.get(src), f"{where} instance {i} {key}")  # unmatched: no scores


def _regions(labels):
    return dict(zip(REGIONS, labels_to_regions(labels, "2023").astype(bool)))


@pytest.mark.parametrize("seed", range(8))
def test_matches_panoptica_configured_like_brats_evaluation(official, seed):
    ref, pred = make_pair(seed)
    spacing = (1.0, 1.0, 1.0) if seed % 2 else (1.2, 0.9, 2.0)
    exp = _official(official, pred, ref, voxelspacing=spacing)
    r_ref, r_pred = _regions(ref), _regions(pred)
    for region in REGIONS:
        got = instancewise.instancewise_region(r_ref[region], r_pred[region], spacing)
        _compare(got, exp[GROUP[region]], f"seed {seed} {region}")
        assert got["tp"] + got["fn"] == got["n_ref_instances"] and got["tp"] + got["fp"] == got["n_pred_instances"]
        assert got["n_ref_instances"] >= 2
        # units: per-instance HD95 in mm, global HD95 in voxels (panoptica drops the spacing there)
        assert got["global_hd95"] == pytest.approx(metrics.hd95(r_ref[region], r_pred[region], (1.0, 1.0, 1.0)))


def test_nifti_paths_as_brats_evaluation_reads_them(official, tmp_path):
    """brats-evaluation passes NIfTI paths: panoptica reads them with SimpleITK, whose (z, y, x)
    array it pairs with the (x, y, z) spacing. On a 1 mm grid that is medseg's result; on an
    anisotropic grid it equals medseg's with the spacing reversed (and not the true one)."""
    ref, pred = make_pair(3)
    r_ref, r_pred = _regions(ref), _regions(pred)
    for spacing in ((1.0, 1.0, 1.0), (1.0, 1.0, 2.5)):
        paths = []
        for name, arr in (("pred", pred), ("ref", ref)):
            paths.append(str(tmp_path / f"{name}.nii.gz"))
            nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), paths[-1])
        exp = _official(official, *paths)
        for region in REGIONS:
            as_read = instancewise.instancewise_region(r_ref[region], r_pred[region], spacing[::-1])
            _compare(as_read, exp[GROUP[region]], f"{spacing} {region}", ordered=False)
            if spacing[0] != spacing[2]:
                true = instancewise.instancewise_region(r_ref[region], r_pred[region], spacing)
                assert true["sq_hd95"] != as_read["sq_hd95"], region


@pytest.mark.parametrize("ref_on, pred_on", [(False, False), (True, False), (False, True)])
def test_empty_sides_match_panoptica_and_are_json_safe(official, ref_on, pred_on):
    ref, pred = make_pair(1)
    ref, pred = (ref if ref_on else np.zeros_like(ref)), (pred if pred_on else np.zeros_like(pred))
    exp = _official(official, pred, ref)
    for region in REGIONS:
        got = instancewise.instancewise_region(_regions(ref)[region], _regions(pred)[region], (1.0, 1.0, 1.0))
        _compare(got, exp[GROUP[region]], region)
        json.dumps(got, allow_nan=False)
    assert (got["sq_dsc"] is None) == (not ref_on and not pred_on)


def test_2026_editions_add_instancewise_per_region():
    ref, pred = make_pair(2)
    out = lesionwise_metrics(_regions(ref), _regions(pred), (1.0, 1.0, 1.0), "2026-glioma")
    assert out["edition"]["instancewise"] and out["units"]["instancewise"]["sq_hd95"] == "mm"
    assert out["units"]["instancewise"]["global_hd95"].startswith("voxels")
    for region in REGIONS:
        r = out["regions"][region]
        assert {"dice", "hd95", "n_tp", "n_fp", "n_fn"} <= set(r)  # lesion-wise keys stay
        assert r["instancewise"] == instancewise.instancewise_region(_regions(ref)[region], _regions(pred)[region], (1.0, 1.0, 1.0))
    json.dumps(out, allow_nan=False)
    assert "instancewise" not in lesionwise_metrics(_regions(ref), _regions(pred), (1.0, 1.0, 1.0), "2023-glioma")["regions"]["WT"]


def test_validation():
    m = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="3-D masks of one shape"):
        instancewise.instancewise_region(m, m[:3], (1, 1, 1))
    with pytest.raises(ValueError, match="spacing must be 3 positive"):
        instancewise.instancewise_region(m, m, (1, 0, 1))


def test_units_of_one_matched_pair():
    """One instance per side, anisotropic grid: per-instance HD95 is medseg's pooled HD95 in mm,
    the global one the same on a unit grid (voxels)."""
    zz, yy, xx = np.ogrid[:30, :30, :30]
    ref = (zz - 15) ** 2 + (yy - 15) ** 2 + (xx - 15) ** 2 <= 49
    pred = (zz - 16) ** 2 + (yy - 14) ** 2 + (xx - 15) ** 2 <= 64
    sp = (2.0, 1.5, 3.0)
    got = instancewise.instancewise_region(ref, pred, sp)
    assert (got["tp"], got["fp"], got["fn"]) == (1, 0, 0)
    assert got["sq_hd95"] == pytest.approx(metrics.hd95(ref, pred, sp))
    assert got["instances"][0]["hd95"] == got["sq_hd95"]
    assert got["instances"][0]["volume_mm3"] == pytest.approx(ref.sum() * 9.0)
    assert got["global_hd95"] == pytest.approx(metrics.hd95(ref, pred, (1.0, 1.0, 1.0)))
    assert got["sq_hd95"] != pytest.approx(got["global_hd95"])
