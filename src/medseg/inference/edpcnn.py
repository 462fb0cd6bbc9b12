"""EDPCNN in the workflow: which object it segments, and its output in the task's channels.

EDPCNN (:mod:`medseg.models.edpcnn`, Nguyen & Ray) segments ONE star-shaped object per 2-D
slice. Which object of the task is ``models.<key>.object``, resolved once against the task by
:func:`resolve_object` (a :class:`StarObject`, used by the trainer, its validation and
``benchmarks/bench_edpcnn.py`` alike):

* a label of a label task (softmax), e.g. ``LV`` of ACDC (the LV cavity, the paper's object);
* a region of a region task (sigmoid), e.g. ``WT`` of BraTS;
* unset (``null``): region tasks: the largest region, the one the others nest in (the first of
  :meth:`medseg.tasks.Task.region_order`; BraTS: WT). Not simply the first region listed:
  ``task.json`` stores regions in alphabetical order (ET, TC, WT); label tasks: the union of
  all labels (``foreground``).

:func:`predict_volume_edpcnn` runs it slice by slice over a volume (whole slices, no windows)
and returns what :meth:`medseg.tasks.Task.decode` expects, ``(K, Z, Y, X)`` probabilities:

* region tasks: that region's channel is the EDPCNN mask, the other regions are 0, so a BraTS
  prediction holds WT only (decoded as label ED/SNFH; TC and ET are empty);
* label tasks: channel 0 (background) is 1 - mask, the object's channel (its label's; the
  union's: the first label's, in ``task.json`` order) the mask, the other labels 0: the object
  is painted with that label's value (ACDC ``LV``: 3; RV and MYO stay empty).

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
from dataclasses import dataclass

import numpy as np
import torch

from medseg.inference.device import resolve_device
from medseg.preprocess.tiling import context_volume

log = logging.getLogger(__name__)


FOREGROUND = "foreground"  # the union of the labels of a label task


@dataclass(frozen=True)
class StarObject:
    """The one object EDPCNN segments in a task (:func:`resolve_object`).

    Attributes:
        name: a label or region of the task, or ``foreground`` (every label of a label task).
        channel: the task's output channel its mask fills.
        kind: the task's target kind: ``regions`` (sigmoid) or ``labels`` (softmax).
        classes: label tasks: the class indices (1 = the first label) that make the object.
    """

    name: str
    channel: int
    kind: str
    classes: tuple[int, ...] = ()

    def mask(self, target: np.ndarray) -> np.ndarray:
        """The object in a target ``(B or Z, T, H, W)`` -> bool ``(B or Z, H, W)`` (see :func:`object_mask`)."""
        return object_mask(target, self.kind, self.channel, self.classes)


def resolve_object(task, name: str | None = None, key: str = "models.<key>.object") -> StarObject:
    """The object ``name`` of ``task`` (see the module doc; ``None``: the default object).

    Raises:
        ValueError: ``name`` is neither a label of a label task nor a region of a region task
            (or ``foreground``), naming the config ``key`` and the valid values.
    """
    if task.regions:
        region = task.region_order()[0][0] if name is None else name
        if region in task.regions:
            return StarObject(region, list(task.regions).index(region), "regions")
        raise ValueError(f"{key} must be a region of dataset {task.name} {list(task.regions)} (its network's "
                         f"outputs are regions, not labels) or null (the largest region), got {name!r}")
    labels = list(task.labels)
    if name is None or name == FOREGROUND:
        return StarObject(FOREGROUND, 1, "labels", tuple(range(1, len(labels) + 1)))
    if name in labels:
        index = labels.index(name) + 1
        return StarObject(name, index, "labels", (index,))
    raise ValueError(f"{key} must be a label of dataset {task.name} {labels}, '{FOREGROUND}' or null (the union "
                     f"of the labels), got {name!r}")


def object_name(task, name: str | None = None) -> str:
    """Name of the segmented object (:func:`resolve_object`): BraTS default WT, label tasks ``foreground``."""
    return resolve_object(task, name).name


def object_channel(task, name: str | None = None) -> int:
    """Output channel of the object (:func:`resolve_object`): its region's or label's; the union's: 1."""
    return resolve_object(task, name).channel


def object_mask(target: np.ndarray, target_kind: str, channel: int, classes: Sequence[int] = ()) -> np.ndarray:
    """The EDPCNN's object in a target ``(B or Z, T, H, W)`` -> bool ``(B or Z, H, W)``.

    ``target_kind``: ``regions`` (T region masks; region ``channel``, see :func:`object_channel`)
    or ``labels`` (T = 1 class-index map; the indices in ``classes``, every label when empty).
    """
    if target_kind == "regions":
        return np.asarray(target[:, channel]) > 0.5
    if target_kind == "labels":
        index = np.rint(np.asarray(target[:, 0]))
        return np.isin(index, classes) if len(classes) else index > 0
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
