"""The Snakemake workflow: lint, dry runs, and the tiny config end to end (results, MLflow nesting)."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def smk(workdir: Path, *args: str, configs: tuple[str, ...] = (), timeout: int = 900, env: dict | None = None):
    cfg = ["--configfile", str(REPO / "config.yaml"), *[str(REPO / c) for c in configs]]
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *cfg, *args]
    env = {**os.environ, "MEDSEG_TRACKING": "1", **(env or {})}  # the unit tests switch tracking off
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MEDSEG_TRACKING_SPOOL", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_lint_has_no_errors(tmp_path):
    r = smk(tmp_path, "--lint")
    assert r.returncode == 0, r.stdout + r.stderr


def test_snakefmt_clean():
    files = [str(REPO / "Snakefile"), *map(str, sorted((REPO / "workflow" / "rules").glob("*.smk")))]
    r = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("configs", [(), *[(str(p.relative_to(REPO)),) for p in sorted((REPO / "tests/configs").glob("*.yaml"))]])
def test_dry_run_builds_full_dag(tmp_path, configs):
    r = smk(tmp_path, "-n", "--cores", "2", "results/brats_timm.json", configs=configs)
    assert r.returncode == 0, r.stderr[-3000:]
    for rule in ("synth_cohort", "case_sheet", "n4_correct", "register_atlas", "skullstrip_brain",
                 "collect_brain_stats", "fit_normalizer", "normalize_case", "tile_case", "train_model", "predict_case",
                 "evaluate_case", "aggregate_results"):
        assert rule in r.stdout, rule


def _job_counts(out: str) -> dict[str, int]:
    import re

    table = out[out.index("job "):]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    counts.pop("total", None)  # Snakemake's table ends with the sum over rules
    return counts


def test_folds_do_not_multiply_per_case_jobs(tmp_path):
    """3 folds: still one tile job per training case and one normalisation per held-out case."""
    folds = tmp_path / "folds.yaml"
    folds.write_text("datasets:\n  brats:\n    split:\n      n_folds: 3\n      test_fraction: 0.2\n")
    r = smk(tmp_path, "-n", "results/brats_timm.json", "--quiet", "rules", configs=("tests/configs/tiny.yaml",))
    assert r.returncode == 0, r.stderr[-3000:]
    one = _job_counts(r.stdout)
    r = smk(tmp_path, "-n", "results/brats_timm.json", "--quiet", "rules", configs=("tests/configs/tiny.yaml", str(folds)))
    assert r.returncode == 0, r.stderr[-3000:]
    three = _job_counts(r.stdout)
    n_cases = one["n4_correct"]
    assert three["train_model"] == 3 and three["fit_normalizer"] == 3
    assert three["tile_case"] + three["normalize_case"] == n_cases == three["n4_correct"]
    assert three["collect_brain_stats"] == 1 and three["gather_normalizers"] == 1


def test_register_off_has_no_register_jobs_and_reads_n4_outputs(tmp_path):
    """steps.register off: no register job and no copy of any scan; the later stages read n4_*,
    training reads the label map the sheet lists (demo), prediction needs no transform. With
    steps.skullstrip off as well, no skull-stripping job."""
    off = tmp_path / "off.yaml"
    off.write_text("datasets:\n  brats:\n    steps: {register: false}\n")
    r = smk(tmp_path, "-n", "results/brats_timm.json", configs=("tests/configs/tiny.yaml", str(off)))
    assert r.returncode == 0, r.stderr[-3000:]
    counts = _job_counts(r.stdout)
    assert "register_atlas" not in counts and counts["n4_correct"] == counts["skullstrip_brain"] == 5
    import re

    assert not re.search(r"preprocess/\S+/reg\b", r.stdout) and "tfm_atlas" not in r.stdout and "warp_atlas" not in r.stdout
    assert "preprocess/BraTS2021_00000/n4" in r.stdout
    # and skull stripping off too (the BraTS setting): no skull-stripping job either; the
    # normalisers' intensity table is computed from the images
    off.write_text("datasets:\n  brats:\n    steps: {register: false, skullstrip: false}\n")
    r = smk(tmp_path, "-n", "results/brats_timm.json", configs=("tests/configs/tiny.yaml", str(off)))
    assert r.returncode == 0, r.stderr[-3000:]
    counts = _job_counts(r.stdout)
    assert "skullstrip_brain" not in counts and "register_atlas" not in counts and "prepare_atlas" not in counts
    assert "brain_mask" not in r.stdout and "brain_stats.json" in r.stdout  # the table, not per case
    assert counts["n4_correct"] == 5 and counts["collect_brain_stats"] == 1


def test_invalid_config_is_rejected_with_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  steps: -3\n")
    r = smk(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"), str(bad))
    assert r.returncode != 0 and "steps" in (r.stdout + r.stderr)


def test_a_bad_network_setting_fails_a_dry_run_and_stops_a_run_before_any_job(tmp_path):
    """What needs the networks (a timm encoder name, a 3-D patch against the stride) is checked in a
    second process while the DAG is built: a dry run exits 1 naming the key, a run stops before its
    first job; a config once checked is remembered (.snakemake/medseg/checked)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  timm:\n    encoder: resnet18x\n")
    r = smk(tmp_path, "-n", "results/brats_timm.json", configs=(str(bad),))
    assert r.returncode == 1 and "models.timm.encoder must be a timm model name" in r.stderr, r.stderr[-2000:]
    r = smk(tmp_path, "--cores", "1", "results/brats/cases.tsv", configs=(str(bad),))
    assert r.returncode != 0 and "models.timm.encoder" in r.stderr and not (tmp_path / "results/brats").exists()
    good = smk(tmp_path, "-n", "results/brats_timm.json")
    assert good.returncode == 0 and len(list((tmp_path / ".snakemake/medseg/checked").iterdir())) == 1


