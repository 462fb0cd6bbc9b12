"""The frame every workflow script runs in: logging to the rule's log, one nested MLflow run.

A Snakemake script is three lines::

    from medseg.pipeline.job import job
    with job(snakemake) as p:
        some_stage(..., **p)

``p`` is ``snakemake.params`` as a dict (minus the tracking keys); it is logged as MLflow
params, and the run is tagged with the rule, wildcards and provenance.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medseg import tracking
from medseg.logs import setup_logging
from medseg.tracking.provenance import collect, digest

log = logging.getLogger(__name__)

SYSTEM_METRICS_RULES = frozenset({"train_model"})  # jobs whose runs get psutil system metrics


def export_package_path() -> None:
    """Put this package's source folder on ``PYTHONPATH`` so every job imports the same medseg
    (also inside conda envs and on cluster nodes, where Snakemake re-reads the workflow)."""
    src = str(Path(__file__).resolve().parents[2])
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([src, *parts])


def set_threads(n: int) -> None:
    """Use ``n`` threads in SimpleITK and torch (the rule's ``threads``): no oversubscription when
    Snakemake runs several jobs side by side."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(n)))
    os.environ["OMP_NUM_THREADS"] = str(max(1, int(n)))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, int(n)))


def config_seeds(config: dict) -> dict[str, Any]:
    """The seeds a workflow config sets (training, per-dataset split and demo seeds)."""
    seeds: dict[str, Any] = {"training": (config.get("training") or {}).get("seed", 0)}
    for name, ds in (config.get("datasets") or {}).items():
        seeds[f"{name}.split"] = (ds.get("split") or {}).get("seed", 0)
        if ds.get("source", "demo") == "demo":
            seeds[f"{name}.demo"] = (ds.get("demo") or {}).get("seed")
    return seeds


def job_provenance(smk: Any, wildcards: dict) -> dict:
    """What the job's MLflow run records: config hash, git state, package versions, seeds, the
    checksums of its input files, rule and wildcards (see :func:`medseg.tracking.provenance.collect`)."""
    config = dict(getattr(smk, "config", {}) or {})
    inputs = [f for f in smk.input if Path(f).is_file()]
    return collect(config, inputs, config_seeds(config), smk.rule, wildcards)


@contextlib.contextmanager
def job(smk: Any) -> Iterator[dict]:
    """Set up logging and tracking for a Snakemake script job; yield its params as a dict."""
    setup_logging(smk.log[0] if smk.log else None)
    set_threads(smk.threads)
    params = dict(smk.params.items())
    experiment = params.pop("experiment", "medseg")
    wildcards = dict(smk.wildcards.items())
    name = smk.rule + "".join(f":{v}" for v in wildcards.values())
    prov = job_provenance(smk, wildcards) if tracking.enabled() else {}
    tags = {"medseg.rule": smk.rule, **{f"wildcard.{k}": str(v) for k, v in wildcards.items()}}
    if prov:
        tags.update({"git.commit": str(prov["git"]["commit"]), "git.dirty": str(prov["git"]["dirty"]),
                     "config.hash": prov["config_hash"], "inputs.sha256": digest(prov["inputs"]),
                     "inputs.count": str(len(prov["inputs"])),
                     **{f"seed.{k}": str(v) for k, v in prov["seeds"].items()},
                     **{f"package.{k}": str(v) for k, v in prov["packages"].items()}})
    log.info("job %s starting", name)
    with tracking.job_run(experiment, name, tags, system_metrics=smk.rule in SYSTEM_METRICS_RULES):
        tracking.log_params(params)
        if prov:
            tracking.log_dict(prov, "provenance.json")
        try:
            yield params
        except Exception:
            log.exception("job %s failed", name)
            raise
        for path in (smk.log or []):
            tracking.log_artifact(path, "logs")
    log.info("job %s done", name)
