"""The seeds' own experiments: PROMISE12 and ACDC folders as their downloads lay them out (read from
generated phantoms), EDPCNN's object, one config per paper, and tiny end-to-end runs of both."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from medseg.cli import main as cli
from medseg.cohort.listing import list_cases
from medseg.cohort.phantoms import write_acdc, write_promise12
from medseg.inference.edpcnn import mask_to_probs, resolve_object
from medseg.io import InputError
from medseg.tasks.definition import Task
from medseg.tasks.layouts import detect_layout
from medseg.tasks.presets import brats_task

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "configs" / "seeds"


def _sheet(folder: Path, tmp_path: Path) -> tuple[int, pd.DataFrame, dict]:
    """``medseg case-sheet -i folder``: exit code, the sheet, the task."""
    code = cli(["case-sheet", "-i", str(folder), "-o", str(tmp_path / "cases.tsv"), "--task", str(tmp_path / "task.json")])
    sheet = pd.read_csv(tmp_path / "cases.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("case_id")
    return code, sheet, json.loads((tmp_path / "task.json").read_text())


def _values(path: str) -> set[int]:
    return {int(v) for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(path)))}


# ---- PROMISE12 ---------------------------------------------------------------------------------------
def test_promise12_folder_is_detected_and_lists_every_case(tmp_path):
    data = tmp_path / "PROMISE12"
    write_promise12(data, n_labelled=3, n_unlabelled=1, size=32)
    assert detect_layout(data) == "promise12"
    code, sheet, task = _sheet(data, tmp_path)
    assert code == 0 and list(sheet.index) == ["Case00", "Case01", "Case02", "Case03"]
    assert task["modalities"] == ["t2"] and dict(task["labels"]) == {"prostate": 1} and task["recipe"] == "generic"
    labelled = sheet[sheet.labelled == "true"]
    assert list(labelled.index) == ["Case00", "Case01", "Case02"] and set(labelled.split) <= {"train", "test"}
    assert all(s.endswith(f"{c}_segmentation.mhd") for c, s in labelled.seg.items())
    assert sheet.loc["Case03", "split"] == "predict" and sheet.loc["Case03", "seg"] == ""
    assert sheet.loc["Case03", "t2"].endswith("Case03.mhd") and (data / "Case03.raw").exists()
    for seg in labelled.seg:
        assert _values(seg) == {0, 1}  # background and a prostate in every label map
    img = sitk.ReadImage(sheet.loc["Case00", "t2"])
    assert img.GetPixelID() == sitk.sitkInt16 and img.GetSpacing()[2] > 1.5 * img.GetSpacing()[0]  # thick slices


def test_promise12_archive_folders_reuse_ids_and_a_missing_raw_names_both_files(tmp_path):
    """The challenge's archives unpack into folders whose ids collide (TestData/Case00 and
    TrainingData_Part1/Case00): each becomes <folder>_<id>. A header whose .raw is missing is a
    problem naming the header and the data file."""
    data = tmp_path / "PROMISE12"
    write_promise12(data, n_labelled=2, n_unlabelled=2, size=32, split_folders=True)
    (data / "TestData" / "Case01.raw").unlink()
    listing = list_cases("p12", {"source": str(data)})
    assert listing.layout == "promise12"
    assert sorted(listing.files) == ["TestData_Case00", "TrainingData_Part1_Case00", "TrainingData_Part1_Case01"]
    assert listing.files["TestData_Case00"].seg is None and listing.unlabelled_cases() == ["TestData_Case00"]
    why = listing.excluded["TestData_Case01"]
    assert "Case01.mhd" in why and "Case01.raw" in why and "ElementDataFile" in why


# ---- ACDC --------------------------------------------------------------------------------------------
def test_acdc_folder_lists_each_frame_with_phase_group_and_patient(tmp_path):
    data = tmp_path / "ACDC"
    made = write_acdc(data, n_labelled=3, n_unlabelled=1, n_frames=5, size=32)
    assert detect_layout(data) == "acdc" and detect_layout(data / "training") == "acdc"
    code, sheet, task = _sheet(data, tmp_path)
    assert code == 0 and task["modalities"] == ["cine"] and dict(task["labels"]) == {"RV": 1, "MYO": 2, "LV": 3}
    ids = [f"{p}_{ph}" for p in ("patient001", "patient002", "patient003", "patient101") for ph in ("ED", "ES")]
    assert list(sheet.index) == ids
    for pid, m in made.items():
        ed, es = sheet.loc[f"{pid}_ED"], sheet.loc[f"{pid}_ES"]
        assert (ed.phase, es.phase, ed.patient, ed.subset) == ("ED", "ES", pid, m["subset"])
        assert (ed.frame, es.frame) == ("1", str(m["ES"])) and es.cine.endswith(f"{pid}_frame{m['ES']:02d}.nii.gz")
        assert (ed.split, ed.fold) == (es.split, es.fold)  # one patient's frames never straddle a split
        if m["subset"] == "training":
            assert ed.group == m["group"] and ed.labelled == "true" and ed.split in ("train", "test")
            assert _values(ed.seg) == {0, 1, 2, 3}
            lv = [(sitk.GetArrayFromImage(sitk.ReadImage(r.seg)) == 3).sum() for r in (ed, es)]
            assert lv[1] < 0.85 * lv[0]  # the cavity empties from ED to ES
        else:
            assert ed.group == "" and ed.labelled == "false" and ed.split == "predict" and ed.seg == ""
    assert float(sheet.loc["patient002_ED", "nb_frames"]) == 5


def test_acdc_info_cfg_naming_a_missing_frame_is_a_problem_naming_both(tmp_path):
    data = tmp_path / "ACDC"
    write_acdc(data, n_labelled=3, n_unlabelled=0, n_frames=5, size=32)
    cfg = data / "training" / "patient002" / "Info.cfg"
    cfg.write_text(cfg.read_text().replace("ES: 3", "ES: 5"))
    code, sheet, _ = _sheet(data, tmp_path)
    row = sheet.loc["patient002_ES"]
    assert code == 1 and row.split == "excluded"
    assert str(cfg) in row.problem and "ES frame 5" in row.problem and "patient002_frame05.nii.gz" in row.problem
    assert sheet.loc["patient002_ED", "problem"] == "" and sheet.loc["patient002_ED", "split"] != "excluded"


def test_acdc_cine_frames_are_predicted_when_asked(tmp_path):
    data = tmp_path / "ACDC"
    made = write_acdc(data, n_labelled=2, n_unlabelled=1, n_frames=4, size=32)
    listing = list_cases("acdc", {"source": str(data), "cine_frames": True})
    cine = [c for c in listing.files if "_cine" in c]
    assert len(cine) == 3 * 4 and set(cine) <= set(listing.unlabelled_cases())
    f = listing.files["patient002_cine03"]
    assert f.channels == {"cine": 2} and f.images["cine"].endswith("patient002_4d.nii.gz") and f.meta["frame"] == "3"
    from medseg.cohort.sheet import plan_sheet
    from medseg.cohort.sources import read_source

    rows = plan_sheet(listing, tmp_path / "cases.tsv")
    assert not [r["problem"] for r in rows if r["problem"]]
    es = made["patient002"]["ES"]
    frame = read_source(listing.raw(f"patient002_cine{es:02d}", "cine"), "c", listing.channel(f"patient002_cine{es:02d}", "cine"))
    es_file = sitk.ReadImage(listing.raw("patient002_ES", "cine"), sitk.sitkFloat32)
    assert np.array_equal(sitk.GetArrayFromImage(frame), sitk.GetArrayFromImage(es_file))
    assert frame.GetSpacing() == pytest.approx(es_file.GetSpacing()) and frame.GetOrigin() == pytest.approx(es_file.GetOrigin())
    assert "patient001_cine01" not in list_cases("acdc", {"source": str(data)}).files  # off by default
    p12 = tmp_path / "p12"
    write_promise12(p12, 2, 0, size=32)
    with pytest.raises(ValueError, match=r"datasets.p12.cine_frames"):
        list_cases("p12", {"source": str(p12), "cine_frames": True})


def test_a_folder_of_no_layout_says_what_each_layout_expects(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError) as e:
        detect_layout(tmp_path)
    for expected in ("dataset.json", "_t1ce.nii.gz", "Info.cfg", "patientNNN_frameFF_gt.nii.gz", "CaseNN_segmentation.mhd"):
        assert expected in str(e.value)


def test_thick_slices_keep_their_spacing_along_a_null_axis(tmp_path):
    """``spacing_mm: [3, 3, null]``: in plane on the working grid, each case's slices kept."""
    from medseg.plan.recipe import resolve_recipe
    from medseg.preprocess.stages import resample_to_spacing

    img = sitk.Image([40, 30, 7], sitk.sitkFloat32)
    img.SetSpacing((1.5, 1.5, 10.0))
    out = resample_to_spacing(img, (3.0, 3.0, None))
    assert out.GetSpacing() == (3.0, 3.0, 10.0) and out.GetSize() == (20, 15, 7)
    from medseg.plan.resolved import Plan

    recipe = resolve_recipe({}, {"spacing_mm": [3.0, 3.0, None]}, "generic", ("cine",), "datasets.acdc")
    assert recipe.spacing_mm == (3.0, 3.0, None) and recipe.n4_stage().spacing_mm == (3.0, 3.0, None)
    plan = Plan("acdc", "mri", Task("acdc", ("cine",), {"LV": 3}, recipe="generic"), recipe, {})
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))).recipe == recipe  # plan.json keeps the null axis


