"""Run networks over whole working-space volumes: each through its registry predictor hook.

The default hook, :func:`predict_stitched`, runs the stitching engine: 2-D/2.5-D networks over
the 2.5-D stack with windows ``(1, h, w)`` (``h, w``: the plan's window, or the whole slice), 3-D
networks with windows ``(d, h, w)`` (the plan's window, clipped to the volume), overlapping by
``inference.overlap`` and blended with ``inference.mode`` (the plan's: the architecture's
``default_blending`` unless set; ``constant`` for tiramisu3d, the seed's averaging of
overlapping sub-volumes). Several models (cross-validation folds) are averaged in probability space.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from medseg.models import arch_of, get_arch, load_hook
from medseg.stitch.inference import sliding_window_inference
from medseg.preprocess.tiling import context_volume
from medseg.inference.config import InferenceConfig
from medseg.inference.device import resolve_device

log = logging.getLogger(__name__)


def blending(model: torch.nn.Module, cfg: InferenceConfig) -> str:
    """``inference.mode`` (the plan resolves it), or the model's registry ``default_blending`` when unset."""
    return cfg.mode or get_arch(arch_of(model)).default_blending


def window(model: torch.nn.Module, spatial: Sequence[int], cfg: InferenceConfig) -> tuple[int, ...]:
    """The stitching window over a volume of shape ``spatial`` ``(Z, Y, X)``: ``inference.patch_size``
    (the plan's window), clipped to the volume; 2-D networks: ``(1, h, w)``, the whole slice without one.
    """
    p = cfg.patch_size
    if getattr(model, "spatial_dims", 2) == 3:
        if p is None or len(p) != 3:
            raise ValueError(f"a 3-D network needs a 3-D window (inference.patch_size, resolved by the plan), got {p}")
        return tuple(min(int(a), int(s)) for a, s in zip(p, spatial))
    if p is not None and len(p) != 2:
        raise ValueError(f"inference.patch_size of a 2-D/2.5-D model must be (h, w), got {p}")
    return (1, *(int(a) for a in (p or spatial[1:])))


ACTIVATIONS = ("sigmoid", "softmax")


def predict_volume(models: Sequence[torch.nn.Module], volume: np.ndarray, context: int, cfg: InferenceConfig,
                   activation: str = "sigmoid", progress: bool = False) -> np.ndarray:
    """Probabilities ``(K, Z, Y, X)`` float32 for a normalised volume ``(C, Z, Y, X)``, averaged over ``models``.

    ``activation``: ``sigmoid`` (regions, independent channels) or ``softmax`` (labels, over
    channels), from the task (:attr:`medseg.tasks.Task.activation`). The networks run through
    their registry entry's predictor hook (:mod:`medseg.models`): by default
    :func:`predict_stitched`; all models of one call must share it.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    hooks = {get_arch(arch_of(m)).predictor for m in models}
    if len(hooks) != 1:
        raise ValueError(f"cannot ensemble models with different predictors: {sorted(hooks)}")
    return load_hook(hooks.pop())(models, volume, context, cfg, activation, progress)


def predict_stitched(models: Sequence[torch.nn.Module], volume: np.ndarray, context: int, cfg: InferenceConfig,
                     activation: str, progress: bool = False) -> np.ndarray:
    """The default predictor: every network window by window over the whole volume, blended.

    2-D/2.5-D networks see the 2.5-D stack ``(C*(2c+1), Z, Y, X)`` through windows ``(1, h, w)``
    (the predictor squeezes the slice axis); 3-D networks windows ``(d, h, w)``. The activation
    is applied per window before blending, so overlapping windows average probabilities.
    """
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
