"""Predictors for whole-slide stitching: a built-in (``identity``) or a TorchScript / torch.export file.

A predictor maps ``(B, 3, H, W)`` RGB float in [0, 1] to ``(B, K, H, W)`` values in [0, 1]
(probabilities), on the device its input is on.
"""
from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from medseg.io import InputError
from medseg.stitch.inference import Predictor
from medseg.wsi.tissue import LUMA

log = logging.getLogger(__name__)



def identity(batch: torch.Tensor) -> torch.Tensor:
    """Grey level (ITU-R BT.601 luma) of an RGB batch: ``(B, 3, H, W) -> (B, 1, H, W)``, for checking seams."""
    luma = torch.tensor(LUMA, dtype=batch.dtype, device=batch.device)
    return torch.einsum("bchw,c->bhw", batch, luma).unsqueeze(1)


BUILTIN: dict[str, Predictor] = {"identity": identity}

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "softmax": lambda x: torch.softmax(x, dim=1),
    "sigmoid": torch.sigmoid,
    "auto": lambda x: torch.sigmoid(x) if x.shape[1] == 1 else torch.softmax(x, dim=1),
}


def load_predictor(spec: str, device: str | torch.device = "cpu", activation: str = "auto") -> Predictor:
    """A predictor from a built-in name (``identity``) or a model file.

    Args:
        spec: ``identity``, or the path of a TorchScript model (``torch.jit.save``) or an exported
            program (``.pt2``, ``torch.export.save``) taking ``(B, 3, H, W)`` in [0, 1] and returning
            logits ``(B, K, H, W)``.
        device: where the model runs.
        activation: applied to model outputs (not built-ins): ``auto`` (sigmoid for one channel,
            else softmax), ``softmax``, ``sigmoid`` or ``none`` (model already outputs probabilities).

    Raises:
        ValueError: unknown activation. InputError: the file is missing or not TorchScript.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if not path.exists():
        raise InputError(f"predictor {spec!r} is neither a built-in ({sorted(BUILTIN)}) nor an existing file")
    try:
        if path.suffix == ".pt2":
            model = torch.export.load(str(path)).module().to(device)
        else:
            model = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"predictor file {path} is not a TorchScript model (torch.jit.save) nor an exported "
                         "program (.pt2, torch.export.save); medseg checkpoints are not supported here yet") from e
    act = ACTIVATIONS[activation]
    log.info("loaded TorchScript predictor %s on %s (activation %s)", path, device, activation)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return act(model(batch))

    return predict
