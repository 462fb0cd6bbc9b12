"""N4 and skull stripping scored against the demo truth (applied bias fields, true brain mask)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cohort.synth import reorient_resample, true_brain_mask
from medseg.preprocess.n4 import N4Config, _subsample, atlas_transform, n4_correct, white_matter_mask
from medseg.preprocess.skullstrip import SkullstripConfig, refine_mask, skullstrip
from medseg.preprocess.stages import n4_case

MODS = ("t1", "t1ce", "t2", "flair")


def img(p):
    return sitk.ReadImage(str(p), sitk.sitkFloat32)


def dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayFromImage(a) > 0, sitk.GetArrayFromImage(b) > 0
    return float(2 * (x & y).sum() / (x.sum() + y.sum()))


def own_truth_mask(case: dict, mod: str) -> sitk.Image:
    """The true brain mask in ``mod``'s frame (the truth is in the T1ce frame; the others moved)."""
    return true_brain_mask(case["truth"], mod, img(case[mod]))


def log_corr(field: sitk.Image, true_field: sitk.Image, mask: sitk.Image) -> float:
    m = sitk.GetArrayFromImage(mask) > 0
    a, b = (np.log(sitk.GetArrayFromImage(f)[m]) for f in (field, true_field))
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def n4_run(demo_case, tmp_path_factory) -> dict:
    """``n4_case`` on all four modalities of the demo case, with its truth folder."""
    out = tmp_path_factory.mktemp("n4")
    images = {m: str(demo_case[m]) for m in MODS}
    fields = {m: str(out / f"bias_{m}.nii.gz") for m in MODS}
    qc = n4_case(demo_case["case"], images, {m: str(out / f"n4_{m}.nii.gz") for m in MODS}, fields, N4Config(),
                 qc_png=str(out / "qc_n4.png"), truth_dir=str(demo_case["truth"]))
    return {"qc": qc, "fields": fields, "out": out}


@pytest.mark.parametrize("mod", MODS)
def test_n4_recovers_applied_bias_per_modality(n4_run, demo_case, mod):
    field = img(n4_run["fields"][mod])
    r = log_corr(field, img(demo_case["truth"] / f"bias_{mod}.nii.gz"), own_truth_mask(demo_case, mod))
    assert r >= 0.9, f"{mod}: recovered vs applied log-bias correlation {r:.3f}"
    assert n4_run["qc"][mod]["truth_log_bias_corr"] == pytest.approx(r, abs=1e-6)  # the QC JSON reports it


@pytest.mark.parametrize("mod", MODS)
def test_n4_lowers_white_matter_cv(n4_run, mod):
    q = n4_run["qc"][mod]
    assert q["cv_wm_after"] < q["cv_wm_before"]
    assert 50 < q["wm_ml"] < 600, f"deep WM estimate {q['wm_ml']:.0f} mL is implausible"


def test_n4_qc_json_has_truth_correlation_only_with_a_truth_dir(n4_run, demo_case, tmp_path):
    assert (n4_run["out"] / "qc_n4.png").stat().st_size > 10_000
    json.dumps(n4_run["qc"])  # JSON-serialisable as the rule writes it
    assert all("truth_log_bias_corr" in n4_run["qc"][m] for m in MODS)
    qc = n4_case(demo_case["case"], {"t2": str(demo_case["t2"])}, {"t2": str(tmp_path / "n4.nii.gz")},
                 {"t2": str(tmp_path / "bias.nii.gz")}, N4Config())
    assert set(qc["t2"]) == {"cv_wm_before", "cv_wm_after", "wm_ml"}
    # a truth folder is ignored for images that are not of its cohort (real data beside an old demo)
    elsewhere = tmp_path / "real" / demo_case["t2"].name
    elsewhere.parent.mkdir()
    shutil.copy(demo_case["t2"], elsewhere)
    qc = n4_case(demo_case["case"], {"t2": str(elsewhere)}, {"t2": str(tmp_path / "n4.nii.gz")},
                 {"t2": str(tmp_path / "bias.nii.gz")}, N4Config(), truth_dir=str(demo_case["truth"]))
    assert "truth_log_bias_corr" not in qc["t2"]


def test_tissue_prior_beats_plain_n4(demo_case):
    """The fix, measured: plain N4 in the Otsu head mask vs the default (brain mask + tissue prior)."""
    image, true_field, mask = img(demo_case["t1"]), img(demo_case["truth"] / "bias_t1.nii.gz"), own_truth_mask(demo_case, "t1")
    _, plain = n4_correct(image, None, N4Config(mask="otsu", tissue_prior=False))
    corrected, guided = n4_correct(image, None, N4Config())
    assert log_corr(guided, true_field, mask) > log_corr(plain, true_field, mask) + 0.1
    np.testing.assert_allclose(sitk.GetArrayFromImage(corrected * guided), sitk.GetArrayFromImage(image), rtol=1e-4, atol=1e-2)


