"""Hostile inputs, as a new user tries them (issue 25): input -> expected outcome, one row each.

Every door reads cases with the same checked functions: the case sheet (``cases.tsv``), ``medseg
predict``, ``medseg evaluate``, the slide sheet and the plan. Each probe builds a tiny input and
says what must happen:

* ``Excluded(case, pattern)``: the case sheet lists the case with a problem matching ``pattern``
  (split ``excluded`` or a problem row: either way it is left out, with its reason), and no other
  case is lost;
* ``Error(pattern)``: an ``InputError``/``ValueError`` whose one-line message matches ``pattern``
  (it names the file or key and the fix);
* ``Result(check)``: the right answer, checked against known truth.

Fast: images of a few hundred voxels, no training (bundles are fabricated: verification and input
checks run before any weights are read).
"""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.io import InputError

SHAPE = (6, 8, 8)  # (z, y, x)
BRATS = ("t1", "t1ce", "t2", "flair")


# ---- tiny inputs -------------------------------------------------------------------------------
def nifti(path: Path, arr: np.ndarray, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0)) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def scan(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(SHAPE).astype(np.float32) + 0.1


def labels(value: int = 1) -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    seg[2:4, 2:5, 2:5] = value
    return seg


def brats_case(root: Path, case: str, ext: str = ".nii.gz") -> Path:
    for i, m in enumerate(BRATS):
        nifti(root / case / f"{case}_{m}{ext}", scan(i))
    seg = labels(2)
    seg[3, 3, 3] = 4
    nifti(root / case / f"{case}_seg{ext}", seg)
    return root / case


def nnunet_folder(root: Path, cases=("p1", "p2", "p3")) -> Path:
    for c in cases:
        for ch in range(2):
            nifti(root / "imagesTr" / f"{c}_{ch:04d}.nii.gz", scan(ch))
        nifti(root / "labelsTr" / f"{c}.nii.gz", labels())
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "ADC"},
                                                   "labels": {"background": 0, "lesion": 1},
                                                   "numTraining": len(cases), "file_ending": ".nii.gz"}))
    return root


def nifti4d(path: Path, n_channels: int) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(n_channels).random((8, 8, 6, n_channels)).astype(np.float32) + 0.1
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


def msd_folder(root: Path, cases=("pr_00", "pr_01", "pr_02"), test=("pr_03",), channels=None) -> Path:
    import nibabel as nib

    training = []
    for c in cases:
        nifti4d(root / "imagesTr" / f"{c}.nii.gz", (channels or {}).get(c, 2))
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        seg = np.zeros((8, 8, 6), np.uint8)
        seg[2:4, 2:5, 2:5] = 1
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(root / "labelsTr" / f"{c}.nii.gz"))
        training.append({"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"})
    for c in test:
        nifti4d(root / "imagesTs" / f"{c}.nii.gz", 2)
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "T2", "1": "ADC"},
                                                   "labels": {"0": "background", "1": "lesion"},
                                                   "training": training,
                                                   "test": [f"./imagesTs/{c}.nii.gz" for c in test]}))
    return root


def case_sheet(root: Path, tmp: Path, **kw) -> dict[str, dict]:
    """The case sheet of dataset folder ``root`` (every case inspected), as written."""
    from medseg.cohort.listing import list_cases
    from medseg.cohort.sheet import plan_sheet, read_case_sheet

    listing = list_cases(root.name, {"source": str(root), "split": {"test_fraction": 0.0, "val_fraction": 0.0}})
    plan_sheet(listing, tmp / "cases.tsv", tmp / "task.json", **kw)
    return read_case_sheet(tmp / "cases.tsv")


# ---- outcomes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Excluded:
    case: str
    pattern: str
    others: tuple[str, ...] = ()  # cases that must stay usable


@dataclass(frozen=True)
class Error:
    pattern: str


@dataclass(frozen=True)
class Result:
    check: Callable[[object], None]


@dataclass(frozen=True)
class Probe:
    name: str
    act: Callable[[Path], object]
    expect: Excluded | Error | Result


