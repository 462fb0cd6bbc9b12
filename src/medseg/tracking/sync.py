"""Import spooled run records (:mod:`medseg.tracking`) into MLflow: one writer at a time.

Each record becomes a run nested (``mlflow.parentRunId``) under its invocation's parent run of
its experiment, keeping its own start/end times and status. A record still being written (a
job that runs) is imported as far as it goes and continued at the next sync (what was already
logged is kept in ``synced.json``); a record is deleted only after its final state is fully
logged, so a failed sync (store unreachable, read-only) loses nothing: the next sync, or
``medseg tracking-sync``, resumes. Syncs hold an exclusive lock on the spool (``.sync.lock``),
so the background syncer of a workflow and a manual sync never write the store together.

The parent run of an invocation is named ``<targets> · <dataset>`` and carries the resolved
config (``config.yaml`` and flattened params), the git commit, the test scores the aggregation
jobs pass on (:func:`medseg.tracking.log_test_scores`: ``test/<model>/dice_WT`` ...) and a
description (``mlflow.note.content``) summarising them. An ``export_bundle`` record's bundle
becomes the run's MLflow model ``<dataset>_<model>``, registered under that name
(:mod:`medseg.tracking.mlflow_model`); an aggregation's test scores are linked to the latest model
of that name (MLflow's logged-model metrics: ``mlflow.search_logged_models`` shows them).

A SQLite store is also locked while a sync writes it (``mlflow.db.lock`` beside it): two
invocations with different spools, or two projects sharing one store, never create or write it
at once; a store creation raced by another program (``table ... already exists``) is retried.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path

from medseg.tracking import INVOCATION_FILE, model_name, spool_dir, tracking_uri
from medseg.tracking.config import TrackingConfig
from medseg.tracking.store import experiment_id, open_client, store_locked
from medseg.tracking.summary import (INVOCATIONS_FILTER, VIEW_TAG, differing_params, parent_note, test_scores_by_model,
                                     view_link, view_state)

log = logging.getLogger(__name__)
PARENTS_FILE = "parents.json"  # {invocation id: {experiment: parent run id}}
STATE_FILE = "synced.json"  # {record id: {"run_id", "metrics": n logged, "params": [keys logged]}}
LOCK_FILE = ".sync.lock"
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI
RESULTS_TAG = "medseg.results."  # + model: the results JSON of the parent's test scores


def _batched(items: list, n: int = 900):
    for i in range(0, len(items), n):
        yield items[i: i + n]


def _read(path: Path, default):
    try:
        return json.loads(path.read_text()) if path.exists() else default
    except (OSError, ValueError):
        return default


def _write(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


@contextlib.contextmanager
def _locked(spool: Path):
    spool.mkdir(parents=True, exist_ok=True)
    with open(spool / LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _Syncer:
    def __init__(self, client, spool: Path) -> None:
        from mlflow.entities import Metric, Param

        self.client, self.spool, self.Metric, self.Param = client, spool, Metric, Param
        self.parents = _read(spool / PARENTS_FILE, {})
        self.state = _read(spool / STATE_FILE, {})
        self.invocations = {p.stem.split("-", 1)[1]: _read(p, {}) for p in spool.glob("invocation-*.json")}
        cur = _read(spool / INVOCATION_FILE, None)
        if cur:
            self.invocations.setdefault(cur["id"], cur)
        self.exps: dict[str, str] = {}

    def _experiment(self, rec: dict) -> str:
        """A job's experiment; a shared job (another experiment than the invocation's datasets') goes
        to the invocation's first dataset experiment, so that an invocation has one parent per dataset."""
        inv = self.invocations.get(rec.get("invocation") or "", {})
        exps = list((inv.get("experiments") or {}).values())
        return rec["experiment"] if not exps or rec["experiment"] in exps else exps[0]

    def _parent(self, inv_id: str, experiment: str, exp_id: str, start: int) -> str:
        per = self.parents.setdefault(inv_id, {})
        if experiment in per:
            return per[experiment]
        meta = self.invocations.get(inv_id, {"name": "snakemake", "start": start, "tags": {}})
        dataset = next((d for d, e in (meta.get("experiments") or {}).items() if e == experiment), None)
        name = meta.get("name", "snakemake") + (f" · {dataset}" if dataset else "")
        tags = {**meta.get("tags", {}), "medseg.invocation": inv_id, "medseg.kind": "invocation"}
        if dataset:
            tags["medseg.dataset"] = dataset
        run = self.client.create_run(exp_id, start_time=meta.get("start", start), run_name=name, tags=tags)
        rid = run.info.run_id
        config = meta.get("config") or {}
        if config:
            self.client.log_dict(rid, config, "config.yaml")
            params = [self.Param(k, v) for k, v in _flatten(config).items()]
            for chunk in _batched(params, 90):
                self.client.log_batch(rid, params=chunk)
        per[experiment] = rid
        _write(self.spool / PARENTS_FILE, self.parents)
        return rid

    def record(self, path: Path) -> bool:
        """Log what is new in one record; True when the record is complete and deleted."""
        rec = json.loads(path.read_text())
        st = self.state.get(rec["id"])
        experiment = self._experiment(rec)
        exp_id = experiment_id(self.client, experiment, self.exps)
        parent = None
        if rec.get("invocation"):
            parent = self._parent(rec["invocation"], experiment, exp_id, rec["start"])
        if st is None:
            tags = dict(rec["tags"])
            if parent:
                tags["mlflow.parentRunId"] = parent
            if experiment != rec["experiment"]:
                tags["medseg.experiment"] = rec["experiment"]
            run = self.client.create_run(exp_id, start_time=rec["start"], run_name=rec["name"], tags=tags)
            st = self.state[rec["id"]] = {"run_id": run.info.run_id, "metrics": 0, "params": []}
            self._save_state()
        rid = st["run_id"]
        new_params = [self.Param(k, v) for k, v in rec["params"].items() if k not in set(st["params"])]
        for chunk in _batched(new_params, 90):
            self.client.log_batch(rid, params=chunk)
        st["params"] = sorted(set(st["params"]) | {p.key for p in new_params})
        metrics = [self.Metric(k, v, ts, step) for k, v, step, ts in rec["metrics"][st["metrics"]:]]
        for chunk in _batched(metrics):
            self.client.log_batch(rid, metrics=chunk)
        st["metrics"] += len(metrics)
        self._save_state()
        if rec["status"] == "RUNNING":
            return False
        self._finish(rec, st, parent, exp_id)
        path.unlink()
        self.state.pop(rec["id"], None)
        self._save_state()
        return True

    def _finish(self, rec: dict, st: dict, parent: str | None, exp_id: str) -> None:
        """Log what a finished record adds (artifacts, models, test scores, the parent's scores and
        description), each step once: a sync failing midway resumes after the steps it did; end the run."""
        rid = st["run_id"]
        steps = [("artifacts", lambda: self._artifacts(rec, rid)),
                 *((f"model:{m['name']}", lambda m=m: self._model(rec, rid, m)) for m in rec.get("models", [])),
                 ("test", lambda: self._test_scores(rec, rid, exp_id)),
                 ("parent", lambda: self._parent_scores(rec, parent, exp_id))]
        done = st.setdefault("done", [])
        for key, step in steps:
            if key not in done:
                step()
                done.append(key)
                self._save_state()
        self.client.set_terminated(rid, status=rec["status"], end_time=rec["end"])

    def _artifacts(self, rec: dict, rid: str) -> None:
        for src, sub in rec["artifacts"]:
            if Path(src).exists():
                self.client.log_artifact(rid, src, sub)
        for name, obj in rec.get("dicts", {}).items():
            self.client.log_dict(rid, obj, name)

    def _model(self, rec: dict, rid: str, model: dict) -> None:
        """The record's bundle as the run's MLflow model, registered unless the invocation says no."""
        if not Path(model["bundle"]).is_dir():
            log.warning("tracking: model bundle %s is gone; not logged to MLflow", model["bundle"])
            return
        from medseg.tracking.mlflow_model import log_bundle

        inv = self.invocations.get(rec.get("invocation") or "", {})
        log_bundle(self.client, rid, model["bundle"], model["name"],
                   register=inv.get("register_model", TrackingConfig.register_model))

    def _logged_model(self, exp_id: str, name: str) -> str | None:
        """The id of the latest ready MLflow model ``name`` of the experiment, or None."""
        found = self.client.search_logged_models([exp_id], filter_string=f"name = '{name}' AND status = 'READY'",
                                                 order_by=[{"field_name": "creation_timestamp", "ascending": False}],
                                                 max_results=1)
        return found[0].model_id if found else None

    def _test_scores(self, rec: dict, rid: str, exp_id: str) -> None:
        """An aggregation's test scores on its run, linked to the dataset x model's MLflow model (its
        metrics then), which becomes an input of the run."""
        test = rec.get("test")
        if not test:
            return
        model_id = self._logged_model(exp_id, test["name"])
        self.client.log_batch(rid, metrics=[self.Metric(k, v, rec["end"], 0, model_id=model_id)
                                            for k, v in test["scores"].items()])
        if model_id:
            from mlflow.entities import LoggedModelInput

            self.client.log_inputs(rid, models=[LoggedModelInput(model_id)])

    def _parent_scores(self, rec: dict, parent: str | None, exp_id: str) -> None:
        """The test scores on the invocation's parent run, and its description rewritten from them."""
        if not parent or not rec.get("parent_metrics"):
            return
        self.client.log_batch(parent, metrics=[self.Metric(k, v, rec["end"], 0)
                                               for k, v in rec["parent_metrics"].items()])
        test = rec.get("test")
        if not test:
            return
        if test.get("results"):
            self.client.set_tag(parent, RESULTS_TAG + test["model"], test["results"])
        run = self.client.get_run(parent)
        scores = test_scores_by_model(run.data.metrics)
        order = test.get("structures") or []  # the task's order of structures
        results = {m: run.data.tags.get(RESULTS_TAG + m) for m in scores}
        models = {m: (n, uri) for m in scores if (uri := self._model_uri(exp_id, n := model_name(test["dataset"], m)))}
        self.client.set_tag(parent, NOTE_TAG, parent_note(test["dataset"], scores, results, models, view_link(exp_id),
                                                          order))
        parents = self.client.search_runs([exp_id], INVOCATIONS_FILTER, max_results=1000)
        view = view_state(scores, self.client.get_experiment(exp_id).tags.get(VIEW_TAG),
                          differing_params([r.data.params for r in parents]), order)
        self.client.set_experiment_tag(exp_id, VIEW_TAG, view)

    def _model_uri(self, exp_id: str, name: str) -> str | None:
        """``models:/<name>/latest`` if the model ``name`` is registered, else its logged model's URI, or None."""
        model_id = self._logged_model(exp_id, name)
        if model_id is None:
            return None
        registered = self.client.search_registered_models(filter_string=f"name = '{name}'", max_results=1)
        return f"models:/{name}/latest" if registered else f"models:/{model_id}"

    def _save_state(self) -> None:
        _write(self.spool / STATE_FILE, self.state)

    def close_parents(self) -> None:
        """Terminate the parent runs of ended invocations (and their jobs' runs that never ended:
        killed jobs, status KILLED), then forget the invocation."""
        for inv_id, meta in self.invocations.items():
            if meta.get("status") in (None, "RUNNING"):
                continue
            try:
                end = meta.get("end") or int(time.time() * 1000)
                for path in self.spool.glob("run-*.json"):
                    rec = _read(path, {})
                    if rec.get("invocation") == inv_id and rec.get("status") == "RUNNING" and rec["id"] in self.state:
                        self.client.set_terminated(self.state.pop(rec["id"])["run_id"], status="KILLED", end_time=end)
                        path.unlink()
                        self._save_state()
                if any(_read(p, {}).get("invocation") == inv_id for p in self.spool.glob("run-*.json")):
                    continue  # records kept for retry still need the parent run
                for run_id in self.parents.get(inv_id, {}).values():
                    self.client.set_terminated(run_id, status=meta["status"], end_time=end)
                (self.spool / f"invocation-{inv_id}.json").unlink(missing_ok=True)
                if self.parents.pop(inv_id, None) is not None:
                    _write(self.spool / PARENTS_FILE, self.parents)
            except Exception as e:  # noqa: BLE001
                log.warning("tracking failed (closing parent run of %s): %s", inv_id, e)


