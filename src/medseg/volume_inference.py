"""Run 2-D/2.5-D networks over whole atlas-space volumes through the stitching engine.

The volume ``(C, Z, Y, X)`` becomes its 2.5-D stack ``(C*(2c+1), Z, Y, X)`` and is stitched with
windows ``(1, h, w)``: the predictor squeezes the slice axis, runs the 2-D net, and restores it.
Several models (cross-validation folds) are averaged in probability space.
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
        patch_size: in-plane window (h, w) in voxels; ``None`` = the whole slice (one window).
        overlap: window overlap fraction in [0, 1).
        mode: blending weights (``gaussian``, ``constant``, ``pyramid``, ``cosine``).
        sigma_scale: Gaussian sigma as a fraction of the window.
        batch_size: windows per forward pass.
        tta: mirror test-time augmentation.
        threshold: probability above which a region is predicted.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
    """

    patch_size: tuple[int, int] | None = None
    overlap: float = 0.5
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 16
    tta: bool = False
    threshold: float = 0.5
    device: str = "auto"


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
    stack = torch.from_numpy(context_volume(volume.astype(np.float32), context))
    patch = (1, *(cfg.patch_size or stack.shape[2:]))
    total = None
    for model in models:
        model.eval().to(device)

        def predictor(x: torch.Tensor, model=model) -> torch.Tensor:
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                logits = model(x[:, :, 0])
            logits = logits.float()
            probs = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, 1)
            return probs.unsqueeze(2)

        probs = sliding_window_inference(stack, predictor, patch, overlap=cfg.overlap, mode=cfg.mode,
                                         sigma_scale=cfg.sigma_scale, batch_size=cfg.batch_size, tta=cfg.tta,
                                         device=device, out_device="cpu", progress=progress)
        total = probs if total is None else total + probs
    return (total / len(models)).numpy()