def judge(probe: Probe, tmp_path: Path) -> None:
    if isinstance(probe.expect, Error):
        with pytest.raises((InputError, ValueError)) as e:
            probe.act(tmp_path)
        msg = str(e.value)
        assert "\n" not in msg.strip(), msg
        assert re.search(probe.expect.pattern, msg), msg
        return
    out = probe.act(tmp_path)
    if isinstance(probe.expect, Excluded):
        rows, want = out, probe.expect
        assert want.case in rows, f"{want.case} vanished: {sorted(rows)}"
        problem = rows[want.case]["problem"]
        assert re.search(want.pattern, problem), problem
        for c in want.others:
            assert not rows[c]["problem"] and rows[c]["split"] != "excluded", rows[c]
        return
    probe.expect.check(out)


# ---- the dataset folders (case sheet) ------------------------------------------------------------
def nnunet_ghost_label(tmp: Path):
    root = nnunet_folder(tmp / "Dataset001_X")
    nifti(root / "labelsTr" / "ghost.nii.gz", labels())
    return case_sheet(root, tmp)


def nnunet_training_case_without_images(tmp: Path):
    root = nnunet_folder(tmp / "Dataset001_X")
    for p in (root / "imagesTr").glob("p3_*"):
        p.unlink()
    return case_sheet(root, tmp)


def nnunet_undeclared_channel(tmp: Path):
    root = nnunet_folder(tmp / "Dataset001_X")
    nifti(root / "imagesTr" / "p1_0002.nii.gz", scan(5))
    return case_sheet(root, tmp)


def nnunet_stale_label_sibling(tmp: Path):
    root = nnunet_folder(tmp / "Dataset001_X")
    nifti(root / "labelsTr" / "p1.nii", labels(0))
    return case_sheet(root, tmp)


def msd_more_channels_than_declared(tmp: Path):
    return case_sheet(msd_folder(tmp / "Task01_X", channels={"pr_01": 3}), tmp)


def msd_one_channel_for_two_modalities(tmp: Path):
    root = msd_folder(tmp / "Task01_X")
    nifti(root / "imagesTr" / "pr_01.nii.gz", scan().transpose(2, 1, 0).copy())
    return case_sheet(root, tmp)


def msd_id_in_training_and_test(tmp: Path):
    root = msd_folder(tmp / "Task01_X", test=("pr_01",))
    return case_sheet(root, tmp)


def msd_case_not_listed(tmp: Path):
    root = msd_folder(tmp / "Task01_X")
    nifti4d(root / "imagesTr" / "pr_09.nii.gz", 2)
    nifti(root / "labelsTr" / "pr_09.nii.gz", labels())
    return case_sheet(root, tmp)


def brats_folder(tmp: Path) -> Path:
    root = tmp / "brats"
    for c in ("A", "B", "C"):
        brats_case(root, c)
    return root


def brats_stale_seg_sibling(tmp: Path):
    root = brats_folder(tmp)
    nifti(root / "A" / "A_seg.nii", np.zeros(SHAPE, np.uint8))  # an old export beside the real one
    return case_sheet(root, tmp)


def brats_stale_scan_sibling(tmp: Path):
    root = brats_folder(tmp)
    nifti(root / "A" / "A_t1.nii", scan(9) * 100)
    return case_sheet(root, tmp)


def brats_letter_case_twins(tmp: Path):
    root = brats_folder(tmp)
    nifti(tmp / "copy.nii.gz", scan(8)).rename(root / "A" / "A_flair.NII.GZ")  # ITK writes lower-case names only
    return case_sheet(root, tmp)


def brats_not_in_one_space(tmp: Path):
    root = brats_folder(tmp)
    nifti(root / "A" / "A_flair.nii.gz", scan(3), origin=(0.0, 0.0, 12.0))
    return case_sheet(root, tmp, same_space=True)


def region_spelled_otherwise(tmp: Path):
    from medseg.cohort.listing import list_cases

    root = nnunet_folder(tmp / "Dataset002_Y")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "Edema": 1, "Tumour": 2}
    (root / "dataset.json").write_text(json.dumps(meta))
    return list_cases("y", {"source": str(root), "regions": {"whole": ["edema", "Tumour"]}})


