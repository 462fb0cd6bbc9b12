"""The one door to MLflow: the rest of medseg calls these functions and never imports mlflow.

Jobs do not talk to MLflow while they run. Each job writes a *run record* (params, metrics,
tags, artifact paths, status, times) to its own JSON file in a spool folder; :func:`sync` then
imports all records into MLflow in one process: at the end of the workflow (Snakefile
``onsuccess``/``onerror``) or on demand with ``medseg tracking-sync``. So

- a job pays no MLflow start-up (~2 s of imports) and never waits on the store;
- any number of concurrent jobs log without contention: each writes only its own file;
- a tracking failure never touches results: records stay in the spool until a sync succeeds.

Runs of one workflow invocation are nested under one parent run (``mlflow.parentRunId``).
Default store: ``./mlruns`` (local files, no server); ``MLFLOW_TRACKING_URI`` overrides it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPOOL_ENV = "MEDSEG_TRACKING_SPOOL"
DISABLE_ENV = "MEDSEG_TRACKING"  # "0" switches tracking off
INVOCATION_FILE = "invocation.json"

_current: dict[str, Any] | None = None


def spool_dir() -> Path:
    """Folder of pending run records (``$MEDSEG_TRACKING_SPOOL`` or ``.medseg/tracking``)."""
    return Path(os.environ.get(SPOOL_ENV, ".medseg/tracking"))


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the local file store ``./mlruns``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()


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


def start_invocation(name: str = "snakemake", tags: Mapping[str, str] | None = None) -> str:
    """Open a workflow invocation: later job runs are nested under its parent run. Returns its id."""
    inv = {"id": uuid.uuid4().hex, "name": name, "tags": dict(tags or {}), "start": _now(), "end": None, "status": "RUNNING"}
    if enabled():
        _write_record(inv, spool_dir() / INVOCATION_FILE)
    return inv["id"]


def end_invocation(status: str = "FINISHED") -> None:
    path = spool_dir() / INVOCATION_FILE
    if enabled() and path.exists():
        inv = json.loads(path.read_text())
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


@contextlib.contextmanager
def job_run(experiment: str, name: str, tags: Mapping[str, str] | None = None) -> Iterator[str | None]:
    """Record one run (ending ``FINISHED``, or ``FAILED`` if the body raised) for the duration of a job.

    Yields the record id, or None when tracking is off.
    """
    global _current
    if not enabled():
        yield None
        return
    rid = uuid.uuid4().hex
    _current = {"id": rid, "experiment": experiment, "name": name, "tags": dict(tags or {}), "params": {},
                "metrics": [], "artifacts": [], "dicts": {}, "start": _now(), "end": None, "status": "RUNNING",
                "invocation": _invocation_id()}
    path = spool_dir() / f"run-{rid}.json"
    try:
        yield rid
        _current["status"] = "FINISHED"
    except BaseException:
        _current["status"] = "FAILED"
        raise
    finally:
        _current["end"] = _now()
        try:
            _write_record(_current, path)
        except OSError as e:
            log.warning("tracking failed (writing run record %s): %s; results are unaffected", path, e)
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
    """Record the numbers (and booleans) of a (nested) mapping; other values (``None``, strings, lists such as a
    QC dict's ``qc_warnings``) are not metrics and are left out."""
    if _current is None:
        return
    ts = _now()
    for k, v in _flatten(metrics).items():
        if isinstance(v, numbers.Real):  # numpy scalars too
            _current["metrics"].append([k, float(v), int(step or 0), ts])


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
