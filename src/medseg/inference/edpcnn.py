"""EDPCNN in the workflow: which object it segments, and its output in the task's channels.

EDPCNN (:mod:`medseg.models.edpcnn`, Nguyen & Ray) segments ONE star-shaped object per 2-D
slice. In a task that object is:

* region tasks (sigmoid): the task's largest region, the one the others nest in (the first of
  :meth:`medseg.tasks.Task.region_order`; BraTS: WT, the whole tumour). Not simply the first
  region listed: ``task.json`` stores regions in alphabetical order (ET, TC, WT);
* label tasks (softmax): the union of all labels (the foreground).

:func:`predict_volume_edpcnn` runs it slice by slice over a volume (whole slices, no windows)
and returns what :meth:`medseg.tasks.Task.decode` expects, ``(K, Z, Y, X)`` probabilities:

* region tasks: that region's channel is the EDPCNN mask, the other regions are 0, so a BraTS
  prediction holds WT only (decoded as label ED/SNFH; TC and ET are empty);
* label tasks: channel 0 (background) is 1 - mask, channel 1 (the task's first label, in
  ``task.json`` order) the mask, the other labels 0: the object is painted with that label's value.

The channel is :func:`object_channel`, stored by the trainer in the model's config
(``object_channel``), so ``model.pt`` alone says where its mask goes.

Each fold model gives a 0/1 mask; several folds are averaged (a vote). The star centre comes
from the U-Net's own output (:meth:`medseg.models.edpcnn.EDPCNN.centres_from_maps`; the paper
uses the ground-truth centre, which a workflow does not have): a slice whose map is nowhere
above ``centre_threshold`` gets an empty mask. ``inference.patch_size``, ``overlap``, ``mode``
and ``tta`` do not apply (the DP needs the whole object in one window).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from medseg.inference.device import resolve_device
from medseg.preprocess.tiling import context_volume

log = logging.getLogger(__name__)


def object_name(task) -> str:
    """Name of the segmented object: the task's largest region (BraTS: WT), else ``foreground``."""
    return task.region_order()[0][0] if task.regions else "foreground"


def object_channel(task) -> int:
    """Output channel of the object: the largest region's (regions), or 1, the first label (labels)."""
    return list(task.regions).index(object_name(task)) if task.regions else 1


def object_mask(target: np.ndarray, target_kind: str, channel: int) -> np.ndarray:
    """The EDPCNN's object in a target ``(B or Z, T, H, W)`` -> bool ``(B or Z, H, W)``.

    ``target_kind``: ``regions`` (T region masks; region ``channel``, see :func:`object_channel`)
    or ``labels`` (T = 1 class-index map; every label, i.e. index > 0).
    """
    if target_kind == "regions":
        return np.asarray(target[:, channel]) > 0.5
    if target_kind == "labels":
        return np.rint(np.asarray(target[:, 0])) > 0
    raise ValueError(f"target_kind must be 'regions' or 'labels', got {target_kind!r}")


def mask_to_probs(mask: np.ndarray, n_outputs: int, activation: str, channel: int) -> np.ndarray:
    """Probabilities ``(K, ...)`` float32 for a mask ``(...)`` in [0, 1] (see the module doc).

    ``channel``: where the mask goes (:func:`object_channel`); softmax: background = 1 - mask.
    """
    mask = np.asarray(mask, np.float32)
    if not 0 <= channel < n_outputs or (activation == "softmax" and channel == 0):
        raise ValueError(f"object channel must be in [{int(activation == 'softmax')}, {n_outputs}), got {channel}")
    out = np.zeros((n_outputs, *mask.shape), np.float32)
    if activation == "sigmoid":
        out[channel] = mask
    elif activation == "softmax":
        out[0], out[channel] = 1 - mask, mask
    else:
        raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
    return out


@torch.no_grad()
def predict_volume_edpcnn(models: Sequence[torch.nn.Module], volume: np.ndarray, context: int, cfg,
                          activation: str, progress: bool = False) -> np.ndarray:
    """EDPCNN masks slice by slice over a volume ``(C, Z, Y, X)``, as ``(K, Z, Y, X)`` float32.

    Args:
        models: EDPCNN fold models (their ``n_outputs`` is the task's ``K``, ``object_channel``
            the channel of their mask).
        volume: normalised volume; slices are along axis 1, with ``context`` slices each side.
        cfg: :class:`medseg.inference.volume.InferenceConfig` (``device``, ``batch_size`` slices
            per forward pass; windows, blending and TTA are not used).
        activation: the task's (``sigmoid`` regions or ``softmax`` labels).
        progress: unused (slices run in a few batches); the predictor hooks' common signature.
    """
    device = resolve_device(cfg.device)
    if cfg.patch_size is not None or cfg.tta:
        log.info("EDPCNN predicts whole slices without TTA: inference.patch_size/tta ignored")
    stack = torch.from_numpy(context_volume(volume.astype(np.float32), context)).transpose(0, 1)  # (Z, C', Y, X)
    votes = np.zeros((stack.shape[0], *stack.shape[2:]), np.float32)
    outputs = {(int(m.n_outputs), int(m.object_channel)) for m in models}
    if len(outputs) != 1:
        raise ValueError(f"EDPCNN fold models disagree on the task's (output channels, object channel): {sorted(outputs)}")
    for model in models:
        model.eval().to(device)
        for z0 in range(0, stack.shape[0], cfg.batch_size):
            x = stack[z0: z0 + cfg.batch_size].to(device)
            votes[z0: z0 + len(x)] += model.predict_mask(x).cpu().numpy()
    n_outputs, channel = outputs.pop()
    return mask_to_probs(votes / len(models), n_outputs, activation, channel)
