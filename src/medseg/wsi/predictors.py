"""Predictors for whole-slide stitching: a built-in (``identity``), a medseg training checkpoint
(``model.pt`` written by :mod:`medseg.training.loop`), or a TorchScript / torch.export file.

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


def task_kind(meta: dict) -> str:
    """``labels`` (softmax) or ``regions`` (sigmoid) from a checkpoint's ``meta["task"]``; regions when absent.

    ``task`` is :meth:`medseg.tasks.Task.to_dict` (regions non-empty: ``regions``, else ``labels``),
    a dict with ``target_kind``, or the kind itself.
    """
    task = meta.get("task")
    if isinstance(task, dict):
        kind = task.get("target_kind") or ("regions" if task.get("regions") else "labels")
    else:
        kind = task
    if kind is None:
        return "regions"
    if kind not in ("labels", "regions"):
        raise ValueError(f"checkpoint meta task.target_kind must be 'labels' or 'regions', got {kind!r}")
    return kind


def task_classes(meta: dict) -> list[str] | None:
    """Class names of a checkpoint (labels: without background; regions: one per channel), if recorded."""
    task = meta.get("task")
    if isinstance(task, dict) and "labels" in task:
        from medseg.tasks.definition import Task

        t = Task.from_dict({"name": "task", "modalities": ("rgb",), **task})
        return list(t.regions) if t.regions else list(t.labels)
    regions = meta.get("regions")
    return list(regions) if task_kind(meta) == "regions" and regions else None


def is_checkpoint(path: Path) -> bool:
    """True when ``path`` is a medseg training checkpoint (``{"state_dict", "meta"}``, weights-only loadable)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # TorchScript archives, exported programs, junk: not a checkpoint
        return False
    return isinstance(ck, dict) and "state_dict" in ck and "meta" in ck


def load_checkpoint_predictor(path: str | Path, device: str | torch.device = "cpu",
                              activation: str = "auto") -> tuple[Predictor, dict]:
    """A predictor from a medseg ``model.pt``; the activation comes from its task unless given.

    Returns:
        ``(predictor, meta)``; the predictor maps ``(B, 3, H, W)`` RGB in [0, 1] to probabilities.

    Raises:
        InputError: the model does not take 3 input channels (RGB).
    """
    from medseg.models.checkpoint import load_model

    model, meta = load_model(path, device)
    in_ch = int(meta["model_config"].get("in_channels", 3))
    if in_ch != 3:
        raise InputError(f"checkpoint {path} takes {in_ch} input channels; slides give 3 (RGB): was it "
                         "trained on a slide dataset?")
    name = activation if activation != "auto" else ("softmax" if task_kind(meta) == "labels" else "sigmoid")
    act = ACTIVATIONS[name]
    log.info("loaded medseg checkpoint %s on %s (%s, activation %s)", path, device,
             meta["model_config"].get("encoder"), name)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        out = model(batch)
        return act(out[0] if isinstance(out, (list, tuple)) else out)

    return predict, meta


def load_predictor(spec: str, device: str | torch.device = "cpu", activation: str = "auto") -> Predictor:
    """A predictor from a built-in name (``identity``) or a model file.

    Args:
        spec: ``identity``, a medseg training checkpoint (``model.pt``), or the path of a
            TorchScript model (``torch.jit.save``) or an exported program (``.pt2``,
            ``torch.export.save``) taking ``(B, 3, H, W)`` in [0, 1] and returning logits ``(B, K, H, W)``.
        device: where the model runs.
        activation: applied to model outputs (not built-ins): ``auto`` (checkpoints: from their
            task, softmax for labels, sigmoid for regions or when absent; other files: sigmoid
            for one channel, else softmax), ``softmax``, ``sigmoid`` or ``none``.

    Raises:
        ValueError: unknown activation. InputError: the file is missing or not a model.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if not path.exists():
        raise InputError(f"predictor {spec!r} is neither a built-in ({sorted(BUILTIN)}) nor an existing file")
    if path.suffix != ".pt2" and is_checkpoint(path):
        return load_checkpoint_predictor(path, device, activation)[0]
    try:
        if path.suffix == ".pt2":
            model = torch.export.load(str(path)).module().to(device)
        else:
            model = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"predictor file {path} is not a medseg checkpoint (model.pt from medseg train), a "
                         "TorchScript model (torch.jit.save) nor an exported program (.pt2, torch.export.save)") from e
    act = ACTIVATIONS[activation]
    log.info("loaded TorchScript predictor %s on %s (activation %s)", path, device, activation)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return act(model(batch))

    return predict
