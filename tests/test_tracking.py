"""Tracking: jobs spool run records; sync logs them nested under the invocation; failures lose nothing."""
import json
import multiprocessing as mp
import os

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
        tracking.log_metrics({"dice_WT": 0.8})
        tracking.log_invocation_metrics({"timm/dice_WT": 0.8})
    tracking.end_invocation("FINISHED")
    assert tracking_sync.sync() == {"runs": 2, "failed": 0}
    assert client.get_experiment_by_name("medseg-atlas") is None
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "results/brats_timm.json · brats" and parent.info.status == "FINISHED"
    assert parent.data.metrics == {"timm/dice_WT": 0.8} and parent.data.params["training.steps"] == "3"
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


def test_bundle_is_logged_as_a_registered_model(spool):
    """tracking.register_model: the bundle becomes the run's pyfunc model and a registered version."""
    from mlflow.tracking import MlflowClient

    bundle = spool / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    tracking.start_invocation("t", experiments={"brats": "medseg-test"}, register_model=True)
    with tracking.job_run("medseg-test", "export_bundle:brats:timm"):
        tracking.log_model_bundle(bundle, "medseg-brats-timm")
    tracking.end_invocation("FINISHED")
    assert tracking_sync.sync() == {"runs": 1, "failed": 0}
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (version,) = client.search_model_versions("name = 'medseg-brats-timm'")
    run = client.get_run(version.run_id)
    assert run.info.run_name == "export_bundle:brats:timm" and run.info.status == "FINISHED"
    from mlflow.artifacts import download_artifacts

    local = download_artifacts(f"models:/medseg-brats-timm/{version.version}", dst_path=str(spool / "model"))
    assert os.path.exists(os.path.join(local, "MLmodel"))
    assert json.loads(open(os.path.join(local, "artifacts", "bundle", "bundle.json")).read()) == {}