def test_dry_run_of_the_tissue_task(tmp_path):
    """The second demo (Decathlon layout, one modality, softmax labels, unlabelled cases) through
    the same DAG with the generic recipe: no atlas, no registration, no skull stripping; the
    unlabelled cases are predicted, not evaluated."""
    r = smk(tmp_path, "-n", "results/tissue_timm.json", configs=("tests/configs/tiny.yaml",))
    assert r.returncode == 0, r.stderr[-3000:]
    counts = _job_counts(r.stdout)
    assert not {"register_atlas", "skullstrip_brain", "prepare_atlas"} & set(counts)
    assert counts["n4_correct"] == 6 and counts["predict_case"] == 3 and counts["evaluate_case"] == 2
    assert counts["export_bundle"] == 1


def run_tiny(workdir: Path) -> Path:
    r = smk(workdir, "--cores", "2", "--show-failed-logs", "results/brats_timm.json", configs=("tests/configs/tiny.yaml",))
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    return workdir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return run_tiny(tmp_path_factory.mktemp("tiny"))


def comparable_results(workdir: Path) -> dict:
    """The results JSON without its volatile provenance block, inputs keyed by file name."""
    res = json.loads((workdir / "results/brats_timm.json").read_text())
    res["provenance"].pop("volatile")
    res["provenance"]["inputs"] = {Path(k).name: v for k, v in res["provenance"]["inputs"].items()}
    return res


