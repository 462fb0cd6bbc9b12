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


def set_threads(n: int) -> None:
    """Use ``n`` threads in every library a job computes with (the rule's ``threads``), so that
    ``--cores N`` means N when Snakemake runs jobs side by side: SimpleITK and ITK (elastix), torch
    (intra-op, and inter-op while it can still be set), BLAS/OpenMP pools already loaded
    (threadpoolctl) and, for libraries loaded later, ``OMP_NUM_THREADS`` and the BLAS variables."""
    import SimpleITK as sitk

    n = max(1, int(n))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)
    if "itk" in sys.modules:
        sys.modules["itk"].MultiThreaderBase.SetGlobalDefaultNumberOfThreads(n)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # only before the first parallel work of the process
            pass
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(n)


def thread_settings() -> dict[str, int]:
    """The threads each loaded library would use now (what :func:`set_threads` sets; logged per job)."""
    import SimpleITK as sitk

    out = {"sitk": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
           "omp_env": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out.update(torch=torch.get_num_threads(), torch_interop=torch.get_num_interop_threads())
    if "itk" in sys.modules:
        out["itk"] = sys.modules["itk"].MultiThreaderBase.GetGlobalDefaultNumberOfThreads()
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return out
    for pool in threadpool_info():
        out[f"{pool['internal_api']}:{Path(pool['filepath']).name}"] = int(pool["num_threads"])
    return out


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
    log.info("job %s starting on %d thread(s): %s", name, smk.threads, thread_settings())
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
