"""Tracking: jobs spool run records; sync logs them nested under the invocation; failures lose nothing;
the bundle is an MLflow model named <dataset>_<model>, registered, with its test scores; invocations
compare side by side; a store created by two processes at once is created once."""
import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from medseg import tracking
from medseg.tracking import sync as tracking_sync


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An initialised, empty MLflow SQLite store (creating its tables takes ~10 s: once per module)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def spool(tmp_path, monkeypatch, empty_store):
    import shutil

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MEDSEG_TRACKING", "1")
    monkeypatch.setenv(tracking.SPOOL_ENV, str(tmp_path / "spool"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)  # artifacts of a store without a root (./mlruns) stay here
    return tmp_path


def _job(i: int) -> None:
    with tracking.job_run("medseg-test", f"job{i}", {"i": str(i)}):
        tracking.log_params({"a": {"b": i}, "lr": 0.1})
        for step in range(20):
            tracking.log_metrics({"loss": 1.0 / (step + 1)}, step=step)


def _runs(uri):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("medseg-test")
    return c, c.search_runs([exp.experiment_id], max_results=1000)


def test_eight_concurrent_jobs_lose_nothing(spool):
    tracking.start_invocation("snakemake")
    with mp.get_context("spawn").Pool(8) as pool:
        pool.map(_job, range(8))
    tracking.end_invocation("FINISHED")
    assert tracking_sync.sync() == {"runs": 8, "failed": 0}
    client, runs = _runs(os.environ["MLFLOW_TRACKING_URI"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert parents[0].info.status == "FINISHED"
    for r in children:
        assert r.data.params["a.b"] == r.data.tags["i"] and r.data.params["lr"] == "0.1"
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 20
        assert r.info.status == "FINISHED"
    assert not list((spool / "spool").glob("run-*.json"))


def test_failed_job_is_recorded_failed(spool):
    with pytest.raises(RuntimeError):
        with tracking.job_run("medseg-test", "boom"):
            raise RuntimeError("boom")
    tracking_sync.sync()
    _, runs = _runs(os.environ["MLFLOW_TRACKING_URI"])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_unreachable_store_keeps_records(spool, monkeypatch, caplog):
    readonly = spool / "ro"
    readonly.mkdir()
    (readonly / "mlflow.db").write_text("not a database")  # every access fails
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{readonly / 'mlflow.db'}")
    _job(0)
    result = tracking_sync.sync()
    assert result == {"runs": 0, "failed": 1}
    assert "tracking failed" in caplog.text
    assert len(list((spool / "spool").glob("run-*.json"))) == 1
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{spool / 'mlflow.db'}")  # store back: the retry logs it
    assert tracking_sync.sync() == {"runs": 1, "failed": 0}


def test_disabled_tracking_writes_nothing(spool, monkeypatch):
    monkeypatch.setenv("MEDSEG_TRACKING", "0")
    _job(0)
    assert not (spool / "spool").exists() or not list((spool / "spool").iterdir())


def test_record_is_plain_json(spool):
    _job(3)
    rec = json.loads(next((spool / "spool").glob("run-*.json")).read_text())
    assert rec["name"] == "job3" and rec["status"] == "FINISHED" and len(rec["metrics"]) == 20


class _FakeSnakemake:
    """What a Snakemake script job sees: rule, wildcards, input, params, log, threads, config."""

    def __init__(self, tmp_path, config):
        try:
            from snakemake.iocontainers import InputFiles, Log, Params, Wildcards  # Snakemake >= 9.26
        except ImportError:
            from snakemake.io import InputFiles, Log, Params, Wildcards

        self.rule = "n4_correct"
        self.wildcards = Wildcards(fromdict={"dataset": "brats", "case": "BraTS2021_00001"})
        a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
        a.write_bytes(b"first input")
        b.write_bytes(b"second input")
        self.input = InputFiles([str(a), str(b)])
        self.params = Params(fromdict={"experiment": "medseg-test", "n4": {"shrink_factor": 4}})
        self.log = Log([str(tmp_path / "job.log")])
        self.threads = 1
        self.config = config


def test_job_run_records_provenance(spool):
    """Every job's MLflow run: config hash, git state, package versions, seeds, input checksums, rule, wildcards."""
    from medseg.io import sha256
    from medseg.pipeline.job import job
    from medseg.tracking.provenance import config_hash, digest

    config = {"training": {"seed": 7}, "datasets": {"brats": {"source": "demo", "demo": {"seed": 42}, "split": {"seed": 3}}}}
    smk = _FakeSnakemake(spool, config)
    with job(smk) as p:
        assert p == {"n4": {"shrink_factor": 4}}
    assert tracking_sync.sync() == {"runs": 1, "failed": 0}
    client, runs = _runs(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = runs
    tags = run.data.tags
    assert tags["medseg.rule"] == "n4_correct" and tags["wildcard.case"] == "BraTS2021_00001"
    assert tags["config.hash"] == config_hash(config)
    assert tags["seed.training"] == "7" and tags["seed.brats.split"] == "3" and tags["seed.brats.demo"] == "42"
    assert tags["git.commit"] and tags["git.dirty"] in ("True", "False") and tags["package.numpy"] not in ("", "None")
    sums = {f: sha256(f) for f in smk.input}
    assert tags["inputs.sha256"] == digest(sums) and tags["inputs.count"] == "2"
    prov = json.loads(open(client.download_artifacts(run.info.run_id, "provenance.json")).read())
    assert prov["inputs"] == sums and prov["rule"] == "n4_correct" and prov["config_hash"] == config_hash(config)
    assert run.data.params["n4.shrink_factor"] == "4"


def test_live_sync_parent_per_dataset_and_relative_artifacts(spool, monkeypatch):
    """Default store (sqlite:///mlflow.db in the working directory): a running job's metrics are in
    MLflow before it ends; one parent per invocation named after targets and dataset, with the
    config and the test scores; a shared job (other experiment) nested under it; artifact
    locations relative to the project, so a moved project keeps them; psutil system metrics."""
    import shutil

    from mlflow.tracking import MlflowClient

    proj = spool / "proj"
    proj.mkdir()
    shutil.copyfile(spool / "mlflow.db", proj / "mlflow.db")
    monkeypatch.chdir(proj)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv(tracking.SPOOL_ENV, str(proj / ".medseg/tracking"))
    monkeypatch.setenv(tracking.FLUSH_ENV, "1000")
    tracking.start_invocation("results/brats_timm.json", {"mlflow.source.git.commit": "abc"},
                              config={"training": {"steps": 3}}, experiments={"brats": "medseg-brats"})
    with tracking.job_run("medseg-atlas", "prepare_atlas"):
        pass
    with tracking.job_run("medseg-brats", "train_model:brats:timm:0", system_metrics=True):
        tracking.log_metrics({"loss": 1.0}, step=1)
        tracking.log_metrics({"loss": 0.5, "dice_mean": 0.2}, step=2)  # a validation: flushed at once
        assert tracking_sync.sync()["runs"] == 1  # the atlas run completes; training is live
        client = MlflowClient()
        exp = client.get_experiment_by_name("medseg-brats")
        (live,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'train_model:brats:timm:0'")
        assert live.info.status == "RUNNING" and live.data.metrics["dice_mean"] == 0.2
    with tracking.job_run("medseg-brats", "aggregate_results:brats:timm"):
        tracking.log_test_scores("brats", "timm", {"dice_WT": 0.8}, 2)
    tracking.end_invocation("FINISHED")
    assert tracking_sync.sync() == {"runs": 2, "failed": 0}
    assert client.get_experiment_by_name("medseg-atlas") is None
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "results/brats_timm.json · brats" and parent.info.status == "FINISHED"
    assert parent.data.metrics == {"test/timm/dice_WT": 0.8, "test/timm/n_cases": 2} and parent.data.params["training.steps"] == "3"
    assert parent.data.tags["mlflow.source.git.commit"] == "abc"
    assert {r.data.tags.get("mlflow.parentRunId") for r in runs if r is not parent} == {parent.info.run_id}
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    train = next(r for r in runs if r.info.run_name.startswith("train_model"))
    assert client.get_metric_history(train.info.run_id, "system/cpu_utilization_percentage")
    assert exp.artifact_location == "mlartifacts/" + exp.experiment_id
    moved = spool / "moved"
    shutil.move(proj, moved)
    monkeypatch.chdir(moved)
    cfg = MlflowClient().download_artifacts(parent.info.run_id, "config.yaml", str(spool))
    assert "steps: 3" in open(cfg).read()


def test_killed_invocation_is_closed_by_the_next(spool):
    """Snakemake killed mid-job: the next invocation closes the old parent run and the job's run as KILLED."""
    tracking.start_invocation("first", experiments={"brats": "medseg-test"})
    tracking._current = None
    with pytest.raises(KeyboardInterrupt):
        with tracking.job_run("medseg-test", "train"):
            tracking.log_metrics({"loss": 1.0}, step=1)
            tracking_sync.sync()  # the live run is in MLflow
            rec = next((spool / "spool").glob("run-*.json"))
            frozen = rec.read_text()
            raise KeyboardInterrupt
    rec.write_text(frozen)  # kill -9: the record never got its final state
    tracking.start_invocation("second", experiments={"brats": "medseg-test"})
    assert tracking_sync.sync()["failed"] == 0
    _, runs = _runs(os.environ["MLFLOW_TRACKING_URI"])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [("first · brats", "KILLED"), ("train", "KILLED")]
    assert not list((spool / "spool").glob("run-*.json"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A bundle of a brats plan (weights and normalisers are stand-ins: it is logged, not run)."""
    from medseg.inference.bundle import export_bundle
    from medseg.plan.check import fill_defaults
    from medseg.plan.resolved import resolve_plan
    from medseg.tasks.presets import brats_task

    cfg = fill_defaults({"datasets": {"brats": {"source": "demo"}}, "models": {"timm": {"arch": "timm_unet"}}})
    plan = resolve_plan(cfg, "brats", brats_task("brats", "2021"))
    d = tmp_path_factory.mktemp("bundle")
    (d / "normalizers.json").write_text("{}")
    (d / "model.pt").write_bytes(b"weights")
    return export_bundle(d / "bundles" / "timm", plan, "timm", d / "normalizers.json", [d / "model.pt"])


def _export_and_aggregate(bundle, scores: dict, n_cases: int = 3) -> None:
    with tracking.job_run("medseg-test", "export_bundle:brats:timm"):
        tracking.log_model_bundle(bundle, "brats", "timm")
    with tracking.job_run("medseg-test", "aggregate_results:brats:timm"):
        tracking.log_test_scores("brats", "timm", scores, n_cases, results="results/brats_timm.json",
                                 structures=["WT", "TC", "ET"])


def test_bundle_is_a_registered_model_with_signature_example_and_test_scores(spool, bundle):
    """The bundle: MLflow model brats_timm (signature: a path per modality, label map and affine out, the
    output_dir param; an input example), registered under that name; the aggregation's test scores are
    the model's metrics; the parent run shows them per model and describes them."""
    import mlflow
    from mlflow.tracking import MlflowClient

    scores = {"dice_ET": 0.6, "dice_TC": 0.7, "dice_WT": 0.8, "dice_label_NCR": 0.5, "hd95_WT": 4.0}  # as results are sorted
    tracking.start_invocation("results/brats_timm.json", experiments={"brats": "medseg-test"})
    _export_and_aggregate(bundle, scores)
    tracking.end_invocation("FINISHED")
    assert tracking_sync.sync() == {"runs": 2, "failed": 0}
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("medseg-test")
    (model,) = client.search_logged_models([exp.experiment_id], filter_string="name = 'brats_timm'")
    assert {m.key: m.value for m in model.metrics} == {**{f"test/{k}": v for k, v in scores.items()}, "test/n_cases": 3}
    assert model.params["modalities"] == "t1,t1ce,t2,flair" and model.params["dataset"] == "brats"
    info = mlflow.models.get_model_info(f"models:/{model.model_id}")
    sig = info.signature
    assert [(c.name, c.required) for c in sig.inputs.inputs] == [("case", False), *((m, True) for m in ("t1", "t1ce", "t2", "flair"))]
    assert [c.name for c in sig.outputs.inputs] == ["case", "labels", "affine", "path"]
    assert [(p.name, p.default) for p in sig.params.params] == [("output_dir", "")]
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    (version,) = client.search_model_versions("name = 'brats_timm'")
    assert version.source == f"models:/{model.model_id}"
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": "brats_timm", "version": version.version}]
    assert "models:/brats_timm/latest" in client.get_registered_model("brats_timm").description
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    export, agg = (client.get_run(runs[n].info.run_id) for n in ("export_bundle:brats:timm", "aggregate_results:brats:timm"))
    assert [o.model_id for o in export.outputs.model_outputs] == [model.model_id] == [i.model_id for i in agg.inputs.model_inputs]
    assert agg.data.metrics["test/dice_WT"] == 0.8 and agg.data.metrics["test/n_cases"] == 3
    parent = runs["results/brats_timm.json · brats"]
    assert parent.data.metrics["test/timm/dice_WT"] == 0.8 and parent.data.metrics["test/timm/hd95_WT"] == 4.0
    note = parent.data.tags["mlflow.note.content"]
    # the task's order of regions, labels left out where regions are scored
    assert "- **timm** (3 test cases): Dice WT 0.800 · TC 0.700 · ET 0.600; HD95 WT 4.0 mm\n" in note
    assert "results `results/brats_timm.json`" in note and 'load_model("models:/brats_timm/latest")' in note


def test_register_model_false_logs_the_model_without_registering_it(spool, bundle):
    from mlflow.tracking import MlflowClient

    tracking.start_invocation("t", experiments={"brats": "medseg-test"}, register_model=False)
    _export_and_aggregate(bundle, {"dice_WT": 0.8})
    tracking.end_invocation("FINISHED")
    assert tracking_sync.sync() == {"runs": 2, "failed": 0}
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("medseg-test")
    (model,) = client.search_logged_models([exp.experiment_id], filter_string="name = 'brats_timm'")
    assert not client.search_registered_models()
    (parent,) = client.search_runs([exp.experiment_id], "tags.`medseg.kind` = 'invocation'")
    assert f'load_model("models:/{model.model_id}")' in parent.data.tags["mlflow.note.content"]


def test_two_invocations_compare_side_by_side(spool, monkeypatch):
    """Two invocations with different settings: mlflow.search_runs lists both parent runs with their
    params and test scores, as the UI's runs table and Compare view do."""
    import mlflow

    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", os.environ["MLFLOW_TRACKING_URI"])
    for lr, dice in ((0.01, 0.8), (0.001, 0.6)):
        tracking.start_invocation("results/brats_timm.json", config={"training": {"lr": lr}},
                                  experiments={"brats": "medseg-test"})
        with tracking.job_run("medseg-test", "aggregate_results:brats:timm"):
            tracking.log_test_scores("brats", "timm", {"dice_WT": dice, "hd95_WT": 10 * (1 - dice)}, 3)
        tracking.end_invocation("FINISHED")
        assert tracking_sync.sync() == {"runs": 1, "failed": 0}
    runs = mlflow.search_runs(experiment_names=["medseg-test"], filter_string="tags.`medseg.kind` = 'invocation'",
                              order_by=["metrics.`test/timm/dice_WT` DESC"])
    assert list(runs["params.training.lr"]) == ["0.01", "0.001"]
    assert list(runs["metrics.test/timm/dice_WT"]) == [0.8, 0.6]
    assert list(runs["metrics.test/timm/hd95_WT"]) == pytest.approx([2.0, 4.0])
    assert "- **timm** (3 test cases): Dice WT 0.600; HD95 WT 4.0 mm" in runs["tags.mlflow.note.content"][1]
    # the runs table the description links to: the invocations, their test Dice as columns
    exp = mlflow.get_experiment_by_name("medseg-test")
    view = json.loads(exp.tags["mlflow.sharedViewState.test-scores"])
    assert view["selectedColumns"] == ["params.`training.lr`", "metrics.`test/timm/n_cases`", "metrics.`test/timm/dice_WT`"]
    assert len(mlflow.search_runs([exp.experiment_id], view["searchFilter"])) == 2
    assert f"(#/experiments/{exp.experiment_id}/runs?viewStateShareKey=test-scores)" in runs["tags.mlflow.note.content"][0]


def test_parent_note_lists_each_models_scores():
    from medseg.tracking.summary import parent_note, test_scores_by_model

    metrics = {"test/timm/dice_WT": 0.8123, "test/timm/hd95_WT": 3.26, "test/timm/dice_label_NCR": 0.5,
               "test/timm/n_cases": 3, "test/unet3d/dice_WT": 0.7, "test/unet3d/n_cases": 3, "other": 1.0}
    scores = test_scores_by_model(metrics)
    assert scores == {"timm": {"dice_WT": 0.8123, "hd95_WT": 3.26, "dice_label_NCR": 0.5, "n_cases": 3},
                      "unet3d": {"dice_WT": 0.7, "n_cases": 3}}
    note = parent_note("brats", scores, {"timm": "results/brats_timm.json"}, {"timm": ("brats_timm", "models:/brats_timm/latest")})
    assert note.splitlines() == [
        "**brats: mean test scores**", "",
        "- **timm** (3 test cases): Dice WT 0.812; HD95 WT 3.3 mm",
        '  - results `results/brats_timm.json`; MLflow model `brats_timm`: `mlflow.pyfunc.load_model("models:/brats_timm/latest")`',
        "- **unet3d** (3 test cases): Dice WT 0.700"]
    slides = parent_note("slides", {"timm": {"dice_tumor": 0.9, "iou_tumor": 0.8, "n_cases": 2}}, {}, {})
    assert "- **timm** (2 test cases): Dice tumor 0.900\n" in slides
    ordered = parent_note("brats", {"timm": {"dice_ET": 0.5, "dice_WT": 0.8}}, {}, {}, order=["WT", "ET"])
    assert "Dice WT 0.800 · ET 0.500" in ordered


def test_the_settings_that_differ_are_the_views_columns():
    from medseg.tracking.summary import differing_params, view_state

    runs = [{"training.lr": "0.01", "training.steps": "12", "seed": "1"},
            {"training.lr": "0.001", "training.steps": "12"}]
    assert differing_params(runs) == ["seed", "training.lr"]
    view = json.loads(view_state({"timm": {"dice_WT": 0.8, "n_cases": 3}}, None, ["training.lr"]))
    assert view["selectedColumns"] == ["params.`training.lr`", "metrics.`test/timm/n_cases`", "metrics.`test/timm/dice_WT`"]
    assert view["columnOrder"][0] == "attributes.`Run Name`" and view["columnWidths"]["metrics.`test/timm/dice_WT`"] >= 150
    # a later invocation of another model keeps the first model's columns
    later = json.loads(view_state({"unet3d": {"dice_WT": 0.7, "n_cases": 3}}, json.dumps(view)))
    assert later["selectedColumns"] == ["metrics.`test/timm/n_cases`", "metrics.`test/timm/dice_WT`",
                                        "metrics.`test/unet3d/n_cases`", "metrics.`test/unet3d/dice_WT`"]


def _sync_at_once(spool: str, uri: str, barrier) -> dict:
    os.environ.update({tracking.SPOOL_ENV: spool, "MLFLOW_TRACKING_URI": uri, "MEDSEG_TRACKING": "1"})
    os.chdir(Path(spool).parent)  # the store's default artifact root (./mlruns) in the test folder
    with tracking.job_run("medseg-test", f"job-{Path(spool).name}"):
        tracking.log_metrics({"loss": 1.0})
    barrier.wait()
    return tracking_sync.sync()


def test_two_processes_create_one_fresh_store_at_once(tmp_path):
    """Two invocations (own spools) syncing into one store that does not exist yet: both log their
    run; neither reports 'MLflow unavailable: table ... already exists' (issue 25)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    (tmp_path / "fresh").mkdir()
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(2) as pool:
        barrier = manager.Barrier(2)
        results = pool.starmap(_sync_at_once, [(str(tmp_path / s), uri, barrier) for s in ("a", "b")])
    assert results == [{"runs": 1, "failed": 0}] * 2
    _, runs = _runs(uri)
    assert sorted(r.info.run_name for r in runs) == ["job-a", "job-b"]
    assert MlflowClient(uri).search_registered_models() == []  # the registry's tables are there too


def test_tracking_config_defaults_are_the_schemas():
    import yaml

    from medseg.tracking.config import TrackingConfig

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]["tracking"]["properties"]
    assert {k: v["default"] for k, v in props.items()} == {"enabled": True, "experiment_prefix": "medseg-",
                                                          "register_model": True} == vars(TrackingConfig())
    assert TrackingConfig.from_config({"tracking": {"register_model": False}}).register_model is False
    with pytest.raises(ValueError, match="tracking: unknown key"):
        TrackingConfig.from_config({"tracking": {"register": True}})


def test_pyfunc_returns_each_cases_label_map_with_its_affine(tmp_path, monkeypatch):
    """The MLflow model's predict: one row per case, the label map in NIfTI voxel order with the
    affine of the written image (the scan's), its path when output_dir is given; modalities by name."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    from medseg.inference import predict as predict_module
    from medseg.tracking.mlflow_model import BundleModel

    affine = np.array([[-2.0, 0, 0, 10], [0, 0, 3, -5], [0, 2, 0, 7], [0, 0, 0, 1]])

    def predict_raw(case, images, bundle, out):  # stands in for the segmentation (test_workflow runs the real one)
        assert images == {"t1": f"{case}_t1.nii.gz", "flair": f"{case}_flair.nii.gz"} and bundle == "bundle"
        labels = np.zeros((4, 5, 6), np.uint8)
        labels[1, 2, 3] = 4
        nib.save(nib.Nifti1Image(labels, affine), str(out))

    monkeypatch.setattr(predict_module, "predict_raw", predict_raw)
    model = BundleModel()
    model.bundle = "bundle"
    cases = pd.DataFrame([{"case": c, "t1": f"{c}_t1.nii.gz", "flair": f"{c}_flair.nii.gz"} for c in ("a", "b")])
    out = model.predict(None, cases, {"output_dir": str(tmp_path / "preds")})
    assert list(out.columns) == ["case", "labels", "affine", "path"] and list(out["case"]) == ["a", "b"]
    assert out.loc[0, "labels"].shape == (4, 5, 6) and out.loc[0, "labels"][1, 2, 3] == 4 and out.loc[0, "labels"].sum() == 4
    assert np.allclose(out.loc[1, "affine"], affine)
    assert out.loc[1, "path"] == str(tmp_path / "preds" / "b.nii.gz") and nib.load(out.loc[1, "path"]).shape == (4, 5, 6)
    single = model.predict(None, pd.DataFrame([{"flair": "case_0_flair.nii.gz", "t1": "case_0_t1.nii.gz"}]))
    assert single.loc[0, "case"] == "case_0" and single.loc[0, "path"] is None  # no output_dir: nothing kept


def test_background_sync_keeps_its_client_until_a_sync_fails(tmp_path, monkeypatch):
    """The Snakemake process's syncer opens one MLflow client for its syncs (not one every 10 s) and opens a
    new one after a sync that failed (the store may have gone away)."""
    from medseg.tracking import sync as sync_mod

    (tmp_path / "run-a.json").write_text("{}")
    opened, used = [], []
    outcomes = iter([0, 0, 1, 0])  # the third sync fails

    def fake_open():
        opened.append(object())
        return opened[-1]

    def fake_sync(spool, *, quiet, client):
        used.append(client)
        failed = next(outcomes, None)
        if failed is None:
            bg._stop.set()
            failed = 0
        return {"runs": 0, "failed": failed}

    monkeypatch.setattr(sync_mod, "open_client", fake_open)
    monkeypatch.setattr(sync_mod, "sync", fake_sync)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    bg = sync_mod.BackgroundSync(0.001, tmp_path)
    bg._loop()
    assert len(opened) == 2
    assert used[:3] == [opened[0]] * 3 and all(c is opened[1] for c in used[3:])
