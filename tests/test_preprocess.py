"""Preprocessing scored against the demo truth: bias field, transforms, brain mask."""

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cohort.synth import reorient_resample, true_head_motion, true_native_to_atlas
from medseg.preprocess.atlas import atlas_images
from medseg.preprocess.config import NormConfig
from medseg.preprocess.normalize import apply_nyul, fit_model, fit_nyul, normalize, zscore
from medseg.preprocess.config import RegConfig
from medseg.preprocess.register import register


def img(p):
    return sitk.ReadImage(str(p), sitk.sitkFloat32)


def brain_points(case, step=40):
    ref = img(case["t1ce"])
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(case["truth"] / "brain_mask.nii.gz")))
    return [ref.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]]) for idx in np.argwhere(brain)[::step]]


@pytest.mark.parametrize("backend", ["sitk", pytest.param("elastix", marks=pytest.mark.slow)])
def test_rigid_registration_recovers_head_motion(demo_case, backend):
    ref, moving = img(demo_case["t1ce"]), img(demo_case["flair"])
    tfm = register(ref, moving, "rigid", RegConfig(backend=backend))
    motion = true_head_motion(demo_case["truth"], "flair")  # truth: flair point p shows what t1ce shows at motion(p)
    pts = brain_points(demo_case)
    tre = [np.linalg.norm(np.subtract(motion.TransformPoint(tfm.TransformPoint(p)), p)) for p in pts]
    before = [np.linalg.norm(np.subtract(motion.TransformPoint(p), p)) for p in pts]
    assert np.mean(before) > 1.0
    assert np.mean(tre) < 0.6, f"TRE {np.mean(tre):.2f} mm"


def test_fine_scans_register_on_a_coarse_copy(demo_case, monkeypatch):
    """1 mm inputs are registered at ``work_spacing_mm`` (2 mm), a fixed mask follows onto that
    grid, and the transform still recovers the true head motion at full resolution."""
    from medseg.preprocess import register as reg

    def at_1mm(image, interpolator=sitk.sitkLinear):
        orientation = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())
        return reorient_resample(image, orientation, (1.0, 1.0, 1.0), interpolator)

    ref, moving = at_1mm(img(demo_case["t1ce"])), at_1mm(img(demo_case["flair"]))
    brain = at_1mm(sitk.ReadImage(str(demo_case["truth"] / "brain_mask.nii.gz"), sitk.sitkUInt8), sitk.sitkNearestNeighbor)
    seen = []
    backend = reg.BACKENDS["sitk"]

    def spy(fixed, mov, kind, cfg, fixed_mask):
        seen.append((fixed.GetSpacing(), mov.GetSpacing(), fixed_mask is None or fixed_mask.GetSize() == fixed.GetSize()))
        return backend(fixed, mov, kind, cfg, fixed_mask)

    monkeypatch.setitem(reg.BACKENDS, "sitk", spy)
    tfm = register(ref, moving, "rigid", RegConfig())
    register(ref, moving, "rigid", RegConfig(iterations=1), fixed_mask=brain)
    assert seen == [((2.0, 2.0, 2.0), (2.0, 2.0, 2.0), True)] * 2
    motion = true_head_motion(demo_case["truth"], "flair")
    tre = [np.linalg.norm(np.subtract(motion.TransformPoint(tfm.TransformPoint(p)), p)) for p in brain_points(demo_case)]
    assert np.mean(tre) < 0.6, f"TRE {np.mean(tre):.2f} mm"
    # QC similarity on the same working grid agrees with the full-resolution value
    full = reg.mutual_information(ref, moving, tfm, mask=brain)
    assert reg.mutual_information(ref, moving, tfm, mask=brain, spacing_mm=2.0) == pytest.approx(full, abs=0.02)