# ---- EDPCNN's object ------------------------------------------------------------------------------------
def test_edpcnn_object_is_a_label_or_a_region_of_the_task():
    acdc = Task("acdc", ("cine",), {"RV": 1, "MYO": 2, "LV": 3}, recipe="generic")
    lv = resolve_object(acdc, "LV")
    assert (lv.name, lv.channel, lv.kind, lv.classes) == ("LV", 3, "labels", (3,))
    labels = np.array([[0, 1, 2, 3], [3, 3, 2, 0]], np.uint8)
    target = acdc.encode(labels)[None, None]  # (B, T=1, H, W) class indices
    assert np.array_equal(lv.mask(target)[0], labels == 3)
    union = resolve_object(acdc)
    assert (union.name, union.channel) == ("foreground", 1) and np.array_equal(union.mask(target)[0], labels > 0)
    decoded = acdc.decode(mask_to_probs(lv.mask(target)[0], acdc.n_outputs, acdc.activation, lv.channel))
    assert np.array_equal(decoded, np.where(labels == 3, 3, 0))  # painted with LV's value, RV and MYO empty
    with pytest.raises(ValueError, match=r"models.edpcnn.object must be a label of dataset acdc \['RV', 'MYO', 'LV'\]"):
        resolve_object(acdc, "WT", "models.edpcnn.object")
    brats = brats_task("brats", "2021")
    assert resolve_object(brats).name == "WT" and resolve_object(brats, "TC").channel == list(brats.regions).index("TC")
    with pytest.raises(ValueError, match="must be a region"):
        resolve_object(brats, "NCR")


