"""BraTS 2023 lesion-wise metrics: hand-computed scenarios and a naive full-volume oracle."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.evaluate import metrics
from medseg.evaluate.lesionwise import EDITIONS, Edition, get_edition, lesionwise_metrics, lesionwise_region

ISO = (1.0, 1.0, 1.0)
SHAPE = (20, 40, 60)


def cube(mask, corner, size):
    z, y, x = corner
    mask[z:z + size, y:y + size, x:x + size] = True
    return mask


def empty():
    return np.zeros(SHAPE, dtype=bool)


def test_hit_miss_and_spurious_lesion():
    ref = cube(cube(empty(), (2, 2, 2), 5), (2, 2, 40), 5)  # two 125-voxel lesions
    pred = cube(cube(empty(), (2, 2, 2), 5), (12, 30, 20), 4)  # first lesion exact, plus a far-away false positive
    r = lesionwise_region(ref, pred, ISO, "2023-glioma")
    assert (r["n_tp"], r["n_fn"], r["n_fp"], r["n_small"]) == (1, 1, 1, 0)
    assert r["dice"] == pytest.approx((1 + 0 + 0) / 3)
    assert r["hd95"] == pytest.approx((0 + 374 + 374) / 3)
    assert [les["dice"] for les in r["lesions"]] == [1.0, 0.0]


def test_small_reference_lesions_are_not_scored_and_their_match_is_no_false_positive():
    ref = cube(cube(empty(), (2, 2, 2), 5), (2, 2, 40), 3)  # 125 and 27 voxels (27 <= 50)
    pred = cube(cube(empty(), (2, 2, 2), 5), (2, 2, 40), 3)
    r = lesionwise_region(ref, pred, ISO, "2023-glioma")
    assert (r["n_tp"], r["n_fn"], r["n_fp"], r["n_small"]) == (1, 0, 0, 1)
    assert (r["dice"], r["hd95"]) == (1.0, 0.0)
    # the metastases edition scores lesions above 2 mm³, so the small one counts
    r = lesionwise_region(ref, pred, ISO, "2023-metastases")
    assert (r["n_tp"], r["n_small"]) == (2, 0)


def test_volume_threshold_uses_mm3():
    ref = cube(empty(), (2, 2, 2), 3)  # 27 voxels; 54 mm³ at 2 mm³ per voxel
    r = lesionwise_region(ref, ref.copy(), (2.0, 1.0, 1.0), "2023-glioma")
    assert r["n_small"] == 0 and r["lesions"][0]["volume_mm3"] == pytest.approx(54.0)


def test_dilation_groups_nearby_fragments():
    ref = empty()
    ref[5:10, 5:10, 5:10] = True
    ref[5:10, 5:10, 13:18] = True  # gap of 3 voxels along x
    pred = ref.copy()
    glioma = lesionwise_region(ref, pred, ISO, "2023-glioma")  # dilation 3: one lesion
    mets = lesionwise_region(ref, pred, ISO, "2023-metastases")  # dilation 1: two lesions
    assert len(glioma["lesions"]) == 1 and glioma["lesions"][0]["volume_mm3"] == 250
    assert len(mets["lesions"]) == 2
    assert glioma["dice"] == mets["dice"] == 1.0


def test_prediction_near_but_not_touching_is_matched():
    ref = cube(empty(), (5, 5, 5), 5)  # x 5..9
    pred = cube(empty(), (5, 5, 12), 5)  # x 12..16: 2-voxel gap, within dilation 3
    r = lesionwise_region(ref, pred, ISO, "2023-glioma")
    assert (r["n_tp"], r["n_fn"], r["n_fp"]) == (1, 0, 0)
    assert r["dice"] == 0.0
    assert r["hd95"] == pytest.approx(metrics.hd95(ref, pred, ISO, method="surfel"))
    assert r["hd95"] < 20


@pytest.mark.parametrize("ref_on, pred_on, dice, hd95, case", [
    (False, False, 1.0, 0.0, "both_empty"),
    (False, True, 0.0, 374.0, "ref_empty"),
    (True, False, 0.0, 374.0, "pred_empty"),
])
def test_edge_cases(ref_on, pred_on, dice, hd95, case):
    ref = cube(empty(), (2, 2, 2), 5) if ref_on else empty()
    pred = cube(empty(), (2, 2, 2), 5) if pred_on else empty()
    r = lesionwise_region(ref, pred, ISO)
    assert (r["dice"], r["hd95"], r["edge_case"]) == (dice, hd95, case)


def test_registry_and_validation():
    assert get_edition("2023-glioma") == Edition("2023-glioma", 3, 50, 374.0, "surfel", False)
    assert all(EDITIONS[n].instancewise for n in EDITIONS if n.startswith("2026-"))
    assert (EDITIONS["2023-metastases"].dilation_voxels, EDITIONS["2023-metastases"].min_volume_mm3) == (1, 2)
    with pytest.raises(ValueError, match="2023-glioma.*2023-metastases"):
        get_edition("2019")
    with pytest.raises(ValueError, match="dilation_voxels"):
        Edition("x", -1, 50)
    with pytest.raises(ValueError, match="hd95_method"):
        Edition("x", 1, 50, hd95_method="nope")
    ref = cube(empty(), (2, 2, 2), 5)
    with pytest.raises(ValueError, match="same regions"):
        lesionwise_metrics({"WT": ref}, {"TC": ref}, ISO)
    out = lesionwise_metrics({"WT": ref}, {"WT": ref}, ISO, "2023-pediatric")
    assert out["edition"]["name"] == "2023-pediatric" and out["regions"]["WT"]["dice"] == 1.0
    assert out["units"]["hd95"] == "mm" and "instancewise" not in out["regions"]["WT"]


# ---------------------------------------------------------------- naive oracle (full volume, no crops)
def naive_lesionwise(ref, pred, spacing, ed: Edition):
    conn26, struct18 = np.ones((3, 3, 3), bool), ndimage.generate_binary_structure(3, 2)
    dil = ndimage.binary_dilation(ref, struct18, iterations=ed.dilation_voxels)
    groups, n_groups = ndimage.label(dil, conn26)
    pred_cc, n_pred = ndimage.label(pred, conn26)
    voxel = float(np.prod(spacing))
    matched_all, dices, hds = set(), [], []
    for g in range(1, n_groups + 1):
        lesion = ref & (groups == g)
        near = ndimage.binary_dilation(lesion, struct18, iterations=ed.dilation_voxels)
        matched = set(np.unique(pred_cc[near])) - {0}
        matched_all |= matched
        hit = np.isin(pred_cc, list(matched))
        if lesion.sum() * voxel > ed.min_volume_mm3:
            dices.append(metrics.dice(lesion, hit))
            hds.append(metrics.hd95(lesion, hit, spacing, method=ed.hd95_method, hd_max_mm=ed.hd_max_mm))
    n_fp = n_pred - len(matched_all)
    n = len(dices) + n_fp
    return (sum(dices) / n, (sum(hds) + n_fp * ed.hd_max_mm) / n) if n else (1.0, 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_against_naive_oracle(seed):
    rng = np.random.default_rng(seed)
    ref = ndimage.gaussian_filter(rng.random((24, 40, 40)), 1.5) > 0.56
    pred = ndimage.binary_dilation(ref) if seed % 2 else ref.copy()
    pred &= ndimage.gaussian_filter(rng.random(ref.shape), 1.5) < 0.56  # drop some parts
    pred |= ndimage.gaussian_filter(rng.random(ref.shape), 1.5) > 0.6  # add spurious blobs
    spacing = (2.0, 1.0, 1.0) if seed < 3 else (1.0, 1.0, 1.0)
    for name in ("2023-glioma", "2023-metastases"):
        ed = get_edition(name)
        r = lesionwise_region(ref, pred, spacing, ed)
        exp_dice, exp_hd = naive_lesionwise(ref, pred, spacing, ed)
        assert r["dice"] == pytest.approx(exp_dice) and r["hd95"] == pytest.approx(exp_hd), name
