"""Model registry: config ``models.<key>.arch`` -> (config dataclass, model class).

Every architecture has its own frozen config dataclass (typed hyper-parameters with the paper's
defaults) and a model class built from it. Every config and model exposes ``arch``,
``in_channels``, ``out_channels`` (set by the trainer from the task: modalities [x context
slices] and K), ``spatial_dims`` (2 or 3) and ``patch_size`` (voxels ``(D, H, W)`` / pixels
``(H, W)``, or ``None`` for whole slices); models also state ``default_loss`` (a key of
``medseg.losses.LOSSES``) and ``default_blending`` (the stitching blending their paper used).

    arch              config                  model            dims  paper
    timm_unet         ModelConfig             TimmUNet         2     timm encoder U-Net (2-D/2.5-D)
    unet3d            UNet3DConfig            UNet3D           3     Kayalibay et al., seed 004
    tiramisu3d        Tiramisu3DConfig        Tiramisu3D       3     Eschen / Jégou et al., seed 001
    factorized_unet   FactorizedUNetConfig    FactorizedUNet   3     Avetisian, seed 003
    edpcnn            EDPCNNModelConfig       EDPCNN           2     Nguyen & Ray, seed 000 (one star-shaped object;
                                                                    trained by medseg.train_edpcnn)

Unknown names raise ``ValueError`` listing the valid ones.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from medseg.config import from_mapping
from medseg.models.edpcnn import EDPCNN, EDPCNNModelConfig
from medseg.models.factorized_unet import FactorizedUNet, FactorizedUNetConfig
from medseg.models.tiramisu3d import Tiramisu3D, Tiramisu3DConfig
from medseg.models.unet import ModelConfig, TimmUNet
from medseg.models.unet3d import UNet3D, UNet3DConfig


class Arch(NamedTuple):
    """One registry entry: the frozen config dataclass and the ``nn.Module`` built from it."""

    config: type
    model: type[nn.Module]


REGISTRY: dict[str, Arch] = {
    "timm_unet": Arch(ModelConfig, TimmUNet),
    "unet3d": Arch(UNet3DConfig, UNet3D),
    "tiramisu3d": Arch(Tiramisu3DConfig, Tiramisu3D),
    "factorized_unet": Arch(FactorizedUNetConfig, FactorizedUNet),
    "edpcnn": Arch(EDPCNNModelConfig, EDPCNN),
}
AnyModelConfig = ModelConfig | UNet3DConfig | Tiramisu3DConfig | FactorizedUNetConfig | EDPCNNModelConfig


def get_arch(arch: str) -> Arch:
    """The registry entry of ``arch``; ``ValueError`` listing the valid names otherwise."""
    if arch not in REGISTRY:
        raise ValueError(f"models.arch must be one of {sorted(REGISTRY)}, got {arch!r}")
    return REGISTRY[arch]


def model_config_from_mapping(mapping: Mapping[str, Any] | None, path: str = "models.") -> AnyModelConfig:
    """Build the config dataclass that ``mapping["arch"]`` names (``timm_unet`` when absent).

    Lists become tuples, unknown keys are errors naming ``path + key`` (``medseg.config.from_mapping``),
    and each config validates its values. Also reads back ``dataclasses.asdict`` of a config (the
    ``model_config`` saved in ``model.pt``).
    """
    mapping = dict(mapping or {})
    try:
        spec = get_arch(mapping.get("arch", "timm_unet"))
    except ValueError as e:
        raise ValueError(f"{path}{e}".replace(f"{path}models.", path)) from e
    return from_mapping(spec.config, mapping, path)


def with_io_channels(cfg: AnyModelConfig, in_channels: int, out_channels: int) -> AnyModelConfig:
    """A copy of ``cfg`` with the trainer's ``in_channels`` / ``out_channels`` (from the task)."""
    return dataclasses.replace(cfg, in_channels=in_channels, out_channels=out_channels)


def build_model(cfg: AnyModelConfig) -> nn.Module:
    """Instantiate the model of ``cfg.arch`` (``channels_last`` configs are converted to that layout)."""
    spec = get_arch(cfg.arch)
    if not isinstance(cfg, spec.config):
        raise ValueError(f"models.arch {cfg.arch!r} needs a {spec.config.__name__}, got a {type(cfg).__name__}; "
                         f"build it with medseg.models.model_config_from_mapping")
    model = spec.model(cfg)
    if getattr(cfg, "channels_last", False):
        fmt = torch.channels_last_3d if cfg.spatial_dims == 3 else torch.channels_last
        model = model.to(memory_format=fmt)
    return model


__all__ = ["Arch", "REGISTRY", "AnyModelConfig", "ModelConfig", "TimmUNet", "UNet3DConfig", "UNet3D",
           "Tiramisu3DConfig", "Tiramisu3D", "FactorizedUNetConfig", "FactorizedUNet", "EDPCNNModelConfig", "EDPCNN",
           "build_model",
           "get_arch", "model_config_from_mapping", "with_io_channels"]