# ---- one config per paper -------------------------------------------------------------------------------
def _config(*files: Path, **sources: str) -> dict:
    from snakemake.utils import update_config

    from medseg.plan.check import fill_defaults, validate_config

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for f in files:
        update_config(cfg, yaml.safe_load(f.read_text()))
    for name, source in sources.items():
        cfg["datasets"][name]["source"] = source
    validate_config(cfg)
    return fill_defaults(cfg)


def test_each_seed_config_resolves_its_paper_settings(tmp_path):
    from medseg.pipeline.dag import Workflow

    write_promise12(tmp_path / "p12", 4, 1, size=32)
    write_acdc(tmp_path / "acdc", 4, 1, n_frames=4, size=32)
    runs = {}
    for name, dataset, source in (("promise12_tiramisu3d", "promise12", tmp_path / "p12"),
                                  ("acdc_edpcnn", "acdc", tmp_path / "acdc"),
                                  ("acdc_factorized_unet", "acdc", tmp_path / "acdc"), ("brats_unet3d", "brats", "demo")):
        text = (SEEDS / f"{name}.yaml").read_text()
        assert f"results/{dataset}_{name.split('_', 1)[1]}.json" in text and "source: /path/to/" in text
        cfg = _config(SEEDS / f"{name}.yaml", **{dataset: str(source)})
        plan = Workflow(cfg, str(tmp_path / "results")).plans[dataset]
        runs[name] = (plan, plan.run(name.split("_", 1)[1]))
    plan, run = runs["promise12_tiramisu3d"]
    assert plan.recipe.spacing_mm == (0.6, 0.6, 3.0) and not plan.recipe.steps.n4 and plan.recipe.normalize.method == "zscore"
    assert run.training.patch_size == (16, 64, 64) and run.training.loss == "ce" and run.inference.mode == "constant"
    assert run.model["layers_per_block"] == [7, 8, 9, 12, 15, 16, 17] and run.training.patch3d.fg_fraction == 0.5
    plan, run = runs["acdc_edpcnn"]
    assert plan.recipe.spacing_mm == (1.37, 1.37, None) and plan.recipe.orientation == "LPS"
    assert run.model["object"] == "LV" and run.model["n_points"] == 65 and run.training.context == 0
    assert runs["acdc_factorized_unet"][0].recipe == plan.recipe  # one preprocessing for both ACDC experiments
    assert runs["acdc_factorized_unet"][1].training.loss == "multiclass_iou"
    plan, run = runs["brats_unet3d"]
    assert run.training.loss == "jaccard" and run.training.patch_size == (128, 144, 160) and run.model["norm"] == "batch"
    docs = (REPO / "docs" / "seeds.md").read_text()
    for name in runs:
        assert f"configs/seeds/{name}.yaml" in docs