def sync(spool: str | Path | None = None, *, quiet: bool = False, client=None) -> dict[str, int]:
    """Log every pending record to MLflow; return counts ``{"runs": n, "failed": m}`` (``runs``: records
    completed and removed; records of running jobs are logged as far as they go and kept). ``client``: an
    open client of the store to reuse (default: one opened for this sync).

    Raises nothing: failures are logged as ``tracking failed (...)`` warnings and the records kept.
    """
    spool = Path(spool) if spool else spool_dir()
    if not spool.exists() or not any(spool.glob("*.json")):
        return {"runs": 0, "failed": 0}
    with _locked(spool), store_locked(tracking_uri()):
        records = sorted(spool.glob("run-*.json"), key=lambda p: p.stat().st_mtime)
        try:
            syncer = _Syncer(client or open_client(), spool)
        except Exception as e:  # noqa: BLE001
            log.warning("tracking failed (MLflow unavailable: %s); %d run records kept in %s", e, len(records), spool)
            return {"runs": 0, "failed": len(records)}
        done = failed = 0
        for path in records:
            try:
                done += syncer.record(path)
            except Exception as e:  # noqa: BLE001
                failed += 1
                log.warning("tracking failed (run record %s: %s: %s); record kept for the next sync",
                            path.name, type(e).__name__, e)
        syncer.close_parents()
    if not quiet or done or failed:
        log.info("tracking: %d runs logged to %s, %d kept for retry", done, tracking_uri(), failed)
    return {"runs": done, "failed": failed}


