"""Bad inputs and faults not covered elsewhere: disk full, NaN voxels, 4-D images, empty label maps.

Elsewhere: corrupt/truncated files, missing modality, different grids, labels outside the
convention (test_cohort.py); case ids with separators or ``..`` (test_cohort.py); non-RAS
orientations and anisotropic spacing (test_preprocess.py, test_qc.py); images smaller than a
patch (test_stitch_inference.py); slides without mpp or tissue (test_wsi.py); an unreachable
MLflow store and concurrent tracking (test_tracking.py); kill -9 of training and of Snakemake
(test_train.py, test_workflow.py).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.io import InputError

from test_cohort import make_case


DISK_FULL = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    import numpy as np
    import SimpleITK as sitk
    from medseg.io import atomic_path, save_npz, write_image, write_json

    out = Path(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))  # the "disk" holds 64 kB per file
    rng = np.random.default_rng(0)
    failed = {}
    writers = {
        "image.nii.gz": lambda p: write_image(sitk.GetImageFromArray(rng.random((40, 64, 64)).astype(np.float32)), p),
        "arrays.npz": lambda p: save_npz(p, image=rng.random((40, 64, 64))),
        "table.json": lambda p: write_json({"values": rng.random(20_000).tolist()}, p),
    }
    for name, write in writers.items():
        try:
            write(out / name)
            failed[name] = None
        except Exception as e:  # what the job would die of
            failed[name] = type(e).__name__
    print(json.dumps(failed))
""")


def test_disk_full_leaves_no_partial_file(tmp_path):
    """A write that runs out of space raises, and neither the output nor a temp file is left."""
    r = subprocess.run([sys.executable, "-c", DISK_FULL, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    import json

    failed = json.loads(r.stdout.strip().splitlines()[-1])
    assert all(failed.values()), f"a write past the limit did not raise: {failed}"
    assert list(tmp_path.iterdir()) == [], f"partial files left: {list(tmp_path.iterdir())}"


def _case_job(tmp_path, case: str, images: dict):
    """A case job whose stages write into ``tmp_path/case``."""
    from medseg.preprocess.case import CaseFolder, CaseJob

    return CaseJob(case, {m: str(p) for m, p in images.items()}, CaseFolder(str(tmp_path / case)))


def _written(job) -> list:
    """Every file the case's stages left in its folder."""
    from pathlib import Path

    root = Path(job.folder.root)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_nan_voxels_fail_the_case_with_its_name_and_file(tmp_path):
    from medseg.preprocess.config import N4Config, N4Stage
    from medseg.preprocess.stages import n4_case

    arr = np.random.default_rng(0).random((8, 16, 16)).astype(np.float32) + 1
    arr[4, 8, 8] = np.nan
    arr[4, 8, 9] = np.inf
    path = tmp_path / "BraTS2021_00009_t1.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    job = _case_job(tmp_path, "BraTS2021_00009", {"t1": path})
    with pytest.raises(InputError, match=r"BraTS2021_00009.*_t1\.nii\.gz.*2 voxels are NaN or infinite"):
        n4_case(job, N4Stage(N4Config()))
    assert not _written(job)  # no corrected image, bias field or QC


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_truncated_gzip_is_an_error_not_zeros(tmp_path, dtype):
    """SimpleITK reads a .nii.gz cut in half without complaint, the missing half as zeros; a
    scan as delivered (source=True) is checked whole. The workflow's own files skip the check."""
    from medseg.io import read_image

    arr = (np.random.default_rng(0).random((40, 64, 64)) * 1000).astype(dtype)
    path = tmp_path / "BraTS2021_00011_t2.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    assert np.array_equal(sitk.GetArrayFromImage(read_image(path, source=True)), arr.astype(np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == 0).mean() > 0.4  # the silent zero fill
    with pytest.raises(InputError, match=r"BraTS2021_00011.*_t2\.nii\.gz.*truncated gzip data.*copy the file again"):
        read_image(path, case="BraTS2021_00011", source=True)


def test_4d_image_is_caught_by_the_case_sheet(tmp_path):
    from medseg.cohort.sheet import build_case_sheet, case_row
    from medseg.tasks.presets import brats_task
    from medseg.tasks.layouts import discover

    make_case(tmp_path, "four")
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((6, 8, 8), np.float32))] * 3)
    sitk.WriteImage(four_d, str(tmp_path / "four" / "four_t2.nii.gz"))
    build_case_sheet(brats_task("b", "2021"), discover(tmp_path).cases, {"four": {"split": "test", "fold": None}},
                     tmp_path / "cases.tsv")
    with pytest.raises(InputError, match=r"four_t2\.nii\.gz: expected a 3-D image, got 4-D.*exclude"):
        case_row(tmp_path / "cases.tsv", "four")


