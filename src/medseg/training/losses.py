"""Loss registry (config ``training.loss``); every loss takes both kinds of task.

Inputs: logits ``(B, K, *spatial)`` and either

* region targets ``(B, K, *spatial)`` binary masks: the outputs are sigmoid probabilities
  (nnU-Net's region-based training; BraTS WT/TC/ET), or
* label targets ``(B, *spatial)`` class indices in ``0..K-1``: the outputs are softmax
  probabilities (mutually exclusive classes, channel 0 background).

The kind is read off the target's shape, so a loss never needs to be told.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _probs_and_onehot(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, float targets of the same shape): sigmoid for region targets, softmax + one-hot for labels."""
    if target.ndim == logits.ndim:
        return torch.sigmoid(logits), target.float()
    if target.ndim != logits.ndim - 1:
        raise ValueError(f"target must be (B, K, *spatial) regions or (B, *spatial) labels for logits "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")
    onehot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).float()
    return torch.softmax(logits, 1), onehot


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    if target.ndim == logits.ndim:
        pos_weight = None if weight is None else weight.view(1, -1, *([1] * (logits.ndim - 2)))
        return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=pos_weight)
    return F.cross_entropy(logits, target.long(), weight=weight)


def _reduce_dims(p: torch.Tensor) -> tuple[int, ...]:
    return (0, *range(2, p.ndim))  # batch-pooled (nnU-Net's batch Dice): one score per channel


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per channel, averaged (batch-pooled, nnU-Net style; softmax: background excluded)."""
    p, t = _probs_and_onehot(logits, target)
    if target.ndim != logits.ndim:
        p, t = p[:, 1:], t[:, 1:]
    dims = _reduce_dims(p)
    inter = (p * t).sum(dims)
    denom = p.sum(dims) + t.sum(dims)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice + cross-entropy (binary for regions, categorical for labels): nnU-Net's default."""
    return soft_dice_loss(logits, target) + _cross_entropy(logits, target)


def jaccard_distance(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Jaccard distance summed over channels (Kayalibay et al., seed 004, eq. 3)."""
    p, t = _probs_and_onehot(logits, target)
    dims = _reduce_dims(p)
    inter = (p * t).sum(dims)
    union = p.sum(dims) + t.sum(dims) - inter
    return (1 - (inter + eps) / (union + eps)).sum()


def multiclass_iou(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft IoU over classes/regions (Avetisian, seed 003)."""
    p, t = _probs_and_onehot(logits, target)
    dims = _reduce_dims(p)
    inter = (p * t).sum(dims)
    union = p.sum(dims) + t.sum(dims) - inter
    return 1 - ((inter + eps) / (union + eps)).mean()


def weighted_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with inverse-frequency weights from the batch: per class (labels) or as the
    positive weight of each region (regions: background / foreground voxel ratio)."""
    if target.ndim == logits.ndim:
        pos = target.float().sum(_reduce_dims(target)).clamp_min(1)
        neg = (target[:, :1].numel() - pos).clamp_min(1)
        return _cross_entropy(logits, target, neg / pos)
    counts = torch.bincount(target.long().flatten(), minlength=logits.shape[1]).float()
    weights = counts.sum() / (counts.clamp_min(1) * len(counts))
    return _cross_entropy(logits, target, weights)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy (binary per region, or categorical), the mean over voxels and samples:
    the one loss here that is a mean over samples, so DDP shards reproduce the global batch's
    gradient exactly (the Dice/Jaccard/IoU losses pool over the batch)."""
    return _cross_entropy(logits, target)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": cross_entropy, "dice_bce": dice_bce, "jaccard": jaccard_distance, "multiclass_iou": multiclass_iou, "weighted_ce": weighted_ce,
}


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in LOSSES:
        raise ValueError(f"training.loss must be one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[name]