@pytest.mark.slow
def test_killed_run_finishes_with_rerun_incomplete(tiny_run, tmp_path):
    """kill -9 Snakemake and its jobs during training (after the first checkpoint); --unlock and
    --rerun-incomplete finish the run, training resumes, and the results equal an uninterrupted run's
    byte for byte (the same seed gives the same results: this run started from scratch too), apart
    from the provenance's volatile block."""
    import signal
    import time

    cfg = ["--configfile", str(REPO / "config.yaml"), str(REPO / "tests/configs/tiny.yaml")]
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), *cfg, "--cores", "2",
           "results/brats_timm.json"]
    env = {**os.environ, "MEDSEG_TRACKING": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    ckpt = tmp_path / "results/brats/models/timm/fold_0/checkpoint.pt"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ckpt.exists(), "training never wrote its first checkpoint"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
        proc.wait()
    assert not (tmp_path / "results/brats_timm.json").exists()
    assert smk(tmp_path, "--unlock").returncode == 0
    r = smk(tmp_path, "--cores", "2", "--rerun-incomplete", "results/brats_timm.json", configs=("tests/configs/tiny.yaml",))
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    assert "resuming from" in (tmp_path / "results/brats/logs/train_model/timm_0.log").read_text()
    assert comparable_results(tmp_path) == comparable_results(tiny_run)
    assert (tiny_run / "results/brats_timm_cases.csv").read_bytes() == (tmp_path / "results/brats_timm_cases.csv").read_bytes()


@pytest.mark.slow
def test_bad_training_case_is_left_out_and_the_rest_finishes(tiny_run, tmp_path):
    """A dataset in the BraTS 2021 layout (the tiny run's scans; register and skull stripping off,
    as for BraTS) with one training scan cut short.
    The dry run, before the case sheet exists, still shows that case's jobs; the run finds the
    damage in the case sheet, leaves the case out (bad_cases: skip), trains, predicts and
    evaluates every other case, exits 0, and the results JSON names the case, file and problem."""
    import shutil

    from medseg.cohort.listing import list_cases

    data = tmp_path / "BraTS2021"
    shutil.copytree(tiny_run / "results/brats/demo/images", data)
    split = {"test_fraction": 0.4, "val_fraction": 0.34, "n_folds": 1, "seed": 0}  # tests/configs/tiny.yaml
    full = list_cases("brats", {"source": str(data), "split": split})
    bad = full.train_cases(0)[0]
    t1 = data / bad / f"{bad}_t1.nii.gz"
    t1.write_bytes(t1.read_bytes()[: t1.stat().st_size // 2])
    cfg = tmp_path / "real.yaml"
    # the BraTS setting: the stages after N4 read n4_* and the source label maps directly, and
    # the brain is the nonzero voxels (no register or skull-stripping job)
    cfg.write_text(f"datasets:\n  brats:\n    source: {data}\n    steps: {{register: false, skullstrip: false}}\n")
    work = tmp_path / "work"
    configs = ("tests/configs/tiny.yaml", str(cfg))
    dry = smk(work, "-n", "results/brats_timm.json", "--quiet", "rules", configs=configs)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert _job_counts(dry.stdout)["n4_correct"] == len(full.cases)
    r = smk(work, "--cores", "2", "results/brats_timm.json", configs=configs)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    res = json.loads((work / "results/brats_timm.json").read_text())
    assert list(res["excluded_cases"]) == [bad]
    assert f"case {bad!r}, file {t1}" in res["excluded_cases"][bad]
    assert "truncated gzip data" in res["excluded_cases"][bad]
    assert sorted(res["cases"]) == sorted(full.test_cases()) and res["n_cases"] == len(full.test_cases())
    norm = json.loads((work / "results/brats/normalizer_0.json").read_text())
    assert bad not in norm["cases"] and norm["cases"]
    assert not (work / f"results/brats/preprocess/{bad}").exists()  # its jobs left the DAG: nothing half-done
    assert not list((work / "results/brats/preprocess").rglob("reg"))
    assert not list((work / "results/brats/preprocess").rglob("brain_*"))
    assert set(json.loads((work / "results/brats/brain_stats.json").read_text())) == set(full.trained_cases()) - {bad}
    import SimpleITK as sitk

    case = res["cases"][0]
    pred = sitk.ReadImage(str(work / f"results/brats/predictions/timm/{case}.nii.gz"))
    ref = sitk.ReadImage(str(data / case / f"{case}_t1ce.nii.gz"))
    assert pred.GetSize() == ref.GetSize() and pred.GetOrigin() == ref.GetOrigin()
    assert "left out of training and evaluation" in (work / "results/brats/logs/case_sheet.log").read_text()
    # what reruns when (issue 14): a replaced reference label map reruns that case's evaluation only,
    # and a fixed file brings its case back through the case sheet
    seg = data / case / f"{case}_seg.nii.gz"
    metrics = work / f"results/brats/metrics/timm/{case}.json"
    before = json.loads(metrics.read_text())["regions"]["WT"]["ref_volume_ml"]
    kept = [work / "results/brats/models/timm/fold_0/model.pt", work / f"results/brats/preprocess/{case}/n4_qc.json"]
    stamps = [p.stat().st_mtime_ns for p in kept]
    img = sitk.ReadImage(str(seg))
    arr = sitk.GetArrayFromImage(img)
    arr[tuple(np.argwhere(arr == 0)[0])] = 2  # a corrected reference: one voxel more oedema
    fixed = sitk.GetImageFromArray(arr)
    fixed.CopyInformation(img)
    sitk.WriteImage(fixed, str(seg))
    r = smk(work, "--cores", "2", "results/brats_timm.json", configs=configs)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    after = json.loads(metrics.read_text())["regions"]["WT"]["ref_volume_ml"]
    assert after == pytest.approx(before + np.prod(img.GetSpacing()) / 1000)  # scored against the new map
    assert [p.stat().st_mtime_ns for p in kept] == stamps  # nothing else reran: no retraining, no N4
    shutil.copy(tiny_run / f"results/brats/demo/images/{bad}/{bad}_t1.nii.gz", t1)
    dry = smk(work, "-n", "results/brats_timm.json", "--quiet", "rules", configs=configs)
    assert _job_counts(dry.stdout).get("case_sheet") == 1, dry.stdout  # ... which brings the case back:
    r = smk(work, "--cores", "2", "results/brats/cases.tsv", configs=configs)  # the sheet finds it whole,
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    rows = {row["case_id"]: row for row in csv.DictReader((work / "results/brats/cases.tsv").open(), delimiter="\t")}
    assert rows[bad]["problem"] == "" and rows[bad]["split"] == "train"
    dry = smk(work, "-n", "results/brats_timm.json", "--quiet", "rules", configs=configs)
    counts = _job_counts(dry.stdout)  # and its jobs join the DAG: its N4 and tiles, a new normaliser and training
    assert counts["n4_correct"] == 1 and counts["tile_case"] >= 1 and counts["train_model"] == 1, dry.stdout


@pytest.mark.slow
def test_tiny_config_end_to_end(tiny_run):
    tmp_path = tiny_run
    res = json.loads((tmp_path / "results/brats_timm.json").read_text())
    assert res["n_cases"] == 2
    for region in ("WT", "TC", "ET"):
        for metric in ("dice", "hd95"):
            summary = res["regions"][region][metric]
            assert math.isfinite(summary["mean"]) and len(summary["values"]) == 2
    prov = res["provenance"]
    assert prov["config_hash"] and prov["inputs"] and prov["seeds"]["training"] == 0
    assert (tmp_path / "results/brats_timm_cases.csv").exists()
    assert (tmp_path / "results/brats_timm_boxplots.png").exists()
    # predictions are on the native grid of the input
    import SimpleITK as sitk

    case = res["cases"][0]
    pred = sitk.ReadImage(str(tmp_path / f"results/brats/predictions/timm/{case}.nii.gz"))
    ref = sitk.ReadImage(str(tmp_path / f"results/brats/demo/images/{case}/{case}_t1ce.nii.gz"))
    assert pred.GetSize() == ref.GetSize() and pred.GetDirection() == ref.GetDirection()
    # normaliser fitted on training cases only
    norm = json.loads((tmp_path / "results/brats/normalizer_0.json").read_text())
    assert not set(norm["cases"]) & set(res["cases"])
    # the results explain themselves: split of every case, model, config, scan checksums (schema 4)
    assert res["schema_version"] == 4 and res["dataset"] == "brats" and res["config"]["training"]["steps"] == 12
    assert {res["splits"][c]["split"] for c in res["cases"]} == {"test"} and len(res["splits"]) == 5
    assert res["model"]["encoder"] == "resnet10t" and res["model"]["n_parameters"] > 0
    assert set(res["source_scans"]) == set(res["cases"]) and "seg" in res["source_scans"][case]
    assert (tmp_path / "results/brats_timm_summary.html").exists()
    # one plan: results/brats/plan.json, carried unchanged by the bundle, is what the jobs ran with
    plan = json.loads((tmp_path / "results/brats/plan.json").read_text())
    assert plan == json.loads((tmp_path / "results/brats/bundles/timm/plan.json").read_text())
    assert plan["recipe"]["skullstrip"]["method"] == "deepbet" and plan["task"]["preset"] == "brats2021"
    assert plan["runs"]["timm"]["training"]["steps"] == 12 and plan["runs"]["timm"]["training"]["loss"] == "dice_bce"
    assert plan["runs"]["unet3d"]["inference"]["patch_size"] == [16, 24, 24]


@pytest.mark.slow
def test_tiny_run_in_mlflow(tiny_run, monkeypatch, tmp_path):
    """The demo's mlflow.db as a user opens it (MLflow client in the project folder, like `mlflow ui`):
    one parent run named after target and dataset with the config, git commit and test scores; every job's run nested under it; training curves and system
    metrics; the bundle as an MLflow model that loads and predicts a case as the workflow did."""
    import mlflow
    import nibabel as nib
    import yaml
    from mlflow.tracking import MlflowClient

    res = json.loads((tiny_run / "results/brats_timm.json").read_text())
    monkeypatch.chdir(tiny_run)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    # MLflow caches one store per URI string, and the URI set by an earlier set_tracking_uri, for the
    # life of the process: the relative URI a user's `mlflow ui` uses would reach the store an earlier
    # test opened in another folder (test_tracking)
    uri = f"sqlite:///{tiny_run / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("medseg-brats")
    assert exp.artifact_location == f"mlartifacts/{exp.experiment_id}"  # relative: the project can move
    runs = client.search_runs([exp.experiment_id], max_results=500)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r is not parent]
    n_jobs = sum(1 for _ in (tiny_run / "results/brats/logs").rglob("*.log")) + 1  # + prepare_atlas (shared)
    assert len(children) == n_jobs and {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert parent.info.run_name == "results/brats_timm.json · brats"
    assert len(parent.data.tags["mlflow.source.git.commit"]) == 40
    for region in ("WT", "TC", "ET"):
        assert parent.data.metrics[f"test/timm/dice_{region}"] == pytest.approx(res["regions"][region]["dice"]["mean"])
        assert parent.data.metrics[f"test/timm/hd95_{region}"] == pytest.approx(res["regions"][region]["hd95"]["mean"])
    config = yaml.safe_load(open(client.download_artifacts(parent.info.run_id, "config.yaml", str(tmp_path))))
    assert config["training"]["steps"] == 12 and parent.data.params["training.steps"] == "12"
    by_name = {r.info.run_name: r for r in children}
    train = by_name["train_model:brats:timm:0"]
    assert [m.step for m in client.get_metric_history(train.info.run_id, "val/dice_mean")] == [6, 12]  # each validation
    assert client.get_metric_history(train.info.run_id, "system/cpu_utilization_percentage")
    assert by_name["aggregate_results:brats:timm"].data.metrics["test/dice_WT"] == pytest.approx(res["regions"]["WT"]["dice"]["mean"])
    model = mlflow.pyfunc.load_model("models:/brats_timm/latest")  # registered as <dataset>_<model>
    case = res["cases"][0]
    scans = {m: str(tiny_run / f"results/brats/demo/images/{case}/{case}_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")}
    out = model.predict({"case": case, **scans})  # the label map (NIfTI voxel order) with its affine
    expected = nib.load(tiny_run / f"results/brats/predictions/timm/{case}.nii.gz")
    assert np.array_equal(out.loc[0, "labels"], np.asarray(expected.dataobj))
    assert np.allclose(out.loc[0, "affine"], expected.affine) and out.loc[0, "case"] == case
    assert not list((tiny_run / ".medseg/tracking").glob("run-*.json"))


@pytest.mark.slow
def test_report_describes_the_workflow_and_shows_the_results_table(tiny_run, tmp_path):
    """`snakemake --report` after the run, with no target: it builds, its landing page describes exactly
    what was run (brats with timm, not the config's other datasets), the results come first (table,
    plots), training curves next, QC grouped per case; rendered in headless Chromium when it is
    installed (the DOM then holds the description and the results table)."""
    import re
    import shutil

    out = tmp_path / "report.html"
    r = smk(tiny_run, "--report", str(out), configs=("tests/configs/tiny.yaml",))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    page = out.read_text()
    text = " ".join(page.replace("\\n", " ").split())  # the description sits in a JS string, its line breaks as \n
    assert "medical image segmentation from raw scans to scored results" in text
    assert "1 dataset(s) (brats) with 1 model(s) (timm): brats: timm" in text
    cats = json.loads(re.search(r"var categories = (\{.*?\});\n", page).group(1))
    assert sorted(cats) == ["1. Results", "2. Training", "3. Quality control", "4. Plan"]
    assert "results/brats_timm_summary.html" in cats["1. Results"]["brats: timm"]
    assert "results/brats/plan.json" in cats["4. Plan"]["brats"]
    assert len(cats["3. Quality control"]) == 5  # one group per case: N4, registration, brain mask
    assert all(len(files) == 3 for files in cats["3. Quality control"].values())
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return
    # open the results category as a click on it would; the description stays in the main panel
    js = "<script>setTimeout(function(){app.showCategory('1. Results');}, 300);</script>"
    i = page.rindex("</body>")
    (tmp_path / "click.html").write_text(page[:i] + js + page[i:])
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=10000", "--dump-dom",
                          (tmp_path / "click.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert re.search(r"<h1[^>]*>medseg: medical image segmentation", dom)  # rendered, not only a JS string
    assert "1. results table" in dom and "2. box plots" in dom


@pytest.mark.slow
def test_readme_subset_commands_touch_the_default_dataset_only(tiny_run):
    """The README's subset commands after a run: `--forcerun predict_case` redoes inference (and what
    depends on it) of the default dataset only; `--until train_model` plans nothing beyond training."""
    r = smk(tiny_run, "-n", "--cores", "2", "--forcerun", "predict_case", configs=("tests/configs/tiny.yaml",))
    assert r.returncode == 0, r.stderr[-3000:]
    counts = _job_counts(r.stdout)
    assert counts["predict_case"] == 2 and set(counts) <= {"predict_case", "evaluate_case", "aggregate_results", "all"}
    r = smk(tiny_run, "-n", "--cores", "2", "--until", "train_model", configs=("tests/configs/tiny.yaml",))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Nothing to be done" in r.stdout + r.stderr or not set(_job_counts(r.stdout)) - {"train_model"}


def _msd_folder(root: Path, n_cases: int = 6, n_unlabelled: int = 1) -> Path:
    """A small Decathlon folder of real-looking T1 heads (the tissue generator, 3 mm)."""
    from medseg.cohort.synth_tissue import TissueSynthConfig, generate_tissue_cohort

    cfg = TissueSynthConfig(n_cases=n_cases, n_unlabelled=n_unlabelled, seed=5, spacing_mm=(3.0, 3.0, 4.0))
    return generate_tissue_cohort(cfg, root)


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "msd", "nnunet"])
def test_dry_run_on_each_layout(tmp_path, layout):
    """A dataset folder in each layout is enough: the DAG is built from it (folder listings and
    dataset.json only), with the task it declares."""
    import shutil

    from test_cohort import make_case

    data = tmp_path / "data"
    if layout.startswith("brats"):
        for i in range(5):
            make_case(data, f"C-{i:03d}", layout, (0, 1, 2, 4) if layout == "brats2021" else (0, 1, 2, 3))
        expect = {"n4_correct": 5, "register_atlas": 5}
    else:
        msd = _msd_folder(tmp_path / "msd", n_cases=5)
        if layout == "msd":
            data = msd
        else:  # the same scans as an nnU-Net v2 raw folder
            for sub, files in (("imagesTr", "imagesTr"), ("imagesTs", "imagesTs")):
                (data / sub).mkdir(parents=True)
                for f in sorted((msd / files).iterdir()):
                    shutil.copy(f, data / sub / f.name.replace(".nii.gz", "_0000.nii.gz"))
            shutil.copytree(msd / "labelsTr", data / "labelsTr")
            (data / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "file_ending": ".nii.gz",
                                                           "labels": {"background": 0, "CSF": 1, "GM": 2, "WM": 3}}))
        expect = {"n4_correct": 5, "predict_case": 3}  # 2 labelled test cases + 1 unlabelled
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"datasets:\n  mine:\n    source: {data}\n    split: {{test_fraction: 0.5, val_fraction: 0.5}}\n")
    r = smk(tmp_path / "work", "-n", "results/mine_timm.json", "--quiet", "rules", configs=("tests/configs/tiny.yaml", str(cfg)))
    assert r.returncode == 0, r.stderr[-3000:]
    counts = _job_counts(r.stdout)
    for rule, n in expect.items():
        assert counts.get(rule) == n, (rule, counts)
    if not layout.startswith("brats"):
        assert "register_atlas" not in counts and "skullstrip_brain" not in counts  # the generic recipe