def dataset_json_regions_against_config_labels(tmp: Path):
    from medseg.cohort.listing import list_cases

    root = nnunet_folder(tmp / "Dataset003_Z")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "Edema": 1, "Core": 2, "whole": [1, 2], "core": [2]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return list_cases("z", {"source": str(root), "labels": {"edema": 1, "core": 2}})


# ---- the readers: a file is read by the exact path that was listed -------------------------------
def read_labels_beside_stale_sibling(tmp: Path):
    from medseg.io import read_image, read_labels

    gz = nifti(tmp / "X_seg.nii.gz", labels(1))
    nifti(tmp / "X_seg.nii", labels(2))
    nifti(tmp / "X_t1.nii.gz", scan(1))
    nifti(tmp / "X_t1.nii", scan(2))
    return (sitk.GetArrayFromImage(read_labels(gz)), sitk.GetArrayFromImage(read_image(tmp / "X_t1.nii.gz")))


def check_read_exact(out) -> None:
    seg, t1 = out
    assert np.array_equal(seg, labels(1)) and np.allclose(t1, scan(1))


def evaluate_reference_beside_stale_sibling(tmp: Path):
    from medseg.evaluate.case import evaluate_case

    nifti(tmp / "ref" / "X_seg.nii.gz", labels(2))
    nifti(tmp / "ref" / "X_seg.nii", np.zeros(SHAPE, np.uint8))
    pred = nifti(tmp / "pred.nii.gz", labels(2))
    return evaluate_case(pred, tmp / "ref" / "X_seg.nii.gz", case_id="X")


def check_scored_listed_file(result) -> None:
    assert result["regions"]["WT"]["dice"] == pytest.approx(1.0)  # the stale sibling is all background


def evaluate_nan_prediction(tmp: Path):
    from medseg.evaluate.case import evaluate_case

    ref = nifti(tmp / "ref.nii.gz", labels(2).astype(np.float32))
    bad = labels(2).astype(np.float32)
    bad[0, 0, 0] = np.nan
    return evaluate_case(nifti(tmp / "pred.nii.gz", bad), ref, case_id="ref")


# ---- medseg predict ------------------------------------------------------------------------------
def brats_inputs(tmp: Path, names: dict[str, str]) -> dict[str, str]:
    """modality -> written file named ``names[modality]``."""
    return {m: str(nifti(tmp / n, scan(i))) for i, (m, n) in enumerate(names.items())}


def predict_positional_contradicts_names(tmp: Path):
    """The probe's order with one name kept: c_flair.nii.gz stands where the bundle expects t1."""
    from medseg.inference.predict import cases_from_inputs

    files = brats_inputs(tmp, {"t1": "c_flair.nii.gz", "t1ce": "c_a.nii.gz", "t2": "c_b.nii.gz", "flair": "c_c.nii.gz"})
    return cases_from_inputs(list(files.values()), BRATS)


def predict_two_files_name_one_modality(tmp: Path):
    from medseg.inference.predict import cases_from_inputs

    files = brats_inputs(tmp, {"t1": "c_t1.nii.gz", "t1ce": "c_t1ce.nii.gz", "t2": "c_flair.nii.gz",
                               "flair": "d_flair.nii.gz"})
    return cases_from_inputs(list(files.values()), BRATS)


def predict_named_input_contradicts_file_name(tmp: Path):
    from medseg.inference.predict import cases_from_inputs

    files = brats_inputs(tmp, {m: f"c_{m}.nii.gz" for m in BRATS})
    return cases_from_inputs([f"t1={files['flair']}", f"t1ce={files['t1ce']}", f"t2={files['t2']}",
                              f"flair={files['t1']}"], BRATS)


def predict_names_in_any_order(tmp: Path):
    from medseg.inference.predict import cases_from_inputs

    files = brats_inputs(tmp, {m: f"c_{m}.nii.gz" for m in BRATS})
    return files, cases_from_inputs([files[m] for m in ("flair", "t2", "t1ce", "t1")], BRATS)


