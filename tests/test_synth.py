import json

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cohort.synth import MODALITIES, SynthConfig, generate_case


def arr(p):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(p)))


def test_layout_and_truth(demo_cohort):
    manifest = json.loads((demo_cohort / "cohort.json").read_text())
    assert manifest["cases"] == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    for case in manifest["cases"]:
        for m in (*MODALITIES, "seg"):
            assert (demo_cohort / "images" / case / f"{case}_{m}.nii.gz").exists()
        truth = demo_cohort / "truth" / case
        for f in ("brain_mask.nii.gz", "affine.tfm", "elastic_displacement.nii.gz", "truth.json",
                  *(f"bias_{m}.nii.gz" for m in MODALITIES)):
            assert (truth / f).exists(), f


def test_orientations_differ(demo_cohort):
    orient = [json.loads((demo_cohort / "truth" / c / "truth.json").read_text())["orientation"]
              for c in ("BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002")]
    assert len(set(orient)) >= 2


def test_labels_tumour_and_contrasts(demo_case):
    seg = arr(demo_case["seg"])
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and {2, 4} <= set(np.unique(seg))
    wt_ml = (seg > 0).sum() * 27 / 1000
    assert 5 < wt_ml < 200
    brain = arr(demo_case["truth"] / "brain_mask.nii.gz") > 0
    assert ((seg > 0) & ~brain).sum() == 0  # tumour inside the brain
    bias = {m: arr(demo_case["truth"] / f"bias_{m}.nii.gz") for m in MODALITIES}
    imgs = {m: arr(demo_case[m]).astype(float) / bias[m] for m in MODALITIES}
    et, ed = seg == 4, seg == 2
    # enhancing rim is much brighter on T1ce than on T1; oedema is bright on FLAIR relative to T1
    assert imgs["t1ce"][et].mean() / imgs["t1ce"][brain].mean() > 1.3 * imgs["t1"][et].mean() / imgs["t1"][brain].mean()
    assert imgs["flair"][ed].mean() / imgs["flair"][brain].mean() > imgs["t1"][ed].mean() / imgs["t1"][brain].mean()


def test_deterministic(tmp_path, demo_cohort):
    cfg = SynthConfig(n_cases=3, seed=3, spacing_mm=(3.0, 3.0, 3.0), orientations=("LPS", "RAS", "LSA"),
                      anatomy="icbm", fov_variety=False)
    generate_case(cfg, 0, tmp_path / "images", tmp_path / "truth")
    for m in ("t1ce", "seg"):
        a = arr(tmp_path / "images" / "BraTS2021_00000" / f"BraTS2021_00000_{m}.nii.gz")
        b = arr(demo_cohort / "images" / "BraTS2021_00000" / f"BraTS2021_00000_{m}.nii.gz")
        assert np.array_equal(a, b)


def test_config_validation():
    with pytest.raises(ValueError, match="orientations"):
        SynthConfig(orientations=("XYZ",))
    assert SynthConfig.from_dict({"full_geometry": True}).fov_mm == (240.0, 240.0, 155.0)


def test_head_model_disk_cache_equals_a_fresh_build(tmp_path, monkeypatch):
    from dataclasses import fields

    from medseg.cohort import anatomy

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    built = anatomy.load_head_model.__wrapped__(6.0)  # builds and writes the cache
    assert len(list(tmp_path.glob("head_model_6mm_*.npz"))) == 1
    cached = anatomy.load_head_model.__wrapped__(6.0)  # reads it back
    for f in fields(anatomy.HeadModel)[1:]:
        a, b = getattr(built, f.name), getattr(cached, f.name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    for attr in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(cached.reference, attr)() == pytest.approx(getattr(built.reference, attr)())
    next(tmp_path.glob("*.npz")).write_bytes(b"broken")  # a damaged cache is rebuilt, not fatal
    np.testing.assert_array_equal(anatomy.load_head_model.__wrapped__(6.0).wm, built.wm)
