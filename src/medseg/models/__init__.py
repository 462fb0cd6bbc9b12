"""Model registry: config ``models.<key>.arch`` -> one :class:`Arch` entry.

Every architecture is one file (its frozen config dataclass with the paper's defaults, and the
``nn.Module`` built from it) and one line here. The entry says what is special about the
architecture, so the core never asks which model it runs:

* ``dims``: its config's default ``spatial_dims`` (2: slices, 3: volumes; a test keeps them equal);
* what its paper trained and blended with: ``default_loss`` (a key of
  :data:`medseg.training.losses.LOSSES`), ``default_blending`` (a stitching mode) and
  ``default_patch`` (voxels ``(D, H, W)``; ``None``: whole slices or ``training.patch_size`` crops);
  the plan (:mod:`medseg.plan.runs`) resolves them, networks take any input size;
* ``whole_slices``: the network sees whole slices at inference (no windows, no blending);
* its hooks, as ``"module:function"`` (imported when called, so models never import training
  or inference): ``trainer`` (default: the common loop, :func:`medseg.training.loop.fit`) and
  ``predictor`` (default: the stitched sliding-window predictor,
  :func:`medseg.inference.volume.predict_stitched`).

    arch              config                  model            paper
    timm_unet         ModelConfig             TimmUNet         timm encoder U-Net (2-D/2.5-D)
    unet3d            UNet3DConfig            UNet3D           Kayalibay et al., seed 004
    tiramisu3d        Tiramisu3DConfig        Tiramisu3D       Eschen / Jégou et al., seed 001
    factorized_unet   FactorizedUNetConfig    FactorizedUNet   Avetisian, seed 003
    edpcnn            EDPCNNModelConfig       EDPCNN           Nguyen & Ray, seed 000 (one star-shaped object
                                                               per slice; its own trainer and predictor)

Importing this module is cheap: an entry's config and network classes are imported when first
asked for (:meth:`Arch.config_class`, :meth:`Arch.network_class`). Unknown names raise
``ValueError`` listing the valid ones.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from medseg.config import from_mapping

DEFAULT_TRAINER = "medseg.training.loop:fit"
DEFAULT_PREDICTOR = "medseg.inference.volume:predict_stitched"


def load_hook(path: str) -> Callable:
    """The function a ``"package.module:function"`` hook names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Arch:
    """One registry entry (see the module doc)."""

    module: str
    config: str
    network: str
    dims: int = 2
    default_loss: str = "dice_bce"
    default_blending: str = "gaussian"
    default_patch: tuple[int, ...] | None = None
    whole_slices: bool = False
    trainer: str = DEFAULT_TRAINER
    predictor: str = DEFAULT_PREDICTOR

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def network_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.network)


REGISTRY: dict[str, Arch] = {
    "timm_unet": Arch("medseg.models.unet", "ModelConfig", "TimmUNet"),
    "unet3d": Arch("medseg.models.unet3d", "UNet3DConfig", "UNet3D", dims=3, default_loss="jaccard",
                   default_patch=(128, 128, 128)),
    "tiramisu3d": Arch("medseg.models.tiramisu3d", "Tiramisu3DConfig", "Tiramisu3D", dims=3, default_blending="constant",
                       default_patch=(16, 64, 64)),
    "factorized_unet": Arch("medseg.models.factorized_unet", "FactorizedUNetConfig", "FactorizedUNet", dims=3,
                            default_loss="multiclass_iou", default_patch=(32, 128, 128)),
    "edpcnn": Arch("medseg.models.edpcnn", "EDPCNNModelConfig", "EDPCNN", default_blending="constant",
                   whole_slices=True, trainer="medseg.training.edpcnn:train_edpcnn",
                   predictor="medseg.inference.edpcnn:predict_volume_edpcnn"),
}
AnyModelConfig = Any  # one of the entries' config dataclasses


def get_arch(arch: str) -> Arch:
    """The registry entry of ``arch``; ``ValueError`` listing the valid names otherwise."""
    if arch not in REGISTRY:
        raise ValueError(f"models.arch must be one of {sorted(REGISTRY)}, got {arch!r}")
    return REGISTRY[arch]


def arch_of(model: Any) -> str:
    """The registry key of a built network (``ValueError`` for a module no entry builds)."""
    for name, entry in REGISTRY.items():
        if type(model).__name__ == entry.network and type(model).__module__ == entry.module:
            return name
    raise ValueError(f"{type(model).__name__} is not a network of the model registry {sorted(REGISTRY)}")


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
    return from_mapping(spec.config_class(), mapping, path)


def with_io_channels(cfg: AnyModelConfig, in_channels: int, out_channels: int) -> AnyModelConfig:
    """A copy of ``cfg`` with the trainer's ``in_channels`` / ``out_channels`` (from the task)."""
    return dataclasses.replace(cfg, in_channels=in_channels, out_channels=out_channels)


def build_model(cfg: AnyModelConfig):
    """Instantiate the network of ``cfg.arch`` (``channels_last`` configs are converted to that layout)."""
    import torch

    spec = get_arch(cfg.arch)
    if not isinstance(cfg, spec.config_class()):
        raise ValueError(f"models.arch {cfg.arch!r} needs a {spec.config}, got a {type(cfg).__name__}; "
                         f"build it with medseg.models.model_config_from_mapping")
    model = spec.network_class()(cfg)
    if getattr(cfg, "channels_last", False):
        fmt = torch.channels_last_3d if cfg.spatial_dims == 3 else torch.channels_last
        model = model.to(memory_format=fmt)
    return model