def predict_brats2023_names(tmp: Path):
    from medseg.inference.predict import cases_from_inputs

    names = {"t1": "P-001-t1n.nii.gz", "t1ce": "P-001-t1c.nii.gz", "t2": "P-001-t2w.nii.gz", "flair": "P-001-t2f.nii.gz"}
    files = brats_inputs(tmp, names)
    return files, cases_from_inputs([files[m] for m in ("t2", "flair", "t1", "t1ce")], BRATS)


def predict_nnunet_channel_suffixes(tmp: Path):
    from medseg.inference.predict import cases_from_inputs

    files = {m: str(nifti(tmp / f"q7_{i:04d}.nii.gz", scan(i))) for i, m in enumerate(("t2", "adc"))}
    return files, cases_from_inputs([files["adc"], files["t2"]], ("t2", "adc"))


def predict_named_inputs(tmp: Path):
    from medseg.inference.predict import cases_from_inputs

    files = brats_inputs(tmp, {m: f"scan{i}.nii.gz" for i, m in enumerate(BRATS)})
    return files, cases_from_inputs([f"{m}={files[m]}" for m in ("flair", "t1", "t2", "t1ce")], BRATS)


def predict_named_input_unknown_modality(tmp: Path):
    from medseg.inference.predict import cases_from_inputs

    files = brats_inputs(tmp, {m: f"scan{i}.nii.gz" for i, m in enumerate(BRATS)})
    return cases_from_inputs([f"t1={files['t1']}", f"t1c={files['t1ce']}", f"t2={files['t2']}",
                              f"pd={files['flair']}"], BRATS)


def check_matched(case: str):
    def check(out) -> None:
        files, cases = out
        assert list(cases) == [case]
        images, channels = cases[case]
        assert images == files and channels == {}
    return check


def fake_bundle(tmp: Path, task, recipe_steps: dict | None = None) -> Path:
    """A bundle of a real plan and fabricated weights: enough for verification and input checks."""
    from medseg.inference.bundle import export_bundle
    from medseg.plan.resolved import resolve_plan

    config = {"datasets": {task.name: {"steps": recipe_steps or {}}},
              "models": {"timm": {"arch": "timm_unet", "encoder": "resnet10t", "pretrained": False}}}
    (tmp / "norm.json").write_text("{}")
    (tmp / "model.pt").write_bytes(b"fabricated weights " * 64)
    return export_bundle(tmp / "bundle", resolve_plan(config, task.name, task), "timm", tmp / "norm.json",
                         [tmp / "model.pt"])


def predict_not_in_one_space(tmp: Path, monkeypatch):
    """A generic (unregistered) bundle: modalities are stacked voxel by voxel, so one space is
    checked before any preprocessing (the same check as the case sheet's)."""
    import medseg.inference.predict as predict
    from medseg.tasks.definition import Task

    task = Task("two", ("t1", "flair"), {"lesion": 1}, recipe="generic")
    bundle = predict.load_bundle(fake_bundle(tmp, task))
    t1 = nifti(tmp / "c_t1.nii.gz", scan(1))
    flair = nifti(tmp / "c_flair.nii.gz", scan(2), origin=(0.0, 0.0, 12.0))

    def no_work(*a, **k):
        raise AssertionError("preprocessing ran before the inputs were checked")

    monkeypatch.setattr(predict, "run_stages", no_work)
    return predict.predict_raw("c", {"t1": str(t1), "flair": str(flair)}, bundle, tmp / "out.nii.gz")


def predict_folder_with_a_bad_case(tmp: Path, monkeypatch):
    """``medseg predict -i <Decathlon folder>``: the case whose 4-D image has 3 channels for 2 declared
    modalities is skipped with its reason (the case sheet's check), every other case is predicted."""
    import argparse

    import medseg.inference.predict as predict
    from medseg.tasks.definition import Task

    bundle = fake_bundle(tmp, Task("msd", ("t2", "adc"), {"lesion": 1}, recipe="generic"))
    root = msd_folder(tmp / "Task01_X", channels={"pr_01": 3})
    done = []
    monkeypatch.setattr(predict, "run_stages", lambda job, *a, **k: done.append(job.case))
    try:
        predict._cli(argparse.Namespace(input=[str(root)], model=str(bundle), output=str(tmp / "out"), threads=1))
    except InputError as e:
        return done, str(e)
    return done, ""