def test_empty_label_map_is_a_valid_training_case(tmp_path):
    """No tumour: the sheet accepts it (with a warning), it tiles, and batches come from brain slices."""
    from medseg.cohort.sheet import build_case_sheet, case_row
    from medseg.training.config import AugmentConfig
    from medseg.training.batches import TileSet, make_batch
    from medseg.tasks.presets import brats_task
    from medseg.tasks.layouts import discover
    from medseg.preprocess.tiling import tile_case

    make_case(tmp_path, "empty", labels=(0,))
    task = brats_task("b", "2021")
    build_case_sheet(task, discover(tmp_path).cases, {"empty": {"split": "train", "fold": 0}}, tmp_path / "cases.tsv")
    assert case_row(tmp_path / "cases.tsv", "empty")["convention"] == "2021"
    data = {"image": np.random.default_rng(0).random((1, 4, 6, 8, 8)).astype(np.float32),
            "brain": np.ones((6, 8, 8), np.uint8), "labels": np.zeros((6, 8, 8), np.uint8)}
    table = tile_case("empty", data, task, tmp_path / "empty.npy", tmp_path / "empty.json")
    assert table["fg_slices"] == [] and len(table["brain_slices"]) == 6
    x, y = make_batch(TileSet([str(tmp_path / "empty.npy")], [str(tmp_path / "empty.json")]), 0, 0, 4, 1, 1.0, None,
                      AugmentConfig())
    assert x.shape == (4, 12, 8, 8) and not y.any()


def test_write_image_gzip_is_complete_readable_and_deterministic(tmp_path):
    """Our multi-member gzip: ITK and nibabel read it back exactly; equal images give equal bytes."""
    import nibabel as nib

    from medseg.io import write_image

    arr = np.random.default_rng(1).normal(size=(40, 160, 170)).astype(np.float32)  # > 4 MB: several members
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.2, 2.5))
    img.SetDirection(sitk.DICOMOrientImageFilter_GetDirectionCosinesFromOrientation("LSA"))
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    write_image(img, a)
    write_image(img, b)
    assert a.read_bytes() == b.read_bytes()
    back = sitk.ReadImage(str(a))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    assert back.GetDirection() == pytest.approx(img.GetDirection()) and back.GetSpacing() == pytest.approx(img.GetSpacing())
    assert nib.load(a).shape == (170, 160, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]  # no raw temp left


# ------------------------------------------------- degenerate images: a message naming case, file, check
@pytest.mark.parametrize("value", [0.0, 50.0])
def test_blank_scan_fails_n4_with_its_name_not_an_itk_traceback(tmp_path, value):
    """All-zero / constant modality: was "ITK ERROR: ImageMomentsCalculator ... Total Mass of the
    image was zero" (0) or "Zero-valued spacing is not supported" (50) from the atlas registration."""
    from medseg.preprocess.config import N4Config, N4Stage
    from medseg.preprocess.stages import n4_case

    path = tmp_path / "BraTS2021_00013_flair.nii.gz"
    img = sitk.GetImageFromArray(np.full((20, 24, 24), value, np.float32))
    img.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(img, str(path))
    job = _case_job(tmp_path, "BraTS2021_00013", {"flair": path})
    with pytest.raises(InputError, match=rf"case 'BraTS2021_00013', file .*_flair\.nii\.gz: every voxel is {value:g}: a blank scan"):
        n4_case(job, N4Stage(N4Config()))
    assert not (tmp_path / "BraTS2021_00013" / "n4" / "flair.nii.gz").exists() and not _written(job)


