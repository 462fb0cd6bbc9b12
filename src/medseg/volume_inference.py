"""Run networks over whole atlas-space volumes through the stitching engine.

2-D/2.5-D models: the volume ``(C, Z, Y, X)`` becomes its 2.5-D stack ``(C*(2c+1), Z, Y, X)`` and
is stitched with windows ``(1, h, w)``: the predictor squeezes the slice axis, runs the 2-D net,
and restores it; ``(h, w)`` is ``inference.patch_size`` (2 values) or the whole slice.
3-D models (``spatial_dims == 3``): windows ``(d, h, w)`` of ``inference.patch_size`` (3 values) or
the model's ``patch_size`` (clipped to the volume), overlapping by ``inference.overlap`` and
blended with ``inference.mode`` or, when that is unset, the model's ``default_blending``
(``constant`` for tiramisu3d: the seed's averaging of overlapping sub-volumes; ``gaussian``
otherwise). Several models (cross-validation folds) are averaged in probability space.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medseg.edpcnn_inference import is_edpcnn, predict_volume_edpcnn
from medseg.stitch import sliding_window_inference
from medseg.tiling import context_volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceConfig:
    """Config key ``inference``.

    Attributes:
        patch_size: window in voxels: 2 values ``(h, w)``: in-plane window of 2-D/2.5-D models
            (``None`` = the whole slice, one window per slice); 3 values ``(d, h, w)``: the window
            of 3-D models (``None`` or 2 values: the model's ``patch_size``).
        overlap: window overlap fraction in [0, 1).
        mode: blending weights (``gaussian``, ``constant``, ``pyramid``, ``cosine``); ``None`` =
            the model's ``default_blending``.
        sigma_scale: Gaussian sigma as a fraction of the window.
        margin: voxels dropped at window sides inside the volume (the receptive-field radius of a
            zero-padded, stride-free net makes stitched equal untiled; 0 = off).
        batch_size: windows per forward pass.
        tta: mirror test-time augmentation.
        threshold: probability above which a region is predicted.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
    """

    patch_size: tuple[int, ...] | None = None
    overlap: float = 0.5
    mode: str | None = None
    sigma_scale: float = 0.125
    margin: int = 0
    batch_size: int = 16
    tta: bool = False
    threshold: float = 0.5
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.patch_size is not None and (len(self.patch_size) not in (2, 3) or any(int(p) < 1 for p in self.patch_size)):
            raise ValueError(f"inference.patch_size must be 2 (h, w) or 3 (d, h, w) positive sizes, got {self.patch_size}")
        if self.mode is not None:
            from medseg.stitch.weights import check_mode

            check_mode(self.mode)
        if self.margin < 0:
            raise ValueError(f"inference.margin must be >= 0, got {self.margin}")


def blending(model: torch.nn.Module, cfg: InferenceConfig) -> str:
    """``inference.mode``, or the model's ``default_blending`` when unset (``gaussian`` without one)."""
    return cfg.mode or getattr(model, "default_blending", "gaussian")


def window(model: torch.nn.Module, spatial: Sequence[int], cfg: InferenceConfig) -> tuple[int, ...]:
    """The stitching window for ``model`` over a volume of shape ``spatial`` ``(Z, Y, X)``.

    3-D: ``inference.patch_size`` (3 values) or the model's ``patch_size``, clipped to the volume;
    2-D: ``(1, h, w)`` with ``inference.patch_size`` (2 values) or the whole slice.
    """
    p = cfg.patch_size
    if getattr(model, "spatial_dims", 2) == 3:
        size = p if p is not None and len(p) == 3 else getattr(model, "patch_size", None)
        if size is None or len(size) != 3:
            raise ValueError(f"a 3-D model needs inference.patch_size or its own patch_size (3 sizes), got {size}")
        return tuple(min(int(a), int(s)) for a, s in zip(size, spatial))
    if p is not None and len(p) != 2:
        raise ValueError(f"inference.patch_size of a 2-D/2.5-D model must be (h, w), got {p}")
    return (1, *(int(a) for a in (p or spatial[1:])))


def check_cuda() -> str:
    """Fail early, with what to do, when CUDA was asked for but is not usable; return the GPU name."""
    if not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but CUDA is not available on this node "
                           f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); request a GPU node "
                           "(resources.gpu and the SLURM profile's gres) or set training.device: auto to fall back to CPU")
    torch.zeros(1, device="cuda")
    return torch.cuda.get_device_name(0)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("SLURM_JOB_GPUS"):
            log.warning("a GPU was allocated (CUDA_VISIBLE_DEVICES=%s) but CUDA is not usable: running on CPU",
                        os.environ.get("CUDA_VISIBLE_DEVICES"))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; set device: auto or cpu")
    return torch.device(name)


ACTIVATIONS = ("sigmoid", "softmax")


def predict_volume(models: Sequence[torch.nn.Module], volume: np.ndarray, context: int, cfg: InferenceConfig,
                   activation: str = "sigmoid", progress: bool = False) -> np.ndarray:
    """Probabilities ``(K, Z, Y, X)`` float32 for a normalised volume ``(C, Z, Y, X)``.

    ``activation``: ``sigmoid`` (regions, independent channels) or ``softmax`` (labels, over
    channels), from the task (:attr:`medseg.tasks.Task.activation`); applied per window before
    blending, so overlapping windows average probabilities. EDPCNN models (one star-shaped object
    per slice) run whole slices instead: :func:`medseg.edpcnn_inference.predict_volume_edpcnn`.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if any(is_edpcnn(m) for m in models):
        if not all(is_edpcnn(m) for m in models):
            raise ValueError("cannot ensemble EDPCNN models with other models")
        return predict_volume_edpcnn(models, volume, context, cfg, activation)
    device = resolve_device(cfg.device)
    total = None
    for model in models:
        model.eval().to(device)
        three_d = getattr(model, "spatial_dims", 2) == 3
        if three_d and context:
            raise ValueError(f"a 3-D model takes no context slices, got context {context}")
        stack = torch.from_numpy(context_volume(volume.astype(np.float32), context))
        patch = window(model, stack.shape[1:], cfg)

        def predictor(x: torch.Tensor, model=model, three_d=three_d) -> torch.Tensor:
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                logits = model(x if three_d else x[:, :, 0])
            logits = logits.float()
            probs = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, 1)
            return probs if three_d else probs.unsqueeze(2)

        mode = blending(model, cfg)
        log.debug("stitching windows %s, overlap %s, %s blending", patch, cfg.overlap, mode)
        probs = sliding_window_inference(stack, predictor, patch, overlap=cfg.overlap, mode=mode,
                                         sigma_scale=cfg.sigma_scale, batch_size=cfg.batch_size, tta=cfg.tta,
                                         device=device, out_device="cpu", progress=progress, margin=cfg.margin)
        total = probs if total is None else total + probs
    return (total / len(models)).numpy()
