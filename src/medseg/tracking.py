"""The one door to MLflow: the rest of medseg calls these functions and never imports mlflow.

A workflow invocation opens a parent run (``start_parent``, from the Snakefile's ``onstart``),
and each job opens a nested run (``job_run``) tagged ``mlflow.parentRunId``. The default store
is local (``./mlruns`` under the working directory); ``MLFLOW_TRACKING_URI`` overrides it.

Tracking never destroys results: every MLflow call is guarded, a failure is logged once as a
warning (``tracking failed: ...``) and the job carries on.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_FILE = Path(".snakemake") / "medseg_mlflow_parents.json"  # {experiment: parent run id}
DISABLE_ENV = "MEDSEG_TRACKING"  # "0" switches tracking off

_state: dict[str, Any] = {"client": None, "run_id": None, "failed": False}


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the local file store ``./mlruns``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1") != "0"


def _fail(what: str, e: BaseException) -> None:
    if not _state["failed"]:
        log.warning("tracking failed (%s): %s: %s; results are unaffected", what, type(e).__name__, e)
    _state["failed"] = True


def _client():
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        # the local file store takes concurrent writers without a server or a database;
        # MLflow 3 keeps it behind this opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient  # imported lazily: ~1 s, and optional at run time

    return MlflowClient(tracking_uri=tracking_uri())


def _experiment_id(client, name: str) -> str:
    for attempt in range(5):  # concurrent jobs may race to create the experiment
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # noqa: BLE001 - created by another job meanwhile
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not get or create MLflow experiment {name!r}")


def start_parent(experiment: str, name: str, tags: Mapping[str, str] | None = None) -> str | None:
    """Open the invocation's parent run, export its id for child jobs, return it (None on failure)."""
    if not enabled():
        return None
    try:
        client = _client()
        run = client.create_run(_experiment_id(client, experiment), run_name=name, tags=dict(tags or {}))
        run_id = run.info.run_id
        parents = _parents()
        parents[experiment] = run_id
        PARENT_FILE.parent.mkdir(parents=True, exist_ok=True)
        PARENT_FILE.write_text(json.dumps(parents))
        return run_id
    except Exception as e:  # noqa: BLE001
        _fail("start parent run", e)
        return None


def end_parents(status: str = "FINISHED") -> None:
    """Close the parent runs opened by :func:`start_parent` with ``FINISHED`` or ``FAILED``."""
    if not enabled():
        return
    for run_id in _parents().values():
        try:
            _client().set_terminated(run_id, status=status)
        except Exception as e:  # noqa: BLE001
            _fail("end parent run", e)
    PARENT_FILE.unlink(missing_ok=True)


def _parents() -> dict[str, str]:
    try:
        return json.loads(PARENT_FILE.read_text()) if PARENT_FILE.exists() else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def job_run(experiment: str, name: str, tags: Mapping[str, str] | None = None) -> Iterator[str | None]:
    """Open a run nested under the invocation's parent (if any) for the duration of a job.

    The run ends ``FINISHED``, or ``FAILED`` if the body raised; the exception propagates.
    Yields the run id, or None when tracking is off or failed.
    """
    _state.update(client=None, run_id=None)
    if enabled():
        try:
            client = _client()
            all_tags = dict(tags or {})
            parent = _parents().get(experiment)
            if parent:
                all_tags["mlflow.parentRunId"] = parent
            run = client.create_run(_experiment_id(client, experiment), run_name=name, tags=all_tags)
            _state.update(client=client, run_id=run.info.run_id)
        except Exception as e:  # noqa: BLE001
            _fail("start run", e)
    status = "FAILED"
    try:
        yield _state["run_id"]
        status = "FINISHED"
    finally:
        if _state["client"] is not None:
            try:
                _state["client"].set_terminated(_state["run_id"], status=status)
            except Exception as e:  # noqa: BLE001
                _fail("end run", e)
        _state.update(client=None, run_id=None)


def _call(what: str, fn_name: str, *args: Any, **kwargs: Any) -> None:
    client, run_id = _state["client"], _state["run_id"]
    if client is None:
        return
    try:
        getattr(client, fn_name)(run_id, *args, **kwargs)
    except Exception as e:  # noqa: BLE001
        _fail(what, e)


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
    """Log (nested) parameters; nested keys are joined with dots, values truncated to 500 chars."""
    if _state["client"] is None:
        return
    from mlflow.entities import Param

    flat = _flatten(params)
    _call("log params", "log_batch", params=[Param(k, str(v)[:500]) for k, v in flat.items()])


def log_metric(key: str, value: float, step: int | None = None) -> None:
    _call("log metric", "log_metric", key, float(value), step=step or 0)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    if _state["client"] is None:
        return
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step or 0) for k, v in _flatten(metrics).items() if v is not None]
    _call("log metrics", "log_batch", metrics=batch)


def set_tags(tags: Mapping[str, Any]) -> None:
    for k, v in tags.items():
        _call("set tag", "set_tag", k, str(v))


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Copy a file into the current run's artifacts (skipped silently if the file is missing)."""
    if Path(path).exists():
        _call("log artifact", "log_artifact", str(path), artifact_path)