@pytest.mark.slow
def test_decathlon_folder_end_to_end_and_bundle_prediction(tmp_path):
    """A Decathlon folder (one modality, softmax labels CSF/GM/WM, an unlabelled case in imagesTs)
    end to end: per-label Dice and HD95 of the held-out labelled cases, the unlabelled case predicted
    on its native grid (same affine and shape as the input) in the task's label values; then
    `medseg predict` on that raw case with the model bundle equals the workflow's label map."""
    import SimpleITK as sitk

    data = _msd_folder(tmp_path / "Task_tissue")
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"datasets:\n  tissue:\n    source: {data}\n    spacing_mm: [3.0, 3.0, 3.0]\n"
                   "    split: {test_fraction: 0.34, val_fraction: 0.34, seed: 0}\n")
    r = smk(tmp_path / "work", "--cores", "2", "--show-failed-logs", "results/tissue_timm.json",
            configs=("tests/configs/tiny.yaml", str(cfg)))
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    work = tmp_path / "work"
    res = json.loads((work / "results/tissue_timm.json").read_text())
    assert res["task"] == "tissue" and res["n_cases"] == 2 and res["regions"] == {}
    for label in ("CSF", "GM", "WM"):
        for metric in ("dice", "hd95"):
            assert len(res["labels"][label][metric]["values"]) == 2
    assert list(res["predicted_only"]) == ["tissue_005"]
    src = data / "imagesTs/tissue_005.nii.gz"
    pred_path = work / "results/tissue/predictions/timm/tissue_005.nii.gz"
    pred, ref = sitk.ReadImage(str(pred_path)), sitk.ReadImage(str(src))
    assert pred.GetSize() == ref.GetSize() and pred.GetOrigin() == ref.GetOrigin()
    assert pred.GetDirection() == ref.GetDirection() and pred.GetSpacing() == ref.GetSpacing()
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}
    out = tmp_path / "bundle_pred.nii.gz"
    cli = subprocess.run([sys.executable, "-m", "medseg.cli", "predict", "-i", str(src), "-m",
                          str(work / "results/tissue/bundles/timm"), "-o", str(out)], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(pred))


