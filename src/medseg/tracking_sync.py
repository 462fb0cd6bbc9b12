"""Import spooled run records (:mod:`medseg.tracking`) into MLflow: one writer, after the jobs.

Each invocation becomes a parent run; each job record a run nested under it
(``mlflow.parentRunId``), keeping its own start/end times and status. A record is deleted only
after it is fully logged, so a failed sync (store unreachable, read-only) loses nothing: run
``medseg tracking-sync`` again later.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from medseg.tracking import INVOCATION_FILE, spool_dir, tracking_uri

log = logging.getLogger(__name__)
PARENTS_FILE = "parents.json"  # {invocation id: {experiment: parent run id}}


def _client():
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        # the local file store needs no server or database; MLflow 3 keeps it behind this opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def _experiment_id(client, name: str, cache: dict) -> str:
    if name not in cache:
        exp = client.get_experiment_by_name(name)
        cache[name] = exp.experiment_id if exp is not None else client.create_experiment(name)
    return cache[name]


def _batched(items: list, n: int = 900):
    for i in range(0, len(items), n):
        yield items[i: i + n]


def sync(spool: str | Path | None = None) -> dict[str, int]:
    """Log every pending record to MLflow; return counts ``{"runs": n, "failed": m}``.

    Raises nothing: failures are logged as ``tracking failed (...)`` warnings and the records kept.
    """
    spool = Path(spool) if spool else spool_dir()
    records = sorted(spool.glob("run-*.json")) if spool.exists() else []
    if not records:
        return {"runs": 0, "failed": 0}
    try:
        client = _client()
        from mlflow.entities import Metric, Param
    except Exception as e:  # noqa: BLE001
        log.warning("tracking failed (MLflow unavailable: %s); %d run records kept in %s", e, len(records), spool)
        return {"runs": 0, "failed": len(records)}
    parents_path = spool / PARENTS_FILE
    parents = json.loads(parents_path.read_text()) if parents_path.exists() else {}
    invocations = {p.stem.split("-", 1)[1]: json.loads(p.read_text()) for p in spool.glob("invocation-*.json")}
    if (spool / INVOCATION_FILE).exists():
        cur = json.loads((spool / INVOCATION_FILE).read_text())
        invocations.setdefault(cur["id"], cur)
    exps: dict[str, str] = {}
    done = failed = 0
    for path in records:
        try:
            rec = json.loads(path.read_text())
            exp_id = _experiment_id(client, rec["experiment"], exps)
            tags = dict(rec["tags"])
            inv = rec.get("invocation")
            if inv:
                per = parents.setdefault(inv, {})
                if rec["experiment"] not in per:
                    meta = invocations.get(inv, {"name": "snakemake", "start": rec["start"], "tags": {}})
                    parent = client.create_run(exp_id, start_time=meta["start"], run_name=meta.get("name", "snakemake"),
                                               tags={**meta.get("tags", {}), "medseg.invocation": inv})
                    per[rec["experiment"]] = parent.info.run_id
                    parents_path.write_text(json.dumps(parents))
                tags["mlflow.parentRunId"] = per[rec["experiment"]]
            run = client.create_run(exp_id, start_time=rec["start"], run_name=rec["name"], tags=tags)
            rid = run.info.run_id
            params = [Param(k, v) for k, v in rec["params"].items()]
            metrics = [Metric(k, v, ts, step) for k, v, step, ts in rec["metrics"]]
            for chunk in _batched(params, 90):
                client.log_batch(rid, params=chunk)
            for chunk in _batched(metrics):
                client.log_batch(rid, metrics=chunk)
            for src, sub in rec["artifacts"]:
                if Path(src).exists():
                    client.log_artifact(rid, src, sub)
            for name, obj in rec.get("dicts", {}).items():
                client.log_dict(rid, obj, name)
            client.set_terminated(rid, status=rec["status"], end_time=rec["end"])
            path.unlink()
            done += 1
        except Exception as e:  # noqa: BLE001
            failed += 1
            log.warning("tracking failed (run record %s: %s: %s); record kept for the next sync", path.name, type(e).__name__, e)
    _close_parents(client, parents, invocations, spool)
    log.info("tracking: %d runs logged to %s, %d kept for retry", done, tracking_uri(), failed)
    return {"runs": done, "failed": failed}


def _close_parents(client, parents: dict, invocations: dict, spool: Path) -> None:
    for inv_id, meta in invocations.items():
        if meta.get("status") in (None, "RUNNING") or inv_id not in parents:
            continue
        try:
            for run_id in parents[inv_id].values():
                client.set_terminated(run_id, status=meta["status"], end_time=meta.get("end") or int(time.time() * 1000))
            (spool / f"invocation-{inv_id}.json").unlink(missing_ok=True)
        except Exception as e:  # noqa: BLE001
            log.warning("tracking failed (closing parent run of %s): %s", inv_id, e)


def register(sub) -> None:
    p = sub.add_parser("tracking-sync", help="log spooled job runs to MLflow (MLFLOW_TRACKING_URI or ./mlruns)")
    p.add_argument("--spool", default=None, help="spool folder (default .medseg/tracking)")
    p.set_defaults(func=lambda a: 1 if sync(a.spool)["failed"] else 0)