def test_atlas_registration_target_error(demo_case):
    atlas = atlas_images(3.0)
    ref = img(demo_case["t1ce"])
    tfm = register(atlas.head, ref, "affine", RegConfig())  # atlas world -> native world
    truth = true_native_to_atlas(demo_case["truth"])  # native world -> atlas world (affine + elastic)
    pts = brain_points(demo_case, step=60)
    inverse = tfm.GetInverse()  # native world -> atlas world, estimated
    tre = [np.linalg.norm(np.subtract(inverse.TransformPoint(p), truth.TransformPoint(p))) for p in pts]
    # the elastic part (~2.5 mm) cannot be recovered by an affine: TRE stays near that
    assert np.mean(tre) < 4.0, f"mean TRE {np.mean(tre):.2f} mm"


def test_nyul_maps_landmarks_to_standard_scale():
    rng = np.random.default_rng(0)
    train = [rng.gamma(2.0, s, 5000) for s in (1.0, 3.0, 10.0)]
    cfg = NormConfig()
    std = fit_nyul(train, cfg)
    assert std[0] == pytest.approx(0) and std[-1] == pytest.approx(100)
    x = rng.gamma(2.0, 7.0, 5000)
    out = apply_nyul(x, np.ones_like(x, bool), std, cfg)
    np.testing.assert_allclose(np.percentile(out, cfg.percentiles), std, atol=0.5)
    # the same shape at another scanner scale maps to the same values
    np.testing.assert_allclose(apply_nyul(x * 13.0, np.ones_like(x, bool), std, cfg), out, atol=1e-3)


def test_zscore_inside_brain_only():
    rng = np.random.default_rng(1)
    image = rng.normal(50, 5, (10, 10, 10)).astype(np.float32)
    brain = np.zeros_like(image, bool)
    brain[2:8, 2:8, 2:8] = True
    out = zscore(image, brain, clip=(0, 100))
    assert out[brain].mean() == pytest.approx(0, abs=1e-5) and out[brain].std() == pytest.approx(1, abs=1e-4)
    assert (out[~brain] == 0).all()


def test_normalize_requires_fitted_landmarks():
    image = {"t1": np.ones((4, 4, 4), np.float32)}
    with pytest.raises(ValueError, match="fit the normaliser"):
        normalize(image, np.ones((4, 4, 4), bool), None, NormConfig())
    model = fit_model([({"t1": np.arange(64, dtype=np.float32).reshape(4, 4, 4)}, np.ones((4, 4, 4), bool))])
    assert model["n_cases"] == 1 and "t1" in model["modalities"]
    with pytest.raises(ValueError, match="brain mask is empty"):
        normalize(image, np.zeros((4, 4, 4), bool), model)


def test_fold_normaliser_from_case_quantiles_equals_fit_on_images():
    from medseg.preprocess.normalize import brain_quantiles, fit_model_from_quantiles

    rng = np.random.default_rng(3)
    cases = [({"t1": rng.gamma(2 + i, 10, (8, 8, 8)), "flair": rng.normal(50 + i, 5, (8, 8, 8))}, rng.random((8, 8, 8)) > 0.3)
             for i in range(3)]
    for cfg in (NormConfig(), NormConfig(percentiles=(2, 25, 50, 75, 98)), NormConfig(method={"t1": "zscore"})):
        direct = {m: fit_nyul([imgs[m][brain] for imgs, brain in cases], cfg) for m in ("t1", "flair")
                  if cfg.method_for(m) == "nyul"}
        model = fit_model_from_quantiles([brain_quantiles(imgs, brain) for imgs, brain in cases], cfg)
        assert set(model["modalities"]) == set(direct)
        for m in direct:  # percentiles on the 0.5 grid: exact
            np.testing.assert_allclose(model["modalities"][m]["standard"], direct[m], rtol=1e-12)
    off_grid = NormConfig(percentiles=(1.3, 50, 98.7))
    model = fit_model_from_quantiles([brain_quantiles(imgs, brain) for imgs, brain in cases], off_grid)
    np.testing.assert_allclose(model["modalities"]["t1"]["standard"], fit_nyul([i["t1"][b] for i, b in cases], off_grid),
                               atol=0.5)  # interpolated between grid quantiles, on a 0..100 scale


