"""The ``tracking`` section of the workflow config, typed: MLflow on or off, the experiment names
and whether trained bundles are registered in the model registry."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrackingConfig:
    """Config key ``tracking``.

    Attributes:
        enabled: log runs to MLflow.
        experiment_prefix: an MLflow experiment per dataset, named prefix + dataset.
        register_model: register each exported bundle's logged model (named
            :func:`medseg.tracking.model_name`, e.g. ``brats_timm``) in the MLflow model registry.
    """

    enabled: bool = True
    experiment_prefix: str = "medseg-"
    register_model: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrackingConfig:
        """The ``tracking`` section of a workflow config (absent keys: the defaults above)."""
        section = dict(config.get("tracking") or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - names)
        if unknown:
            raise ValueError(f"config key tracking: unknown key(s) {unknown}; valid: {sorted(names)}")
        return cls(**section)