class BackgroundSync:
    """Sync the spool every ``interval_s`` seconds in a daemon thread (the Snakemake process's
    ``onstart``), so that runs appear in ``mlflow ui`` while the workflow runs; :meth:`stop` ends it."""

    def __init__(self, interval_s: float = 10.0, spool: str | Path | None = None) -> None:
        self.interval, self.spool, self._stop = interval_s, spool, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="medseg-tracking-sync")
        self._client = None  # opened at the first sync with records, kept while syncs succeed (0.2 s a sync less)

    def start(self) -> BackgroundSync:
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                spool = Path(self.spool) if self.spool else spool_dir()
                if self._client is None and spool.is_dir() and any(spool.glob("run-*.json")):
                    with store_locked(tracking_uri()):  # it may create the store's tables
                        self._client = open_client()
                if sync(spool, quiet=True, client=self._client)["failed"]:
                    self._client = None  # reopened next time: the store may have gone away
            except Exception as e:  # noqa: BLE001 - never take the workflow down
                self._client = None
                log.warning("tracking failed (background sync: %s)", e)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=300)


_background: BackgroundSync | None = None


def start_background(interval_s: float | None = None) -> None:
    """Start the process's background syncer (``$MEDSEG_TRACKING_SYNC_S`` s, default 10; 0: none)."""
    global _background
    interval = float(os.environ.get("MEDSEG_TRACKING_SYNC_S", "10")) if interval_s is None else interval_s
    if interval > 0 and _background is None:
        _background = BackgroundSync(interval).start()


def stop_background() -> None:
    global _background
    if _background is not None:
        _background.stop()
        _background = None


def register(sub) -> None:
    p = sub.add_parser("tracking-sync", help="log spooled job runs to MLflow (MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--spool", default=None, help="spool folder (default .medseg/tracking)")
    p.set_defaults(func=lambda a: 1 if sync(a.spool)["failed"] else 0)