def test_non_finite_n4_result_fails_the_case(tmp_path, monkeypatch):
    """A log field below -8.3 rounds to a field of 0 (multiples of 2^-12), so image / field is inf;
    N4's output is checked before it is written."""
    from medseg.preprocess import stages
    from medseg.preprocess.config import N4Config, N4Stage

    def n4_zero_corner(image, mask, cfg, transform):
        field = sitk.GetArrayFromImage(image) * 0 + 1
        field[:2, :2, :2] = 0.0
        f = sitk.GetImageFromArray(field.astype(np.float32))
        f.CopyInformation(image)
        return sitk.Cast(image / f, sitk.sitkFloat32), f

    monkeypatch.setattr(stages, "atlas_transform", lambda img, spacing, initial=None: sitk.Transform(3, sitk.sitkIdentity))
    monkeypatch.setattr(stages, "n4_correct", n4_zero_corner)
    path = tmp_path / "BraTS2021_00014_t1.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((8, 16, 16)).astype(np.float32) + 1), str(path))
    job = _case_job(tmp_path, "BraTS2021_00014", {"t1": path})
    with pytest.raises(InputError, match=r"case 'BraTS2021_00014', file .*_t1\.nii\.gz: N4 bias correction gave 8 "
                                         r"bias-field voxels that are not finite and > 0 and 8 NaN or infinite voxels"):
        stages.n4_case(job, N4Stage(N4Config()))
    assert not _written(job)  # neither the corrected image nor the bias field


@pytest.mark.parametrize("masked", [True, False])
def test_no_brain_left_fails_normalisation_naming_case_and_file(tmp_path, masked):
    """An empty brain mask (or, without skull stripping, every modality all 0 after preprocessing)
    was "ValueError: brain mask is empty: cannot normalise" with no case or file."""
    from pathlib import Path

    from medseg.io import write_json
    from medseg.preprocess.config import NormalizeStage, NormConfig
    from medseg.preprocess.intensity import normalize_case

    rng = np.random.default_rng(0)
    job = _case_job(tmp_path, "c7", {"t1": tmp_path / "c7_t1.nii.gz", "flair": tmp_path / "c7_flair.nii.gz"})
    images = job.folder.images("n4", job.modalities)  # the stage folder's images, as N4 left them
    Path(job.folder.n4).mkdir(parents=True)
    for mod in ("t1", "flair"):
        arr = np.zeros((6, 8, 8), np.float32) if not masked else rng.random((6, 8, 8)).astype(np.float32)
        sitk.WriteImage(sitk.GetImageFromArray(arr), images[mod])
    if masked:
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 8, 8), np.uint8)), job.folder.brain_mask)
    write_json({"folds": [{}]}, tmp_path / "normalizers.json")
    match = (r"case 'c7', file .*c7/brain_mask\.nii\.gz: the brain mask is empty" if masked else
             r"case 'c7', files \[.*c7/n4/flair\.nii\.gz.*c7/n4/t1\.nii\.gz'\]: every voxel is 0 in every modality")
    with pytest.raises(InputError, match=match):
        normalize_case(job, NormalizeStage(NormConfig(method="zscore"), stage="n4", masked=masked),
                       str(tmp_path / "normalizers.json"))
    assert not Path(job.folder.norm).exists()


# ------------------------------------------------------------- config checked at load, before any job
def _config():
    import yaml
    from conftest import REPO

    return yaml.safe_load((REPO / "config.yaml").read_text())


def load_config(config: dict, results) -> None:
    """What the workflow does with a config at load (``workflow/rules/common.smk``): the schema
    (every key, named by its path), its defaults, every dataset's listing and plan, then
    :func:`medseg.plan.check.check_config` on the plans (networks, encoders, normalisation)."""
    from medseg.pipeline.dag import Workflow
    from medseg.plan.check import check_config, fill_defaults, validate_config

    validate_config(config)
    fill_defaults(config)
    check_config(config, Workflow(config, str(results)).plans)


def test_shipped_configs_pass_check_config(tmp_path):
    import yaml
    from conftest import REPO

    from snakemake.utils import update_config

    load_config(yaml.safe_load((REPO / "config.yaml").read_text()), tmp_path / "results")
    for path in sorted((REPO / "tests" / "configs").glob("*.yaml")):  # overlays on config.yaml, as --configfile
        merged = yaml.safe_load((REPO / "config.yaml").read_text())
        update_config(merged, yaml.safe_load(path.read_text()))
        load_config(merged, tmp_path / "results")


