"""The one door to MLflow: the rest of medseg calls these functions and never imports mlflow.

Jobs do not talk to MLflow. Each job writes a *run record* (params, metrics, tags, artifact
paths, status, times) to its own JSON file in a spool folder, rewritten while the job runs (a
training job's record at each validation and at most every ``MEDSEG_TRACKING_FLUSH_S`` seconds)
and once more when it ends. One process imports the records into MLflow
(:mod:`medseg.tracking.sync`): a background thread of the Snakemake process while the workflow
runs (so each job's run, and a training's curves, show up in ``mlflow ui`` within seconds), a
last sync at the end, or ``medseg tracking-sync`` on demand. So

- a job pays no MLflow start-up (~2 s of imports), needs no mlflow in its env, never waits on the store;
- any number of concurrent jobs log without contention: each writes only its own file, and only
  one writer (under a file lock) talks to the store, which SQLite needs;
- a tracking failure never touches results: records stay in the spool until a sync succeeds.

Runs of one workflow invocation are nested under one parent run per dataset experiment
(``mlflow.parentRunId``), named after the targets and the dataset.

Metric names group into the MLflow UI's chart sections (the part before the last ``/``):
``train/loss``, ``val/dice_WT`` (training curves), ``test/dice_WT``, ``test/hd95_WT`` (an
aggregation's mean test scores, :func:`log_test_scores`), ``test/<model>/dice_WT`` on the parent
run, ``system/...``. A model bundle is logged as the MLflow model ``<dataset>_<model>``
(:func:`model_name`), registered under that name, with the test scores linked to it.
Default store: ``sqlite:///mlflow.db`` in the working directory, artifacts in ``./mlartifacts``
(relative paths: the project folder can be moved); ``MLFLOW_TRACKING_URI`` overrides it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg.tracking.config import TrackingConfig

log = logging.getLogger(__name__)

SPOOL_ENV = "MEDSEG_TRACKING_SPOOL"
DISABLE_ENV = "MEDSEG_TRACKING"  # "0" switches tracking off
INVOCATION_FILE = "invocation.json"

_current: dict[str, Any] | None = None


def spool_dir() -> Path:
    """Folder of pending run records (``$MEDSEG_TRACKING_SPOOL`` or ``.medseg/tracking``)."""
    return Path(os.environ.get(SPOOL_ENV, ".medseg/tracking"))


DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACT_ROOT = "mlartifacts"  # relative to the working directory, like ``mlflow ui``'s default
FLUSH_ENV = "MEDSEG_TRACKING_FLUSH_S"
SYSTEM_METRICS_ENV = "MEDSEG_SYSTEM_METRICS_S"  # sampling interval of system metrics (s; 0: off)


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db`` (relative to the working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def disable() -> None:
    """Switch tracking off for this process and the jobs it starts."""
    os.environ[DISABLE_ENV] = "0"


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1") != "0"


def _write_record(record: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, default=str))
    os.replace(tmp, path)


def model_name(dataset: str, model: str) -> str:
    """The name of a dataset x model's MLflow model, logged and registered: ``brats_timm``."""
    return f"{dataset}_{model}"


def start_invocation(name: str = "snakemake", tags: Mapping[str, str] | None = None, *,
                     config: Mapping[str, Any] | None = None, experiments: Mapping[str, str] | None = None,
                     register_model: bool = TrackingConfig.register_model) -> str:
    """Open a workflow invocation: later job runs are nested under its parent run(s). Returns its id.

    Args:
        name: parent run name (the targets, e.g. ``results/brats_timm.json``); `` · <dataset>`` is appended.
        tags: parent run tags (e.g. ``mlflow.source.git.commit``).
        config: the resolved workflow config, logged on each parent run (``config.yaml``, params).
        experiments: dataset -> MLflow experiment of the datasets this invocation works on; jobs of
            other experiments (shared jobs such as the atlas) are nested under the first one's parent.
        register_model: register each logged model bundle in the MLflow model registry
            (``tracking.register_model``, :class:`medseg.tracking.config.TrackingConfig`).
    """
    inv = {"id": uuid.uuid4().hex, "name": name, "tags": dict(tags or {}), "start": _now(), "end": None,
           "status": "RUNNING", "config": json.loads(json.dumps(config or {}, default=str)),
           "experiments": dict(experiments or {}), "register_model": bool(register_model)}
    if enabled():
        end_invocation("KILLED")  # a previous invocation that never ended (Snakemake killed): close it
        _write_record(inv, spool_dir() / INVOCATION_FILE)
    return inv["id"]


