"""A workflow invocation in MLflow: one parent run per dataset it works on, opened when the
workflow starts (``onstart``), closed when it ends; a background thread logs the jobs' spooled
records meanwhile (:mod:`medseg.tracking.sync`). Called from ``workflow/rules/tracking.smk``."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from medseg import tracking
from medseg.tracking import provenance
from medseg.tracking import sync as tracking_sync
from medseg.tracking.config import TrackingConfig


def enabled(config: Mapping[str, Any]) -> bool:
    """``tracking.enabled`` of the config (:class:`medseg.tracking.config.TrackingConfig`)."""
    return TrackingConfig.from_config(config).enabled


def disable() -> None:
    tracking.disable()


def start(config: Mapping[str, Any], workflow: Any, datasets: Any) -> None:
    """Open the invocation's parent runs (named after the targets) and start the background syncer.

    ``workflow``: Snakemake's workflow object (its targets and folder); ``datasets``: the
    :class:`medseg.pipeline.dag.Workflow` (which datasets the targets belong to).
    """
    targets = sorted(str(t) for t in (workflow.dag_settings.targets or ()))
    git = provenance.git_state(workflow.basedir)
    tags = {"mlflow.source.name": os.path.join(workflow.basedir, "Snakefile"), "mlflow.source.type": "PROJECT",
            "config.hash": provenance.config_hash(config), "git.dirty": str(git["dirty"])}
    if git["commit"]:
        tags["mlflow.source.git.commit"] = git["commit"]
    track = TrackingConfig.from_config(config)
    tracking.start_invocation((", ".join(targets) or "all")[:200], tags, config=config,
                              experiments={d: track.experiment_prefix + d for d in datasets.invocation_datasets(targets)},
                              register_model=track.register_model)
    tracking_sync.start_background()


def end(status: str) -> None:
    """Stop the syncer, close the invocation with ``status`` and log what is left."""
    tracking_sync.stop_background()
    tracking.end_invocation(status)
    tracking_sync.sync()