@pytest.mark.parametrize("section,key,value,match", [
    ("training", "stpes", 10, r"config key training\.stpes is unknown \(did you mean steps\?\); valid keys of training: \[.*'steps'"),
    ("training", "loss", "dice_bc", r"config key training\.loss: 'dice_bc' is not one of \[.*'dice_bce'.*\]"),
    ("training", "schedule", "step", r"config key training\.schedule: 'step' is not one of \['poly', 'cosine'\]"),
    ("training", "augment", {"flipp": 0.5}, r"config key training\.augment\.flipp is unknown \(did you mean flip\?\)"),
    ("inference", "overlapp", 0.5, r"config key inference\.overlapp is unknown \(did you mean overlap\?\)"),
    ("preprocessing.n4", "maks", "brain", r"config key preprocessing\.n4\.maks is unknown \(did you mean mask\?\)"),
    ("preprocessing.n4", "mask", "head", r"config key preprocessing\.n4\.mask: 'head' is not one of \['brain', 'otsu'\]"),
    ("preprocessing.register", "atlas_spacing", 2.0,
     r"config key preprocessing\.register\.atlas_spacing is unknown \(did you mean atlas_spacing_mm\?\)"),
    ("preprocessing.skullstrip", "method", "bet", r"config key preprocessing\.skullstrip\.method: 'bet' is not one of \[.*'deepbet'.*\]"),
    ("preprocessing.skullstrip", "modality", "t1c",
     r"preprocessing\.skullstrip\.modality must be one of the modalities of datasets\.brats \[.*'t1ce'.*\].*got 't1c'"),
    ("preprocessing.normalize", "method", "nyull", r"preprocessing\.normalize\.method for \w+ must be one of .*got .nyull."),
    ("preprocessing.normalize", "method", {"flar": "zscore"}, r"preprocessing\.normalize\.method names modalities \['flar'\]"),
    ("models.timm", "encoder", "resnet999", r"models\.timm\.encoder must be a timm model name, got 'resnet999'; did you mean one of \[.*'resnet18'.*\]"),
    ("models.timm", "arch", "unet4d", r"config key models\.timm\.arch: 'unet4d' is not one of \[.*'timm_unet'.*\]"),
    ("models.timm", "decoder_chanels", [8], r"config key models\.timm\.decoder_chanels is unknown \(did you mean decoder_channels\?\)"),
])
def test_config_errors_name_their_key_at_load(section, key, value, match, monkeypatch, tmp_path):
    """Typos passed a dry run and failed after all preprocessing (training.stpes, resnet999 ...)."""
    import timm

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("loading a config must not build a model"))
    config = _config()
    node = config
    for k in section.split("."):
        node = node.setdefault(k, {})
    node[key] = value
    with pytest.raises(ValueError, match=match):
        load_config(config, tmp_path / "results")


def test_config_sections_that_are_not_mappings(tmp_path):
    config = _config()
    config["training"] = 5
    with pytest.raises(ValueError, match=r"config key training: 5 is not of type 'object'"):
        load_config(config, tmp_path / "results")
    config = _config()
    config["training"]["steps"] = "many"
    with pytest.raises(ValueError, match=r"config key training\.steps: 'many' is not of type 'integer'"):
        load_config(config, tmp_path / "results")


def test_a_3d_patch_off_the_network_stride_fails_at_load(tmp_path):
    """unet3d halves its input 3 times (default features): a 100-voxel side cannot be a training patch."""
    config = _config()
    config["models"]["u3"] = {"arch": "unet3d", "patch_size": [100, 128, 128]}
    with pytest.raises(ValueError, match=r"models\.u3 training\.patch_size \(or models\.u3\.patch_size\) must be 3 sizes, "
                                         r"each a multiple of 8 .*got \[100, 128, 128\]"):
        load_config(config, tmp_path / "results")
    config["models"]["u3"]["patch_size"] = [96, 128, 128]
    load_config(config, tmp_path / "results")