def end_invocation(status: str = "FINISHED") -> None:
    """Close the current invocation with ``status``: the next sync terminates its parent run(s), and
    marks its jobs' runs that never ended (killed jobs) ``KILLED``."""
    path = spool_dir() / INVOCATION_FILE
    if enabled() and path.exists():
        try:
            inv = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            return
        inv.update(end=_now(), status=status)
        _write_record(inv, spool_dir() / f"invocation-{inv['id']}.json")
        path.unlink(missing_ok=True)


def _now() -> int:
    return int(time.time() * 1000)


def _invocation_id() -> str | None:
    path = spool_dir() / INVOCATION_FILE
    try:
        return json.loads(path.read_text())["id"] if path.exists() else None
    except (OSError, ValueError, KeyError):
        return None


_lock = threading.Lock()
_flush = {"path": None, "last": 0.0, "keys": frozenset()}


def _save_current() -> None:
    """Write the current record (under the lock: the system-metrics thread appends to it)."""
    path = _flush["path"]
    try:
        with _lock:
            blob = json.dumps(_current, default=str)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(blob)
        os.replace(tmp, path)
        _flush["last"] = time.monotonic()
    except OSError as e:
        log.warning("tracking failed (writing run record %s): %s; results are unaffected", path, e)


def _maybe_flush(keys: frozenset) -> None:
    """Rewrite the live record when a metrics call brings keys the previous one did not have (a
    training step that validated), else at most every ``$MEDSEG_TRACKING_FLUSH_S`` s (10)."""
    new_keys = bool(keys - _flush["keys"]) and bool(_flush["keys"])
    _flush["keys"] = keys
    interval = float(os.environ.get(FLUSH_ENV, "10"))
    if new_keys or time.monotonic() - _flush["last"] >= interval:
        _save_current()


class _SystemMetrics(threading.Thread):
    """psutil samples of the machine and this job, as MLflow's ``system/...`` metrics (the UI's
    *System metrics* tab); MLflow's own monitor needs a live run, which a spooled job does not have."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(daemon=True, name="medseg-system-metrics")
        import psutil

        self.psutil, self.interval, self.stop = psutil, interval_s, threading.Event()
        self.proc, self.step = psutil.Process(), 0
        self.proc.cpu_percent(None)
        psutil.cpu_percent(None)

    def sample(self, step: int) -> None:
        ps = self.psutil
        mem = ps.virtual_memory()
        rss = self.proc.memory_info().rss + sum(c.memory_info().rss for c in self.proc.children(recursive=True))
        values = {"cpu_utilization_percentage": ps.cpu_percent(None),
                  "system_memory_usage_megabytes": (mem.total - mem.available) / 2**20,
                  "system_memory_usage_percentage": mem.percent,
                  "process_cpu_percentage": self.proc.cpu_percent(None),
                  "process_memory_rss_megabytes": rss / 2**20}
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                values[f"gpu_{i}_memory_usage_megabytes"] = torch.cuda.memory_allocated(i) / 2**20
                values[f"gpu_{i}_max_memory_usage_megabytes"] = torch.cuda.max_memory_allocated(i) / 2**20
        ts = _now()
        with _lock:
            if _current is not None:
                _current["metrics"].extend([f"system/{k}", float(v), step, ts] for k, v in values.items())

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.last_sample()

    def last_sample(self) -> None:
        try:
            self.sample(self.step)
        except Exception as e:  # noqa: BLE001 - a sensor failing never fails the job
            log.debug("system metrics: %s", e)
        self.step += 1


def _start_system_metrics() -> _SystemMetrics | None:
    interval = float(os.environ.get(SYSTEM_METRICS_ENV, "10"))
    if interval <= 0:
        return None
    try:
        mon = _SystemMetrics(interval)
    except ImportError:
        log.info("system metrics off: psutil is not installed")
        return None
    mon.last_sample()
    mon.start()
    return mon


@contextlib.contextmanager
def job_run(experiment: str, name: str, tags: Mapping[str, str] | None = None, *,
            system_metrics: bool = False) -> Iterator[str | None]:
    """Record one run (ending ``FINISHED``, or ``FAILED`` if the body raised) for the duration of a job.

    The record is written when the run starts (so the syncer shows it as running), rewritten as
    metrics arrive (see :func:`log_metrics`) and when the job ends.

    Args:
        system_metrics: sample CPU, memory (and CUDA memory) every ``$MEDSEG_SYSTEM_METRICS_S`` s
            (10) as ``system/...`` metrics.

    Yields the record id, or None when tracking is off.
    """
    global _current
    if not enabled():
        yield None
        return
    rid = uuid.uuid4().hex
    _current = {"id": rid, "experiment": experiment, "name": name, "tags": dict(tags or {}), "params": {},
                "metrics": [], "artifacts": [], "dicts": {}, "parent_metrics": {}, "models": [],
                "start": _now(), "end": None, "status": "RUNNING", "invocation": _invocation_id()}
    _flush.update(path=spool_dir() / f"run-{rid}.json", last=0.0, keys=frozenset())
    _save_current()
    mon = _start_system_metrics() if system_metrics else None
    try:
        yield rid
        _current["status"] = "FINISHED"
    except BaseException:
        _current["status"] = "FAILED"
        raise
    finally:
        if mon is not None:
            mon.stop.set()
            mon.join(timeout=5)
            mon.last_sample()
        _current["end"] = _now()
        _save_current()
        _current = None


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def log_params(params: Mapping[str, Any]) -> None:
    """Record (nested) parameters; nested keys are joined with dots, values truncated to 500 chars."""
    if _current is not None:
        _current["params"].update({k: str(v)[:500] for k, v in _flatten(params).items()})


def log_metric(key: str, value: float, step: int | None = None) -> None:
    log_metrics({key: value}, step)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Record the numbers (and booleans) of a (nested) mapping at ``step``; other values (``None``, strings,
    lists such as a QC dict's ``qc_warnings``) are not metrics and are left out. A live record is rewritten
    for the syncer (see :func:`job_run`)."""
    if _current is None:
        return
    ts = _now()
    flat = {k: v for k, v in _flatten(metrics).items() if isinstance(v, numbers.Real)}  # numpy scalars too
    with _lock:
        _current["metrics"].extend([k, float(v), int(step or 0), ts] for k, v in flat.items())
    _maybe_flush(frozenset(flat))


