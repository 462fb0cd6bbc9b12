"""Trained model files: ``model.pt`` written atomically and rebuilt from its own metadata.

``model.pt`` is ``{"state_dict", "meta": {"model_config", "context", "task", ...}}``; the model
config inside it names its architecture, so :func:`load_model` needs nothing else. Training
writes it (:mod:`medseg.training.loop`), inference and bundles read it (:mod:`medseg.inference`):
it lives with the models so that inference never imports training.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from medseg.io import atomic_path
from medseg.models import build_model, model_config_from_mapping


def plain(value):
    """Tuples -> lists, recursively (a config as saved in ``model.pt``)."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value



def tuples(value):
    """Lists -> tuples, recursively (back to a config's field types)."""
    if isinstance(value, (tuple, list)):
        return tuple(tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: tuples(v) for k, v in value.items()}
    return value



def save_atomic(obj: dict, path: Path) -> None:
    """Atomic ``torch.save``; through a buffer because torch names the archive after the file,
    and a random temporary name would make identical weights give different bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path, suffix=".pt") as tmp:
        tmp.write_bytes(buffer.getvalue())



def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from ``model.pt`` (``weights_only`` load); return it and its metadata."""
    ck = torch.load(path, map_location=device, weights_only=True)
    model = build_model(model_config_from_mapping(tuples(dict(ck["meta"]["model_config"])), "model_config."))
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck["meta"]
