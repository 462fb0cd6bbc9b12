"""A model key's run on a dataset: the network and how it trains and predicts, resolved once.

``models.<key>`` holds the network's keys (its ``arch``'s config, :mod:`medseg.models`), and may
hold ``training:`` / ``inference:`` mappings overriding the global sections for that model, and
``patch_size``. Precedence, low to high: the dataclass defaults, the registry entry's paper
defaults (loss, blending, patch), ``training`` / ``inference``, the dataset's own ``training``
(slide datasets), ``models.<key>.*``.

Resolved here, and nowhere else:

* the loss: ``training.loss`` or the architecture's ``default_loss``;
* the training patch: 3-D networks take ``training.patch_size`` when it has 3 values, else
  ``models.<key>.patch_size``, else the entry's ``default_patch``; 2-D networks take
  ``training.patch_size`` (2 values: in-plane crops) or whole slices;
* the inference window: ``inference.patch_size`` with as many values as the network has
  dimensions, else the training patch (3-D) or whole slices (2-D); networks that see whole
  slices (EDPCNN) have none;
* the blending: ``inference.mode`` or the entry's ``default_blending``;
* context slices: 0 for 3-D networks.

Networks are size-agnostic: the patch is the run's, never the model's.

A 3-D patch or window larger than the dataset's working grid is clipped to it (rounded up to the
network's total stride) with a warning naming the key: every window would otherwise be mostly
padding (a 256^3 patch on an 80x80x53 grid: 190 s a training step instead of 5). The working grid
(:func:`working_grid`) is known for registered datasets (the atlas grid at
``preprocessing.register.atlas_spacing_mm``, :func:`atlas_grid`); without registration each case
has its own, so the plan takes the first case's (its extent at ``spacing_mm``, or its own grid):
an approximation, since cases differ.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medseg.config import from_mapping
from medseg.inference.config import InferenceConfig
from medseg.models import Arch, get_arch, model_config_from_mapping, with_io_channels
from medseg.training.config import TrainConfig

log = logging.getLogger(__name__)

MODEL_SECTIONS = ("training", "inference")


@dataclass(frozen=True)
class ModelRun:
    """How one model key trains and predicts.

    Attributes:
        key: the ``models`` key (``timm``, ``unet3d`` ...).
        model: the network's config keys (``arch`` and its hyper-parameters; no patch, no channels).
        spatial_dims: 2 (slices, with ``training.context`` slices each side) or 3 (patches).
        training: ``training`` with this model's overrides; ``loss``, ``patch_size`` and ``context`` resolved.
        inference: ``inference`` with this model's overrides; ``patch_size`` (the window) and ``mode`` resolved.
    """

    key: str
    model: Mapping[str, Any]
    spatial_dims: int
    training: TrainConfig
    inference: InferenceConfig

    @property
    def arch(self) -> Arch:
        return get_arch(self.model.get("arch", "timm_unet"))

    def in_channels(self, n_modalities: int) -> int:
        """Network input channels: the modalities, times ``2 * context + 1`` slices for 2-D networks."""
        return n_modalities * (2 * self.training.context + 1)

    def network_config(self, n_modalities: int, n_outputs: int):
        """The typed network config (imports the architecture) with the task's channels."""
        cfg = model_config_from_mapping(dict(self.model), f"models.{self.key}.")
        return with_io_channels(cfg, self.in_channels(n_modalities), n_outputs)

    def to_dict(self) -> dict:
        return {"key": self.key, "model": dict(self.model), "spatial_dims": self.spatial_dims,
                "training": dataclasses.asdict(self.training), "inference": dataclasses.asdict(self.inference)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelRun:
        return cls(d["key"], dict(d["model"]), int(d["spatial_dims"]),
                   from_mapping(TrainConfig, d["training"], "training."),
                   from_mapping(InferenceConfig, d["inference"], "inference."))


def merge_sections(base: Mapping | None, override: Mapping | None) -> dict:
    """``base`` updated with ``override``, one level deep for nested mappings (``augment3d`` ...)."""
    out = dict(base or {})
    for k, v in (override or {}).items():
        out[k] = {**out[k], **v} if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _training_patch(t: Mapping, own: Any, entry: Arch, dims: int, path: str) -> tuple[int, ...] | None:
    patch = t.get("patch_size")
    if dims == 3:
        patch = patch if patch is not None and len(patch) == 3 else (own or entry.default_patch)
        if patch is None or len(patch) != 3:
            raise ValueError(f"{path}.patch_size of a 3-D network must be 3 sizes (d, h, w), got {patch}")
    else:  # 2-D: in-plane crops, training.patch_size or the model key's own; None: whole slices
        patch = patch if patch is not None else own
        if patch is not None and len(patch) != 2:
            raise ValueError(f"training.patch_size of a 2-D network ({path}) must be (h, w), got {list(patch)}")
    return tuple(int(p) for p in patch) if patch is not None else None


def _window(i: Mapping, train_patch: tuple[int, ...] | None, entry: Arch, dims: int, path: str):
    window = i.get("patch_size")
    if entry.whole_slices:
        if window is not None:
            log.info("%s sees whole slices: inference.patch_size %s is not used", path, window)
        return None
    if window is not None and len(window) == dims:
        return tuple(int(p) for p in window)
    if window is not None and dims == 2:
        raise ValueError(f"inference.patch_size of a 2-D network ({path}) must be (h, w), got {list(window)}")
    return train_patch if dims == 3 else None


def resolve_run(config: Mapping[str, Any], key: str, dataset_training: Mapping | None = None,
                context: int | None = None) -> ModelRun:
    """The run of ``models.<key>`` (see the module doc); ``dataset_training``: a dataset's own
    ``training`` overrides, ``context``: a fixed number of context slices (slides: 0)."""
    path = f"models.{key}"
    mapping = dict((config.get("models") or {}).get(key) or {})
    over = {k: dict(mapping.pop(k) or {}) for k in MODEL_SECTIONS if k in mapping}
    own_patch = mapping.pop("patch_size", None)
    mapping.setdefault("arch", "timm_unet")
    entry = get_arch(mapping["arch"])
    dims = int(mapping.get("spatial_dims", entry.dims))
    t = merge_sections(merge_sections(config.get("training"), dataset_training), over.get("training"))
    t["loss"] = t.get("loss") or entry.default_loss
    t["patch_size"] = _training_patch(t, own_patch, entry, dims, path)
    if dims == 3:
        t["context"] = 0
    elif context is not None:
        t["context"] = context
    i = merge_sections(config.get("inference"), over.get("inference"))
    i["patch_size"] = _window(i, t["patch_size"], entry, dims, path)
    i["mode"] = i.get("mode") or entry.default_blending
    return ModelRun(key, mapping, dims, from_mapping(TrainConfig, t, f"{path}.training."),
                    from_mapping(InferenceConfig, i, f"{path}.inference."))


# ---- the window against the working grid -----------------------------------------------------------
#: extent (x, y, z, mm) of the ICBM152 brain and the margin around it: the atlas grid that
#: registration writes (:func:`medseg.preprocess.atlas.atlas_images`, a test keeps them equal)
ATLAS_BRAIN_MM = (144.0, 181.0, 144.0)
ATLAS_MARGIN_MM = 10.0
#: (size, spacing, direction) of a scan, x, y, z order (SimpleITK's), mm
NativeGrid = tuple[Sequence[int], Sequence[float], Sequence[float]]


def atlas_grid(spacing_mm: float) -> tuple[int, int, int]:
    """``(z, y, x)`` voxels of the atlas grid at ``spacing_mm`` (within one voxel; no image read)."""
    pad = 2 * math.ceil(ATLAS_MARGIN_MM / spacing_mm)
    x, y, z = (int(round(e / spacing_mm)) + pad for e in ATLAS_BRAIN_MM)
    return z, y, x


def working_grid(recipe, native: NativeGrid | None) -> tuple[int, int, int] | None:
    """``(z, y, x)`` voxels of the grid a recipe's networks see: the atlas grid with registration, else
    ``native`` (a case's scan) reoriented to the working orientation (axes along world x, y, z) and
    resampled to ``recipe.spacing_mm`` (an axis without one keeps the scan's); None: unknown."""
    if recipe.steps.register:
        return atlas_grid(recipe.register.atlas_spacing_mm)
    if native is None:
        return None
    import numpy as np

    size, spacing, direction = (np.asarray(v, float) for v in native)
    axes = np.abs(np.reshape(direction, (3, 3)))  # column j: index axis j in world coordinates
    extent, own = axes @ (size * spacing), axes @ spacing
    target = [t if t else o for t, o in zip(recipe.spacing_mm or (None,) * 3, own)]
    x, y, z = (max(1, int(round(e / t))) for e, t in zip(extent, target))
    return z, y, x


def _divisor(run: ModelRun, task) -> int:
    """The network's total stride (imports the architecture: only when a patch must be clipped)."""
    try:
        return int(getattr(run.network_config(len(task.modalities), task.n_outputs), "divisor", 1))
    except Exception:  # a bad network key is reported by the config check; 32 is a multiple of any stride <= 32
        return 32


def fit_to_grid(run: ModelRun, grid: Sequence[int] | None, dataset: str, task) -> ModelRun:
    """``run`` with its 3-D training patch and inference window clipped to ``grid`` (``(z, y, x)``
    voxels), each axis rounded up to the network's total stride; a warning names what was clipped."""
    if grid is None or run.spatial_dims != 3:
        return run
    patches = {"training": run.training.patch_size, "inference": run.inference.patch_size}
    if not any(p and any(a > g for a, g in zip(p, grid)) for p in patches.values()):
        return run
    d = _divisor(run, task)
    fit = {k: tuple(min(a, -(-g // d) * d) for a, g in zip(p, grid)) if p else p for k, p in patches.items()}
    names = {"training": "training patch", "inference": "inference window"}
    clipped = [f"{names[k]} {list(p)} -> {list(fit[k])}" for k, p in patches.items() if p != fit[k]]
    log.warning("models.%s: %s: larger than the working grid %s (z, y, x voxels) of dataset %s, clipped to it (rounded "
                "up to the network's stride %d): every window would be mostly padding. Set training.patch_size / "
                "inference.patch_size (or models.%s.patch_size) to at most that to silence this",
                run.key, "; ".join(clipped), list(grid), dataset, d, run.key)
    return dataclasses.replace(run, training=dataclasses.replace(run.training, patch_size=fit["training"]),
                               inference=dataclasses.replace(run.inference, patch_size=fit["inference"]))


def fit_runs(runs: Mapping[str, ModelRun], recipe, task, native: Callable[[str], NativeGrid | None] | None,
             dataset: str) -> dict[str, ModelRun]:
    """Every run of a dataset fitted to its working grid (:func:`fit_to_grid`); ``native(modality)``:
    a case's scan grid, asked only for an unregistered dataset with a 3-D model."""
    if not any(r.spatial_dims == 3 for r in runs.values()):
        return dict(runs)
    grid = working_grid(recipe, native(recipe.reference) if native and not recipe.steps.register else None)
    return {k: fit_to_grid(r, grid, dataset, task) for k, r in runs.items()}