def test_a_seed_config_left_at_its_placeholder_names_the_key():
    cfg = _config(SEEDS / "promise12_tiramisu3d.yaml")
    with pytest.raises(InputError, match=r"/path/to/PROMISE12 does not exist; set datasets.<name>.source"):
        list_cases("promise12", dict(cfg["datasets"]["promise12"]))


# ---- tiny end-to-end runs ----------------------------------------------------------------------------------
SEED_RUNS = {"promise12_tiramisu3d": "promise12_tiny", "acdc_edpcnn": "acdc_tiny"}


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, dict]:
    """The PROMISE12 and ACDC phantoms run through their seed configs (tiny) in one invocation: one
    working folder, both targets (the two experiments share no job, so they run side by side)."""
    work = tmp_path_factory.mktemp("seeds") / "work"
    write_promise12(work / "data" / "promise12", n_labelled=3, n_unlabelled=1)
    made = write_acdc(work / "data" / "acdc", n_labelled=3, n_unlabelled=1, n_frames=4)
    cfg = [str(REPO / "config.yaml")]
    for seed, tiny in SEED_RUNS.items():
        cfg += [str(SEEDS / f"{seed}.yaml"), str(REPO / "tests/configs/seeds" / f"{tiny}.yaml")]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", *cfg, "--cores", "2", "--show-failed-logs", *[f"results/{s}.json" for s in SEED_RUNS]]
    env = {**os.environ, "MEDSEG_TRACKING": "0"}
    return work, subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env), made


def _same_grid(a: str | Path, b: str | Path) -> bool:
    x, y = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    return (x.GetSize() == y.GetSize() and np.allclose(x.GetSpacing(), y.GetSpacing())
            and np.allclose(x.GetOrigin(), y.GetOrigin()) and np.allclose(x.GetDirection(), y.GetDirection()))


@pytest.mark.slow
def test_promise12_phantom_end_to_end(seed_run):
    """The seed config's recipe and 3-D FC-DenseNet (tiny) on a PROMISE12 folder: the held-out case
    scored, the test case without segmentation predicted on its own MetaImage grid."""
    work, r, _ = seed_run
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    res = json.loads((work / "results/promise12_tiramisu3d.json").read_text())
    assert res["task"] == "promise12" and res["n_cases"] == 1 and list(res["labels"]) == ["prostate"]
    assert np.isfinite(res["labels"]["prostate"]["dice"]["mean"]) and list(res["predicted_only"]) == ["Case03"]
    pred = work / "results/promise12/predictions/tiramisu3d/Case03.nii.gz"
    assert _same_grid(pred, work / "data/promise12/Case03.mhd") and _values(str(pred)) <= {0, 1}


@pytest.mark.slow
def test_acdc_phantom_end_to_end_edpcnn_on_the_lv(seed_run):
    """EDPCNN (tiny) on an ACDC folder with object LV: a held-out patient's ED and ES frames scored,
    the testing patient's frames predicted on their own thick-slice grids, painted with LV's value."""
    import torch

    work, r, made = seed_run
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    res = json.loads((work / "results/acdc_edpcnn.json").read_text())
    assert res["task"] == "acdc" and res["n_cases"] == 2 and sorted(res["labels"]) == ["LV", "MYO", "RV"]
    assert len({c.rsplit("_", 1)[0] for c in res["cases"]}) == 1  # the ED and ES frames of one held-out patient
    assert sorted(res["predicted_only"]) == ["patient101_ED", "patient101_ES"]
    for case in ("patient101_ED", "patient101_ES"):
        pred = work / f"results/acdc/predictions/edpcnn/{case}.nii.gz"
        frame = made["patient101"][case[-2:]]
        assert _same_grid(pred, work / f"data/acdc/testing/patient101/patient101_frame{frame:02d}.nii.gz")
        assert _values(str(pred)) <= {0, 3}
    meta = torch.load(work / "results/acdc/models/edpcnn/fold_0/model.pt", weights_only=True)["meta"]
    assert meta["object"] == "LV" and meta["model_config"]["object_channel"] == 3