def check_folder_goes_on(out) -> None:
    done, error = out
    assert done == ["pr_00", "pr_02", "pr_03"], done
    assert re.search(r"1 of 4 case\(s\) .*not predicted.*\['pr_01'\]", error), error


# ---- bundles through the CLI ---------------------------------------------------------------------
def cli_predict(tmp: Path, bundle: Path, *inputs: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medseg.cli", "predict", "-i", *inputs, "-m", str(bundle),
                           "-o", str(tmp / "out.nii.gz")], capture_output=True, text=True, timeout=120)


def damaged_bundle(tmp: Path, damage: Callable[[Path], None]) -> tuple[subprocess.CompletedProcess, float]:
    from medseg.tasks.presets import brats_task

    bundle = fake_bundle(tmp, brats_task("brats", "2021"))
    damage(bundle)
    files = brats_inputs(tmp, {m: f"c_{m}.nii.gz" for m in BRATS})
    t0 = time.perf_counter()
    r = cli_predict(tmp, bundle, *files.values())
    return r, time.perf_counter() - t0


def truncate(name: str) -> Callable[[Path], None]:
    def damage(bundle: Path) -> None:
        p = bundle / name
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    return damage


def remove(name: str) -> Callable[[Path], None]:
    return lambda bundle: (bundle / name).unlink()


def overwrite(name: str, text: str) -> Callable[[Path], None]:
    return lambda bundle: (bundle / name).write_text(text)


def one_line_exit_2(*words: str):
    def check(out) -> None:
        r, seconds = out
        err = r.stderr.strip()
        assert r.returncode == 2, err[-2000:]
        assert "Traceback" not in err and len(err.splitlines()) == 1, err[-2000:]
        for w in ("bundle", *words):
            assert w in err, err
        assert seconds < 30, seconds  # before any preprocessing (N4 takes tens of seconds)
    return check


def cli_positional_contradicts_names(tmp: Path):
    from medseg.tasks.presets import brats_task

    bundle = fake_bundle(tmp, brats_task("brats", "2021"))
    files = brats_inputs(tmp, {"t1": "c_flair.nii.gz", "t1ce": "c_a.nii.gz", "t2": "c_b.nii.gz", "flair": "c_c.nii.gz"})
    t0 = time.perf_counter()
    r = cli_predict(tmp, bundle, *files.values())
    return r, time.perf_counter() - t0


def one_line_exit_2_input(*words: str):
    def check(out) -> None:
        r, seconds = out
        err = r.stderr.strip()
        assert r.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err[-2000:]
        assert all(w in err for w in words) and seconds < 30, (err, seconds)
    return check


# ---- plans ---------------------------------------------------------------------------------------
def plan_window_larger_than_atlas_grid(tmp: Path, caplog):
    from medseg.plan.resolved import resolve_plan
    from medseg.tasks.presets import brats_task

    config = {"datasets": {"brats": {}}, "preprocessing": {"register": {"atlas_spacing_mm": 3.0}},
              "models": {"unet3d": {"arch": "unet3d", "features": [4, 8, 16], "seg_levels": 2,
                                  "patch_size": [256, 256, 256]}}}
    with caplog.at_level(logging.WARNING):
        plan = resolve_plan(config, "brats", brats_task("brats", "2021"))
    return plan.run("unet3d"), caplog.text


def check_window_clipped(out) -> None:
    from medseg.plan.runs import atlas_grid

    run, text = out
    grid = atlas_grid(3.0)  # (z, y, x) voxels of the ICBM152 atlas grid at 3 mm: about (56, 68, 56)
    for patch in (run.training.patch_size, run.inference.patch_size):
        assert all(g <= p < g + 4 and p % 4 == 0 for p, g in zip(patch, grid)), (patch, grid)  # stride 4
    assert "models.unet3d" in text and "256" in text and "working grid" in text


