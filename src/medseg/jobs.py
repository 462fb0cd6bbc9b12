"""The frame every workflow script runs in: logging to the rule's log, one nested MLflow run.

A Snakemake script is three lines::

    from medseg.jobs import job
    with job(snakemake) as p:
        some_stage(..., **p)

``p`` is ``snakemake.params`` as a dict (minus the tracking keys); it is logged as MLflow
params, and the run is tagged with the rule, wildcards and provenance.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from medseg import tracking
from medseg.logs import setup_logging
from medseg.provenance import git_state

log = logging.getLogger(__name__)


@contextlib.contextmanager
def job(smk: Any) -> Iterator[dict]:
    """Set up logging and tracking for a Snakemake script job; yield its params as a dict."""
    setup_logging(smk.log[0] if smk.log else None)
    params = dict(smk.params.items())
    experiment = params.pop("experiment", "medseg")
    wildcards = dict(smk.wildcards.items())
    name = smk.rule + "".join(f":{v}" for v in wildcards.values())
    git = git_state()
    tags = {"medseg.rule": smk.rule, "git.commit": str(git["commit"]), "git.dirty": str(git["dirty"]),
            **{f"wildcard.{k}": str(v) for k, v in wildcards.items()}}
    log.info("job %s starting", name)
    with tracking.job_run(experiment, name, tags):
        tracking.log_params(params)
        try:
            yield params
        except Exception:
            log.exception("job %s failed", name)
            raise
        for path in (smk.log or []):
            tracking.log_artifact(path, "logs")
    log.info("job %s done", name)
