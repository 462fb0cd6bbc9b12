"""medseg's BraTS 2023 lesion-wise (and legacy) scores against the organisers' own script, run here.

The reference is a test-only Apache-2.0 copy in ``tests/reference/brats_metrics`` (source,
commit, licence and the three marked changes in its README). It reads NIfTI files, so each
generated pair is written with nibabel and medseg gets the same arrays and voxel size.
"""
from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from lesion_pairs import make_pair  # BraTS 2023 labels: the script's get_TissueWiseSeg expects them
from medseg.evaluate import metrics
from medseg.evaluate.lesionwise import lesionwise_metrics
from medseg.tasks.presets import brats_task

REGIONS = ("WT", "TC", "ET")


def labels_to_regions(labels, convention):
    """``(3, *spatial)`` WT, TC, ET masks of a BraTS label map."""
    return brats_task("brats", convention).encode(labels)

nib = pytest.importorskip("nibabel")
pytest.importorskip("cc3d")
pytest.importorskip("pandas")

REF_DIR = Path(__file__).parent / "reference" / "brats_metrics"
CHALLENGE = {"2023-glioma": "BraTS-GLI", "2023-metastases": "BraTS-MET", "2023-meningioma": "BraTS-MEN"}
# (seed, spacing in mm of the array axes, edition): 1 mm like BraTS, and anisotropic grids
PAIRS = [(0, (1.0, 1.0, 1.0), "2023-glioma"), (1, (1.0, 1.0, 1.0), "2023-glioma"),
         (2, (1.0, 1.0, 1.0), "2023-metastases"), (3, (1.0, 1.0, 1.0), "2023-meningioma"),
         (4, (1.2, 0.9, 2.0), "2023-glioma"), (5, (0.8, 0.8, 1.5), "2023-metastases"),
         (6, (1.0, 1.0, 1.0), "2023-glioma"), (7, (2.0, 1.0, 1.0), "2023-meningioma"),
         (8, (1.0, 1.0, 1.0), "2023-metastases"), (9, (1.0, 1.0, 1.0), "2023-glioma")]
PAIRS = [(*p, "") for p in PAIRS] + [  # empty-ET edge cases (ET relabelled NCR in ref, pred or both)
    (10, (1.0, 1.0, 1.0), "2023-glioma", "pred"), (11, (1.0, 1.0, 1.0), "2023-glioma", "ref"),
    (12, (1.0, 1.0, 1.0), "2023-metastases", "both")]


@pytest.fixture(scope="module")
def reference():
    """The reference module, importing the surface-distance copy it was run with.

    That copy predates NumPy 2 and spells ``np.Inf``/``np.NaN``; the aliases are restored for
    the duration of these tests instead of editing the copy.
    """
    sys.path.insert(0, str(REF_DIR))
    added = [a for a in ("Inf", "NaN") if a not in vars(np)]
    for alias in added:
        setattr(np, alias, getattr(np, alias.lower()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield importlib.import_module("metrics_2023")
    finally:
        for alias in added:
            delattr(np, alias)
        sys.path.remove(str(REF_DIR))
        for name in [n for n in sys.modules if n == "metrics_2023" or n.startswith("brats_surface_distance")]:
            del sys.modules[name]


def _save(arr, spacing, path):
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(path))
    return str(path)


def test_generated_pairs_have_several_lesions_per_region():
    from scipy import ndimage

    ref, pred = make_pair(0)
    for r, (wt_r, wt_p) in zip(REGIONS, zip(labels_to_regions(ref, "2023"), labels_to_regions(pred, "2023"))):
        assert ndimage.label(wt_r, np.ones((3, 3, 3)))[1] >= 2, r
        assert ndimage.label(wt_p, np.ones((3, 3, 3)))[1] >= 2, r


@pytest.mark.parametrize("seed, spacing, edition, no_et", PAIRS)
def test_matches_brats_2023_script(reference, tmp_path, seed, spacing, edition, no_et):
    ref, pred = make_pair(seed, no_et)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table, lesions = reference.get_LesionWiseResults(_save(pred, spacing, tmp_path / "pred.nii.gz"),
                                                         _save(ref, spacing, tmp_path / "gt.nii.gz"), CHALLENGE[edition])
    expected = table.set_index("Labels")
    spacing = tuple(float(z) for z in nib.load(str(tmp_path / "gt.nii.gz")).header.get_zooms())  # as stored (float32)
    got = lesionwise_metrics(dict(zip(REGIONS, labels_to_regions(ref, "2023").astype(bool))),
                             dict(zip(REGIONS, labels_to_regions(pred, "2023").astype(bool))), spacing, edition)
    worst = {}
    for region in REGIONS:
        e, g = expected.loc[region], got["regions"][region]
        assert (g["n_tp"], g["n_fp"], g["n_fn"]) == (e["Num_TP"], e["Num_FP"], e["Num_FN"]), region
        assert abs(g["dice"] - e["LesionWise_Score_Dice"]) <= 1e-6, region
        assert abs(g["hd95"] - e["LesionWise_Score_HD95"]) <= 1e-6, region
        # every reference lesion: volume, Dice and HD95 (order-free; the script caps inf at 374)
        rows = lesions[lesions["Label"] == region]
        exp_l = sorted(zip(rows["gt_lesion_vol"], rows["dice_lesionwise"], rows["hd95_lesionwise"]))
        got_l = sorted((les["volume_mm3"], les["dice"], les["hd95"]) for les in g["lesions"])
        assert len(exp_l) == len(got_l), region
        np.testing.assert_allclose(np.array(got_l, float).reshape(-1, 3), np.array(exp_l, float).reshape(-1, 3), rtol=0, atol=1e-6)
        # the script's legacy (whole-region) columns: medseg's region metrics with hd95_method surfel, hd_max 374 mm
        legacy = metrics.all_metrics(labels_to_regions(ref, "2023")[REGIONS.index(region)], labels_to_regions(pred, "2023")[REGIONS.index(region)],
                                     spacing, hd95_method="surfel", hd_max_mm=374.0)
        for ours, theirs in (("dice", "Legacy_Dice"), ("hd95", "Legacy_HD95"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity")):
            assert abs(legacy[ours] - e[theirs]) <= 1e-6, (region, ours)
        worst[region] = (abs(g["dice"] - e["LesionWise_Score_Dice"]), abs(g["hd95"] - e["LesionWise_Score_HD95"]))
    print(f"seed {seed} {edition} max |diff| (dice, hd95) per region: {worst}")