def test_skullstrip_off_brain_is_nonzero_voxels_and_stats_match_a_mask_file(tmp_path):
    """steps.skullstrip off: no mask file; the brain is what is nonzero in any modality (holes
    filled), and the table computed from the images equals per-case brain_stats with that mask."""
    from medseg.preprocess.intensity import brain_stats, collect_stats, nonzero_brain, normalized_arrays, quantiles_from_images

    rng = np.random.default_rng(5)
    images, truth = {}, {}
    for case in ("a", "b", "c"):
        brain = np.zeros((10, 12, 12), bool)
        brain[2:8, 3:9, 2:10] = True
        t1 = np.where(brain, rng.gamma(3, 10, brain.shape), 0.0)
        t1[4, 5, 5] = 0.0  # a dark voxel inside the brain: a hole, filled
        flair = np.where(brain, rng.normal(80, 5, brain.shape), 0.0)
        flair[2, 3, 2] = 0.0  # zero in flair, nonzero in t1: brain
        images[case] = {}
        for m, arr in (("t1", t1), ("flair", flair)):
            path = tmp_path / f"{case}_{m}.nii.gz"
            sitk.WriteImage(sitk.GetImageFromArray(arr.astype(np.float32)), str(path))
            images[case][m] = str(path)
        truth[case] = brain
        assert np.array_equal(nonzero_brain({"t1": t1, "flair": flair}), brain)
        mask = tmp_path / f"{case}_mask.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(brain.astype(np.uint8)), str(mask))
        brain_stats(case, images[case], str(mask), str(tmp_path / f"{case}_stats.json"))
    from_images = collect_stats(quantiles_from_images(images, threads=2), str(tmp_path / "a.json"))
    from_files = collect_stats([str(tmp_path / f"{c}_stats.json") for c in images], str(tmp_path / "b.json"))
    assert list(from_images) == ["a", "b", "c"] and from_images == from_files
    model = tmp_path / "model.json"
    from medseg.io import write_json
    from medseg.preprocess.normalize import fit_model_from_quantiles

    write_json(fit_model_from_quantiles(list(from_images.values()), NormConfig()), model)
    out = normalized_arrays("a", images["a"], None, [str(model)], NormConfig())
    assert np.array_equal(out["brain"] > 0, truth["a"])


def test_gathered_normalizers_normalise_like_one_file_per_fold(tmp_path):
    from medseg.io import write_json
    from medseg.preprocess.normalize import brain_quantiles, fit_model_from_quantiles
    from medseg.preprocess.intensity import gather_normalizers, normalized_arrays

    rng = np.random.default_rng(8)
    images, folds = {}, []
    for m in ("t1", "flair"):
        images[m] = str(tmp_path / f"x_{m}.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(rng.gamma(3, 10, (6, 8, 8)).astype(np.float32) + 1), images[m])
    for k in range(3):
        qs = [brain_quantiles({m: rng.gamma(2 + k + i, 10, (6, 8, 8)) for m in images}, np.ones((6, 8, 8), bool))
              for i in range(2)]
        folds.append(str(tmp_path / f"normalizer_{k}.json"))
        write_json(fit_model_from_quantiles(qs, NormConfig()), folds[-1])
    gathered = gather_normalizers(folds, str(tmp_path / "normalizers.json"))
    assert len(gathered["folds"]) == 3
    one = normalized_arrays("x", images, None, str(tmp_path / "normalizers.json"), NormConfig())
    per_fold = normalized_arrays("x", images, None, folds, NormConfig())
    assert one["image"].shape == (3, 2, 6, 8, 8) and np.array_equal(one["image"], per_fold["image"])
    assert not np.array_equal(one["image"][0], one["image"][1])  # each fold its own normaliser
