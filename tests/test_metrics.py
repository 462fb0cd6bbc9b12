"""Metrics against hand-computed cases, the edge-case table, properties, and independent oracles."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from scipy.spatial import cKDTree

from medseg.evaluate import edge_cases as ec
from medseg.evaluate import metrics as m

SPACING = (3.0, 1.0, 0.5)  # mm, array axis order, deliberately anisotropic


def box(shape, *slices):
    a = np.zeros(shape, dtype=bool)
    a[tuple(slices)] = True
    return a


# ---------------------------------------------------------------- overlap and volume, by hand
def test_overlap_two_cubes_shifted_one_voxel():
    ref = box((6, 6, 6), slice(1, 3), slice(1, 3), slice(1, 3))  # 8 voxels
    pred = box((6, 6, 6), slice(2, 4), slice(1, 3), slice(1, 3))  # 8 voxels, 4 shared
    assert m.dice(ref, pred) == pytest.approx(0.5)
    assert m.iou(ref, pred) == pytest.approx(4 / 12)
    assert m.sensitivity(ref, pred) == pytest.approx(0.5)
    assert m.specificity(ref, pred) == pytest.approx((216 - 8 - 4) / (216 - 8))
    assert m.volume_ml(ref, SPACING) == pytest.approx(8 * 1.5 / 1000)


def test_two_cubes_surface_distances_along_each_axis():
    # 2x2x2 cubes are all surface; shifting by one voxel along axis a gives 4 distances 0 and 4 distances spacing[a]
    for axis, s in enumerate(SPACING):
        sl = [slice(1, 3)] * 3
        ref = box((6, 6, 6), *sl)
        sl[axis] = slice(2, 4)
        pred = box((6, 6, 6), *sl)
        sd = m.surface_distances(ref, pred, SPACING)
        assert sorted(sd.ref_to_pred) == pytest.approx([0.0] * 4 + [s] * 4)
        assert sorted(sd.pred_to_ref) == pytest.approx([0.0] * 4 + [s] * 4)
        assert m.hd95(ref, pred, SPACING) == pytest.approx(s)  # 16 pooled values, half are s
        assert m.assd(ref, pred, SPACING) == pytest.approx(s / 2)
        assert m.nsd(ref, pred, SPACING, tolerance_mm=s - 0.01) == pytest.approx(0.5)
        assert m.nsd(ref, pred, SPACING, tolerance_mm=s) == pytest.approx(1.0)


def test_concentric_cubes_known_distances():
    ref = box((9, 9, 9), slice(2, 7), slice(2, 7), slice(2, 7))  # 5-cube: 98 border voxels
    pred = box((9, 9, 9), slice(3, 6), slice(3, 6), slice(3, 6))  # 3-cube: 26 border voxels
    s = np.array(SPACING)
    # ref border voxel -> nearest inner voxel: one step along every axis where it sits on a face
    expected_ref = []
    for k in (1, 2, 3):
        for axes in itertools.combinations(range(3), k):
            expected_ref += [math.sqrt(sum(s[list(axes)] ** 2))] * (2 ** k * 3 ** (3 - k))
    # inner border voxel -> outer border: straight along the cheapest axis, 1 step if off-centre on it, else 2
    expected_pred = [min((1 if c[a] != 1 else 2) * s[a] for a in range(3))
                     for c in itertools.product(range(3), repeat=3) if c != (1, 1, 1)]
    sd = m.surface_distances(ref, pred, SPACING)
    assert sorted(sd.ref_to_pred) == pytest.approx(sorted(expected_ref))
    assert sorted(sd.pred_to_ref) == pytest.approx(sorted(expected_pred))
    pooled = np.percentile(expected_ref + expected_pred, 95)
    assert m.hd95(ref, pred, SPACING) == pytest.approx(pooled)
    assert m.hd95(ref, pred, SPACING, method="max_directed") == pytest.approx(
        max(np.percentile(expected_ref, 95), np.percentile(expected_pred, 95)))
    assert m.assd(ref, pred, SPACING) == pytest.approx((np.mean(expected_ref) + np.mean(expected_pred)) / 2)
    assert m.dice(ref, pred) == pytest.approx(2 * 27 / (125 + 27))


def test_pooled_and_max_directed_hd95_differ_on_a_stray_voxel():
    ref = box((5, 5, 16), 2, 2, slice(0, 10))  # a line: every voxel is surface
    pred = ref.copy()
    pred[2, 2, 12] = True  # 3 voxels (1.5 mm) beyond the end of the line
    d = 3 * SPACING[2]
    # pooled: 20 zeros and one d -> 95th percentile 0; pred->ref alone: 10 zeros and d -> 0.5 d
    assert m.hd95(ref, pred, SPACING) == pytest.approx(0.0)
    assert m.hd95(ref, pred, SPACING, method="max_directed") == pytest.approx(0.5 * d)
    assert m.assd(ref, pred, SPACING) == pytest.approx(d / 11 / 2)
    assert m.nsd(ref, pred, SPACING, tolerance_mm=1.0) == pytest.approx(20 / 21)


def test_crop_is_exact_at_array_border():
    ref = box((8, 8, 8), slice(0, 4), slice(0, 8), slice(5, 8))
    pred = box((8, 8, 8), slice(1, 5), slice(0, 7), slice(4, 8))
    a = m.surface_distances(ref, pred, SPACING, margin=0)
    b = m.surface_distances(ref, pred, SPACING, margin=50)
    np.testing.assert_allclose(np.sort(a.ref_to_pred), np.sort(b.ref_to_pred))
    np.testing.assert_allclose(np.sort(a.pred_to_ref), np.sort(b.pred_to_ref))


# ---------------------------------------------------------------- edge cases, one table
@pytest.mark.parametrize("ref_on, pred_on, case", [(False, False, "both_empty"), (False, True, "ref_empty"), (True, False, "pred_empty")])
def test_edge_cases(ref_on, pred_on, case):
    some = box((6, 6, 6), slice(1, 3), slice(1, 3), slice(1, 3))
    empty = np.zeros_like(some)
    ref, pred = (some if ref_on else empty), (some if pred_on else empty)
    r = m.all_metrics(ref, pred, SPACING, hd_max_mm=300.0)
    assert r["edge_case"] == case
    if case == "both_empty":
        assert (r["dice"], r["iou"], r["hd95"], r["assd"], r["nsd"], r["sensitivity"]) == (1, 1, 0, 0, 1, 1)
    else:
        assert (r["dice"], r["iou"], r["hd95"], r["assd"], r["nsd"], r["sensitivity"]) == (0, 0, 300, 300, 0, 0)
    assert r["specificity"] == pytest.approx(1.0 if not pred_on else (216 - 8) / 216)
    assert all(math.isfinite(v) for v in r.values() if not isinstance(v, str))
    assert m.hd95(ref, pred, SPACING) == (0.0 if case == "both_empty" else ec.DEFAULT_HD_MAX_MM)


def test_default_hd_max_is_brats_diagonal():
    assert ec.DEFAULT_HD_MAX_MM == pytest.approx(math.sqrt(240 ** 2 + 240 ** 2 + 155 ** 2), abs=0.01)


def test_full_reference_has_specificity_one():
    full = np.ones((3, 3, 3), bool)
    assert m.specificity(full, full) == 1.0


def test_bad_arguments_name_themselves():
    a = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match="shape"):
        m.dice(a, np.ones((3, 3, 4), bool))
    with pytest.raises(ValueError, match="spacing"):
        m.hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="hd95_method.*max_directed.*pooled"):
        m.hd95(a, a, SPACING, method="median")
    with pytest.raises(ValueError, match="hd_max_mm"):
        m.all_metrics(a, a, SPACING, hd_max_mm=float("inf"))
    with pytest.raises(ValueError, match="nsd_tolerance_mm"):
        m.nsd(a, a, SPACING, tolerance_mm=-1)
    with pytest.raises(ValueError, match="edge_case"):
        ec.edge_value("none", "dice")


# ---------------------------------------------------------------- properties
masks = arrays(bool, (5, 6, 5), elements=st.booleans())
spacings = st.tuples(*[st.floats(0.3, 4.0)] * 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=masks, b=masks, sp=spacings)
def test_properties(a, b, sp):
    ra, rb = m.all_metrics(a, b, sp), m.all_metrics(b, a, sp)
    for k in ("dice", "iou", "hd95", "assd", "nsd", "specificity"):
        if k != "specificity":
            assert ra[k] == pytest.approx(rb[k]), k
        assert math.isfinite(ra[k])
    assert m.hd95(a, b, sp, method="max_directed") == pytest.approx(m.hd95(b, a, sp, method="max_directed"))
    assert 0.0 <= ra["dice"] <= 1.0 and 0.0 <= ra["iou"] <= ra["dice"] + 1e-12 and 0.0 <= ra["nsd"] <= 1.0
    if ra["edge_case"] == "none":
        same_surface = np.array_equal(a ^ ndimage.binary_erosion(a), b ^ ndimage.binary_erosion(b))
        sd = m.surface_distances(a, b, sp)
        pooled = np.concatenate([sd.ref_to_pred, sd.pred_to_ref])
        if same_surface:
            assert ra["hd95"] == 0.0 and ra["assd"] == 0.0
        if ra["hd95"] == 0.0:  # a percentile: 0 means (almost) all surface points coincide
            assert np.mean(pooled == 0) >= 0.95 - 1 / pooled.size
        assert ra["hd95"] <= pooled.max() + 1e-9


# ---------------------------------------------------------------- independent oracles
def blobs(seed, shape=(22, 26, 20)):
    rng = np.random.default_rng(seed)
    return [ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.52 for _ in range(2)]


def kdtree_distances(a, b, sp):
    """Brute-force surface distances from border-voxel coordinates in mm (no EDT, no crop)."""
    pa = np.argwhere(a ^ ndimage.binary_erosion(a)) * np.array(sp)
    pb = np.argwhere(b ^ ndimage.binary_erosion(b)) * np.array(sp)
    return cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]


@pytest.mark.parametrize("seed", range(4))
def test_against_kdtree_oracle(seed):
    a, b = blobs(seed)
    sp = (2.5, 0.8, 1.1)
    d_ab, d_ba = kdtree_distances(a, b, sp)
    assert m.hd95(a, b, sp) == pytest.approx(np.percentile(np.concatenate([d_ab, d_ba]), 95))
    assert m.hd95(a, b, sp, method="max_directed") == pytest.approx(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
    assert m.assd(a, b, sp) == pytest.approx((d_ab.mean() + d_ba.mean()) / 2)


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy")
def test_max_directed_matches_monai():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    for seed in range(3):
        a, b = blobs(seed + 10)
        sp = (2.0, 0.7, 1.3)
        t = [torch.from_numpy(x[None, None].astype(np.float32)) for x in (b, a)]
        expected = monai_metrics.compute_hausdorff_distance(*t, include_background=True, percentile=95, spacing=sp).item()
        assert m.hd95(a, b, sp, method="max_directed") == pytest.approx(expected, rel=1e-5)


def test_pooled_matches_official_brats_evaluation():
    """brats-evaluation (AGPL, test-only) computes surface metrics with panoptica; skipped when absent."""
    pytest.importorskip("brats_evaluation")
    from panoptica.metrics.assd import _average_symmetric_surface_distance
    from panoptica.metrics.hausdorff_distance import _compute_hausdorff_distance95

    for seed in range(3):
        a, b = blobs(seed + 20)
        sp = (2.0, 0.7, 1.3)
        assert m.hd95(a, b, sp) == pytest.approx(_compute_hausdorff_distance95(a, b, voxelspacing=sp))
        assert m.assd(a, b, sp) == pytest.approx(_average_symmetric_surface_distance(a, b, voxelspacing=sp))


# ---------------------------------------------------------------- surfel HD95 (BraTS 2023 scorer)
def test_surfel_hd95_is_surface_distance_robust_hausdorff_on_the_whole_array():
    """medseg crops before calling surface-distance; the result equals the uncropped call, also
    for masks touching the array border (the equality with the BraTS 2023 script itself is in
    tests/test_lesionwise_reference.py)."""
    sd = pytest.importorskip("surface_distance")
    for seed in range(3):
        a, b = blobs(seed + 30)
        a[0, :, :5] = True  # touches the border
        sp = (2.0, 0.7, 1.3)
        expected = sd.compute_robust_hausdorff(sd.compute_surface_distances(a, b, sp), 95)
        assert m.hd95(a, b, sp, method="surfel") == pytest.approx(expected, rel=1e-12)
        assert m.all_metrics(a, b, sp, hd95_method="surfel")["hd95"] == m.hd95(a, b, sp, method="surfel")


def test_surfel_hd95_properties_and_edge_cases():
    a, b = blobs(40)
    sp = (1.5, 0.8, 1.1)
    h = m.hd95(a, b, sp, method="surfel")
    assert h > 0 and h == pytest.approx(m.hd95(b, a, sp, method="surfel"))  # symmetric
    assert m.hd95(a, b, tuple(2 * s for s in sp), method="surfel") == pytest.approx(2 * h)  # scales with mm
    assert m.hd95(a, a, sp, method="surfel") == 0.0
    shifted = np.roll(box((12, 12, 12), slice(3, 8), slice(3, 8), slice(3, 8)), 2, axis=2)
    cube = box((12, 12, 12), slice(3, 8), slice(3, 8), slice(3, 8))
    assert m.hd95(cube, shifted, (1.0, 1.0, 0.5), method="surfel") == pytest.approx(1.0)  # 2 voxels of 0.5 mm
    empty = np.zeros_like(a)
    assert m.hd95(a, empty, sp, method="surfel", hd_max_mm=374.0) == 374.0
    assert m.hd95(empty, empty, sp, method="surfel") == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        m.surfel_hd95(a, empty, sp)