@pytest.mark.slow
def test_3d_models_end_to_end(tiny_run, tmp_path):
    """The seed 3-D networks as model keys: the tiny DAG's preprocessing and tiles, then 3-D
    training, stitched 3-D inference and evaluation for results/brats_<model>.json."""
    import shutil

    work = tmp_path / "w"
    shutil.copytree(tiny_run, work, symlinks=True)  # copy2 keeps mtimes: preprocessing is not redone
    models = ("unet3d", "tiramisu3d", "factorized_unet")
    r = smk(work, "--cores", "2", "--show-failed-logs", *[f"results/brats_{m}.json" for m in models],
            configs=("tests/configs/tiny.yaml",))
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    assert "rule tile_case:" not in r.stdout + r.stderr  # the 2.5-D model's tiles serve the 3-D models
    import torch

    for m in models:
        res = json.loads((work / f"results/brats_{m}.json").read_text())
        assert res["n_cases"] == 2 and all(math.isfinite(res["regions"][g]["dice"]["mean"]) for g in ("WT", "TC", "ET"))
        meta = torch.load(work / f"results/brats/models/{m}/fold_0/model.pt", weights_only=True)["meta"]
        assert meta["model_config"]["arch"] == m and meta["context"] == 0
        assert meta["loss"] == {"unet3d": "jaccard", "factorized_unet": "multiclass_iou"}.get(m, "dice_bce")


