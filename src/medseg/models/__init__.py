"""Model registry: config ``models.<key>.arch`` -> builder. Unknown names list the valid ones."""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from medseg.models.unet import ModelConfig, TimmUNet

REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {"timm_unet": TimmUNet}


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.arch not in REGISTRY:
        raise ValueError(f"models.arch must be one of {sorted(REGISTRY)}, got {cfg.arch!r}")
    return REGISTRY[cfg.arch](cfg)


__all__ = ["ModelConfig", "TimmUNet", "build_model", "REGISTRY"]