TEST_PREFIX = "test/"


def log_test_scores(dataset: str, model: str, scores: Mapping[str, float], n_cases: int,
                    results: str | Path | None = None, structures: Sequence[str] = ()) -> None:
    """Record an aggregation's mean test scores (``{"dice_WT": 0.81, "hd95_WT": 3.2, ...}``).

    At sync they become the metrics ``test/dice_WT`` ... and ``test/n_cases`` of this job's run,
    linked to the dataset x model's logged MLflow model (:func:`model_name`; the latest one logged,
    by ``export_bundle``), and ``test/<model>/dice_WT`` ... on the invocation's parent run, whose
    description (``mlflow.note.content``) then summarises every model's test scores.

    Args:
        results: the results JSON, named in the parent's description.
        structures: the task's regions (or labels) in its order (WT, TC, ET), the description's column order.
    """
    if _current is None:
        return
    values = {f"{TEST_PREFIX}{k}": float(v) for k, v in scores.items()
              if isinstance(v, numbers.Real) and not math.isnan(v)}  # NaN (no case scored): not a metric
    values[f"{TEST_PREFIX}n_cases"] = float(n_cases)
    _current["test"] = {"dataset": dataset, "model": model, "name": model_name(dataset, model), "scores": values,
                        "results": str(results) if results else None, "structures": list(structures)}
    _current["parent_metrics"].update({f"{TEST_PREFIX}{model}/{k[len(TEST_PREFIX):]}": v for k, v in values.items()})


def log_model_bundle(bundle_dir: str | Path, dataset: str, model: str) -> None:
    """Log a model bundle (:mod:`medseg.inference.bundle`) at sync as this run's MLflow pyfunc model
    :func:`model_name` (:mod:`medseg.tracking.mlflow_model`), registered under that name unless the
    invocation says ``tracking.register_model: false``."""
    if _current is not None and Path(bundle_dir).is_dir():
        _current["models"].append({"bundle": str(Path(bundle_dir).resolve()), "name": model_name(dataset, model),
                                   "dataset": dataset, "model": model})


def set_tags(tags: Mapping[str, Any]) -> None:
    if _current is not None:
        _current["tags"].update({k: str(v) for k, v in tags.items()})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Attach a file to the run (copied into MLflow at sync; must still exist then)."""
    if _current is not None and Path(path).exists():
        _current["artifacts"].append([str(Path(path).resolve()), artifact_path])


def log_dict(obj: Mapping[str, Any], name: str) -> None:
    """Attach ``obj`` to the run as the JSON artifact ``name`` (kept in the run record until sync)."""
    if _current is not None:
        _current["dicts"][name] = json.loads(json.dumps(obj, default=str))