def test_workflow_is_a_module_of_another_workflow(tmp_path):
    """A host Snakefile elsewhere uses medseg as a Snakemake module, with medseg not importable from
    its Python (no editable install on the path): the module finds its own src/ and dry-runs."""
    import shutil

    mod = tmp_path / "medseg_module"
    mod.mkdir()
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, mod / name)
    for name in ("workflow", "src", "envs"):
        shutil.copytree(REPO / name, mod / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    host = tmp_path / "host"
    host.mkdir()
    (host / "Snakefile").write_text(
        f'configfile: "{mod / "config.yaml"}"\n\n\nmodule medseg:\n    snakefile:\n        "{mod / "Snakefile"}"\n'
        '    config:\n        config\n\n\nuse rule * from medseg as medseg_*\n\n\n'
        'rule all:\n    input:\n        "results/brats_timm.json",\n')
    runner = ("import importlib.util, sys\n"
              f"sys.path = [p for p in sys.path if p != {str(REPO / 'src')!r}]\n"
              "assert importlib.util.find_spec('medseg') is None, 'medseg importable: the test would prove nothing'\n"
              "from snakemake.cli import main\nsys.argv = ['snakemake', *sys.argv[1:]]\nmain()\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", runner, "-n", "--cores", "2", "--quiet", "rules"], cwd=host,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "medseg_train_model" in r.stdout and "medseg_n4_correct" in r.stdout


def test_loading_the_workflow_imports_nothing_heavy(tmp_path):
    """What common.smk runs at load (validate, fill defaults, every dataset's listing and plan) imports no
    torch, timm, scipy, pandas or matplotlib: the 1,000-case dry run stays light (benchmarks/bench_dag.py);
    the network check that needs torch runs in a second process. (SimpleITK may load: an unregistered
    dataset's plan reads one scan header to fit 3-D windows to its grid.)"""
    code = (
        "import sys, yaml\n"
        "from medseg.pipeline.dag import Workflow\n"
        "from medseg.plan.check import fill_defaults, validate_config\n"
        f"config = yaml.safe_load(open({str(REPO / 'config.yaml')!r}))\n"
        "validate_config(config); fill_defaults(config); Workflow(config, 'results')\n"
        "heavy = {'torch', 'timm', 'scipy', 'pandas', 'matplotlib'} & set(sys.modules)\n"
        "print(sorted(heavy))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]", r.stdout


def test_input_functions_carry_their_parameters_for_snakemake():
    """record_signatures: Snakemake finds every input/params function's parameters on the function (its
    overwrite_function_params attribute) instead of calling inspect.signature at every call; a bound method
    gets its bound signature (no ``self``), a string input is left alone."""
    from snakemake.common import FUNC_OVERWRITE_PARAMS_ATTR, get_function_params

    from medseg.pipeline.dag import record_signatures

    class Inputs:
        def case_files(self, wildcards):
            return []

    def stats(wildcards, input):
        return []

    class Rule:
        input = ["results/{dataset}/cases.tsv", Inputs().case_files]
        params = [stats]

    assert record_signatures([Rule]) == 2
    for func in (Rule.input[1], stats):
        assert hasattr(func, FUNC_OVERWRITE_PARAMS_ATTR)
    assert list(get_function_params(Rule.input[1])) == ["wildcards"]
    assert list(get_function_params(stats)) == ["wildcards", "input"]
    assert record_signatures([Rule]) == 0  # already recorded