def plan_window_larger_than_native_grid(tmp: Path, caplog):
    """A generic dataset (no registration, working voxel size spacing_mm): its grid is known only
    approximately, from the first case's header; the 80x80x53 probe of the issue."""
    from medseg.cohort.listing import list_cases
    from medseg.plan.resolved import resolve_plan

    root = msd_folder(tmp / "Task04_W")
    ds = {"source": str(root), "spacing_mm": [1.0, 1.0, 1.0]}
    listing = list_cases("w", ds)
    config = {"datasets": {"w": ds}, "models": {"unet3d": {"arch": "unet3d", "features": [4, 8, 16], "seg_levels": 2,
                                                          "patch_size": [256, 256, 256]}}}
    with caplog.at_level(logging.WARNING):
        plan = resolve_plan(config, "w", listing.task, native_grid=listing.native_grid)
    return plan.run("unet3d"), caplog.text


def check_native_window_clipped(out) -> None:
    run, text = out
    assert run.training.patch_size == run.inference.patch_size == (8, 8, 8)  # grid (6, 8, 8) -> multiples of 4
    assert "models.unet3d" in text and "working grid" in text


# ---- slides ---------------------------------------------------------------------------------------
def slide_folder(tmp: Path, features: list[dict]) -> Path:
    from medseg.wsi.synthetic import write_synthetic_slide

    (tmp / "ann").mkdir()
    for name, feats in (("s1", features), ("s2", [square(10, 10, 60, 60)])):  # s2: a good slide beside the probe
        write_synthetic_slide(tmp / "slides" / f"{name}.tif", 512, mpp=0.5, compression="zlib")
        (tmp / "ann" / f"{name}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return tmp


def square(x0, y0, x1, y1, name="tumour") -> dict:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"classification": {"name": name}}}


def slide_polygon_crossing_the_edge(tmp: Path, caplog):
    from medseg.wsi.annotations import read_mask
    from medseg.wsi.sheet import build_slide_sheet

    root = slide_folder(tmp, [square(100, 100, 200, 200), square(400, 450, 600, 700)])  # the 2nd crosses x=512, y=512
    with caplog.at_level(logging.WARNING):
        rows = build_slide_sheet(root / "slides", root / "ann", ["tumour"], test_fraction=0.0, val_fraction=0.0)
        mask = read_mask(root / "ann" / "s1.geojson", ["tumour"], (512, 512), slide_size=(512, 512))
    return rows, mask, caplog.text


def check_polygon_clipped(out) -> None:
    rows, mask, text = out
    assert [r["problem"] for r in rows] == ["", ""], rows
    assert mask[450:512, 400:512].all() and mask.sum() == 100 * 100 + 112 * 62
    assert "feature 1" in text and "clipped" in text and "s1.geojson" in text


def slide_without_features(tmp: Path):
    from medseg.wsi.sheet import build_slide_sheet

    root = slide_folder(tmp, [])
    return {r["case_id"]: r for r in build_slide_sheet(root / "slides", root / "ann", ["tumour"],
                                                        test_fraction=0.0, val_fraction=0.0)}


def slide_in_two_files(tmp: Path):
    from medseg.wsi.sheet import build_slide_sheet
    from medseg.wsi.synthetic import write_synthetic_slide

    root = slide_folder(tmp, [square(100, 100, 200, 200)])
    write_synthetic_slide(root / "slides" / "S1.tiff", 512, mpp=0.5, compression="zlib")
    return {r["case_id"]: r for r in build_slide_sheet(root / "slides", root / "ann", ["tumour"],
                                                        test_fraction=0.0, val_fraction=0.0)}


def evaluate_folder_with_stale_sibling(tmp: Path):
    from medseg.evaluate.commands import match_cases

    for d in ("pred", "ref"):
        nifti(tmp / d / "X" / "X_seg.nii.gz", labels(2))
    nifti(tmp / "ref" / "X" / "X_seg.nii", labels(1))
    return match_cases(tmp / "pred", tmp / "ref")