def test_white_matter_mask_is_bright_deep_brain_on_t1(demo_case):
    t1 = img(demo_case["t1"])
    wm = sitk.GetArrayFromImage(white_matter_mask(t1, atlas_transform(t1))) > 0
    brain = sitk.GetArrayFromImage(own_truth_mask(demo_case, "t1")) > 0
    arr = sitk.GetArrayFromImage(t1)
    assert (wm & brain).sum() >= 0.97 * wm.sum()  # inside the brain
    assert arr[wm].mean() > np.percentile(arr[brain], 60)  # WM is the bright tissue on T1


def test_subsample_keeps_geometry():
    """Each kept voxel sits where the full image has the same value (``sitk.Shrink`` is half a block off)."""
    arr = np.random.default_rng(0).random((9, 10, 11)).astype(np.float32)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.9, 1.1, 3.0))
    image.SetOrigin((5.0, -3.0, 2.0))
    image.SetDirection(sitk.DICOMOrientImageFilter_GetDirectionCosinesFromOrientation("LSA"))
    small = _subsample(image, [4, 4, 1])
    for idx in ([0, 0, 0], [1, 2, 3], [2, 1, 8]):
        p = small.TransformIndexToPhysicalPoint(idx)
        assert small[idx] == image[image.TransformPhysicalPointToIndex(p)]


def test_n4_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="tissue_prior needs n4.mask: brain"):
        N4Config(mask="otsu")
    with pytest.raises(ValueError, match="n4.mask must be one of"):
        N4Config(mask="head")
    with pytest.raises(ValueError, match="n4.fit_spacing_mm"):
        N4Config(fit_spacing_mm=0)


@pytest.mark.parametrize("mod", ["t1", "t1ce"])
def test_skullstrip_atlas_dice(demo_case, mod):
    mask = skullstrip(img(demo_case[mod]), SkullstripConfig())
    d = dice(mask, own_truth_mask(demo_case, mod))
    assert d >= 0.97, f"{mod}: atlas brain mask Dice {d:.4f}"


@pytest.mark.parametrize("orientation,spacing", [("LSA", (2.0, 2.0, 3.0)), ("RAS", (2.0, 2.0, 3.0)),
                                                 ("LPS", (3.0, 2.5, 2.5))])
def test_skullstrip_any_orientation_anisotropic(demo_case, orientation, spacing):
    """Resampled from the demo case: same mask quality, on the input's own grid."""
    image = reorient_resample(img(demo_case["t1"]), orientation, spacing)
    truth = reorient_resample(own_truth_mask(demo_case, "t1"), orientation, spacing, sitk.sitkNearestNeighbor)
    mask = skullstrip(image, SkullstripConfig())
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    assert mask.GetDirection() == image.GetDirection()
    assert dice(mask, truth) >= 0.97, f"{orientation} {spacing}: Dice {dice(mask, truth):.4f}"


def test_refine_trims_outer_bone_keeps_ventricles_and_fov_cut():
    """Hand-made head: brain sphere cut by the FOV's top, a dark ventricle inside, a dark bone shell
    the initial mask spills into. Refinement removes the spill and keeps the rest."""
    zz, yy, xx = np.mgrid[:40, :48, :48]
    r = np.sqrt((zz - 34.0) ** 2 + (yy - 24.0) ** 2 + (xx - 24.0) ** 2)  # centre near the top: cut at z = 39
    brain = r < 16
    image = np.where(brain, 100.0, 0.0) + np.where((r >= 16) & (r < 20), 5.0, 0.0)  # bone: dark shell
    image[(r >= 20) & (r < 23)] = 120.0  # scalp fat
    ventricle = np.sqrt((zz - 34.0) ** 2 + (yy - 24.0) ** 2 + (xx - 20.0) ** 2) < 4
    image[ventricle] = 30.0
    spill = r < 18  # the registered mask reaches 2 mm into the bone
    out = refine_mask(image, spill, (1.0, 1.0, 1.0), band_mm=4.0)
    assert out[ventricle].all()
    assert out[39][brain[39]].all(), "the face cut by the FOV was eaten"
    assert not out[(r >= 16.5) & spill].any()
    assert (out ^ brain).sum() < 0.02 * brain.sum()


def test_refine_is_identity_on_a_clean_mask():
    brain = np.zeros((30, 30, 30), bool)
    brain[5:25, 5:25, 5:25] = True
    image = np.where(brain, 50.0, 0.0)
    np.testing.assert_array_equal(refine_mask(image, brain, (1.0, 1.0, 2.0), band_mm=4.0), brain)


@pytest.mark.slow
def test_skullstrip_robex_beside_atlas(demo_case, capsys):
    truth = own_truth_mask(demo_case, "t1")
    image = img(demo_case["t1"])
    d_atlas = dice(skullstrip(image, SkullstripConfig()), truth)
    d_robex = dice(skullstrip(image, SkullstripConfig(method="robex")), truth)
    with capsys.disabled():
        print(f"\nbrain mask Dice on {demo_case['case']} T1: atlas {d_atlas:.4f}, robex {d_robex:.4f}")
    assert d_robex >= 0.9
    assert d_atlas >= d_robex