PROBES = [
    # dataset folders: every file belongs to a case or is listed as a problem
    Probe("nnunet: label map without images", nnunet_ghost_label,
          Excluded("ghost", r"labelsTr/ghost.nii.gz.*no images", ("p1", "p2", "p3"))),
    Probe("nnunet: training case whose images are all missing", nnunet_training_case_without_images,
          Excluded("p3", r"labelsTr/p3.nii.gz.*no images.*imagesTr/p3_0000.nii.gz", ("p1", "p2"))),
    Probe("nnunet: a channel dataset.json does not declare", nnunet_undeclared_channel,
          Excluded("p1", r"p1_0002.nii.gz.*channel.*declares 2", ("p2", "p3"))),
    Probe("nnunet: stale .nii beside the label map", nnunet_stale_label_sibling,
          Excluded("p1", r"p1.nii.gz.*p1.nii\b.*same image|p1.nii\b.*p1.nii.gz.*same image", ("p2", "p3"))),
    Probe("decathlon: 4-D image with more channels than modality declares", msd_more_channels_than_declared,
          Excluded("pr_01", r"pr_01.nii.gz.*3 channels.*2 modalities", ("pr_00", "pr_02"))),
    Probe("decathlon: 3-D image for two modalities", msd_one_channel_for_two_modalities,
          Excluded("pr_01", r"pr_01.nii.gz.*3-D", ("pr_00", "pr_02"))),
    Probe("decathlon: one id in training and test", msd_id_in_training_and_test,
          Excluded("pr_01", r"both .*training.*test", ("pr_00", "pr_02"))),
    Probe("decathlon: a case in imagesTr/labelsTr that dataset.json does not list", msd_case_not_listed,
          Excluded("pr_09", r"not listed in .*dataset.json", ("pr_00", "pr_01", "pr_02"))),
    Probe("brats: stale X_seg.nii beside X_seg.nii.gz", brats_stale_seg_sibling,
          Excluded("A", r"A_seg.nii\b.*A_seg.nii.gz.*same image", ("B", "C"))),
    Probe("brats: stale X_t1.nii beside X_t1.nii.gz", brats_stale_scan_sibling,
          Excluded("A", r"A_t1.nii\b.*A_t1.nii.gz.*same image", ("B", "C"))),
    Probe("brats: the same scan in two letter cases", brats_letter_case_twins,
          Excluded("A", r"A_flair.NII.GZ.*A_flair.nii.gz.*same image", ("B", "C"))),
    Probe("brats: modalities not in one space (no registration)", brats_not_in_one_space,
          Excluded("A", r"A_flair.nii.gz has origin \[0.0, 0.0, 12.0\]", ("B", "C"))),
    Probe("config regions spell a dataset.json label otherwise", region_spelled_otherwise,
          Error(r"datasets.y.regions.whole names 'edema'.*dataset.json.*'Edema'")),
    Probe("dataset.json regions against config labels spelled otherwise", dataset_json_regions_against_config_labels,
          Error(r"region 'whole' of .*dataset.json names 'Edema'.*datasets.z.labels")),
    # readers
    Probe("read_labels/read_image beside a stale .nii", read_labels_beside_stale_sibling, Result(check_read_exact)),
    Probe("evaluate -r X_seg.nii.gz beside a stale X_seg.nii", evaluate_reference_beside_stale_sibling,
          Result(check_scored_listed_file)),
    Probe("evaluate: NaN in the prediction", evaluate_nan_prediction,
          Error(r"^prediction .*pred.nii.gz: 1 voxels are NaN")),
    Probe("evaluate folders: X_seg.nii beside X_seg.nii.gz", evaluate_folder_with_stale_sibling,
          Error(r"case 'X' has two label maps .*X_seg.nii\b.*X_seg.nii.gz")),
    # medseg predict
    Probe("predict: positional order contradicting the names", predict_positional_contradicts_names,
          Error(r"c_flair.nii.gz.*flair.*\bt1\b")),
    Probe("predict: two files naming one modality", predict_two_files_name_one_modality,
          Error(r"c_flair.nii.gz.*d_flair.nii.gz.*flair")),
    Probe("predict: named input contradicting its file name", predict_named_input_contradicts_file_name,
          Error(r"t1=.*c_flair.nii.gz.*flair")),
    Probe("predict: BraTS 2021 names in any order", predict_names_in_any_order, Result(check_matched("c"))),
    Probe("predict: BraTS 2023 names in any order", predict_brats2023_names, Result(check_matched("P-001"))),
    Probe("predict: nnU-Net channel suffixes in any order", predict_nnunet_channel_suffixes,
          Result(check_matched("q7"))),
    Probe("predict: named inputs", predict_named_inputs, Result(check_matched("scan"))),
    Probe("predict: named input of an unknown modality", predict_named_input_unknown_modality,
          Error(r"'pd'.*\['t1', 't1ce', 't2', 'flair'\]")),
    Probe("predict CLI: order contradicting a name", cli_positional_contradicts_names,
          Result(one_line_exit_2_input("c_flair.nii.gz", "t1", "t1="))),
    Probe("bundle: truncated fold_0/model.pt", lambda t: damaged_bundle(t, truncate("fold_0/model.pt")),
          Result(one_line_exit_2("fold_0/model.pt", "SHA-256", "snakemake results/"))),
    Probe("bundle: normalizers.json missing", lambda t: damaged_bundle(t, remove("normalizers.json")),
          Result(one_line_exit_2("normalizers.json", "missing", "snakemake results/"))),
    Probe("bundle: broken bundle.json", lambda t: damaged_bundle(t, overwrite("bundle.json", '{"version": "2\x01}')),
          Result(one_line_exit_2("bundle.json", "not valid JSON", "snakemake results/"))),
    Probe("bundle: altered plan.json", lambda t: damaged_bundle(t, overwrite("plan.json", "{}")),
          Result(one_line_exit_2("plan.json", "SHA-256"))),
    Probe("bundle: bundle.json without its fold count", lambda t: damaged_bundle(t, overwrite("bundle.json", '{"version": 2}')),
          Result(one_line_exit_2("bundle.json", "incomplete", "snakemake results/brats/bundles/"))),
    # slides
    Probe("slide: one slide id in two files", slide_in_two_files,
          Excluded("s1", r"S1.tiff and s1.tif .*same slide", ("s2",))),
    Probe("slide: an annotation file without features", slide_without_features,
          Excluded("s1", r"s1.geojson has no features", ("s2",))),
]
# probes that need a pytest fixture take it as a second argument (the last probe, two invocations
# creating one fresh mlflow.db at once, is the tracking store's and is tested with it in tests/test_tracking.py)
FIXTURE_PROBES = [
    ("predict: modalities not in one space", predict_not_in_one_space, "monkeypatch",
     Error(r"case c.*c_flair.nii.gz has origin \[0.0, 0.0, 12.0\].*c_t1.nii.gz")),
    ("predict: a dataset folder with a bad case", predict_folder_with_a_bad_case, "monkeypatch",
     Result(check_folder_goes_on)),
    ("plan: 3-D window larger than the atlas grid", plan_window_larger_than_atlas_grid, "caplog",
     Result(check_window_clipped)),
    ("plan: 3-D window larger than a native grid", plan_window_larger_than_native_grid, "caplog",
     Result(check_native_window_clipped)),
    ("slide: polygon crossing the slide edge", slide_polygon_crossing_the_edge, "caplog",
     Result(check_polygon_clipped)),
]


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_hostile_input(probe, tmp_path):
    judge(probe, tmp_path)


@pytest.mark.parametrize("name,act,fixture,expect", FIXTURE_PROBES, ids=[p[0] for p in FIXTURE_PROBES])
def test_hostile_input_with_fixture(name, act, fixture, expect, tmp_path, request):
    value = request.getfixturevalue(fixture)
    judge(Probe(name, lambda t: act(t, value), expect), tmp_path)


def test_atlas_grid_is_the_atlas_images_grid():
    """The plan's atlas grid (no image read) is the grid registration writes, within a voxel."""
    from medseg.plan.runs import atlas_grid
    from medseg.preprocess.atlas import atlas_images

    for spacing in (3.0, 4.0):
        size_zyx = atlas_images(spacing).brain.GetSize()[::-1]
        assert all(abs(a - b) <= 1 for a, b in zip(atlas_grid(spacing), size_zyx)), (spacing, size_zyx)
