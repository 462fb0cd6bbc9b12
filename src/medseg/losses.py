"""Loss registry (config ``training.loss``). Inputs: logits ``(B, K, H, W)``, targets ``(B, K, H, W)``
binary region masks (sigmoid losses) or ``(B, H, W)`` class indices (softmax losses)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per channel, averaged (batch-pooled, nnU-Net style)."""
    p = torch.sigmoid(logits)
    dims = (0, *range(2, p.ndim))
    inter = (p * target).sum(dims)
    denom = p.sum(dims) + target.sum(dims)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice + binary cross-entropy on sigmoid region outputs."""
    return soft_dice_loss(logits, target) + F.binary_cross_entropy_with_logits(logits, target.float())


def jaccard_distance(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Jaccard distance summed over classes (Kayalibay et al., seed 004)."""
    p = torch.sigmoid(logits)
    dims = (0, *range(2, p.ndim))
    inter = (p * target).sum(dims)
    union = p.sum(dims) + target.sum(dims) - inter
    return (1 - (inter + eps) / (union + eps)).sum()


def multiclass_iou(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft IoU over softmax classes (Avetisian, seed 003); ``target`` holds class indices."""
    p = torch.softmax(logits, 1)
    onehot = F.one_hot(target.long(), p.shape[1]).movedim(-1, 1).float()
    dims = (0, *range(2, p.ndim))
    inter = (p * onehot).sum(dims)
    union = p.sum(dims) + onehot.sum(dims) - inter
    return 1 - ((inter + eps) / (union + eps)).mean()


def weighted_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with inverse-frequency class weights computed on the batch."""
    counts = torch.bincount(target.long().flatten(), minlength=logits.shape[1]).float()
    weights = counts.sum() / (counts.clamp_min(1) * len(counts))
    return F.cross_entropy(logits, target.long(), weight=weights)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "dice_bce": dice_bce, "jaccard": jaccard_distance, "multiclass_iou": multiclass_iou, "weighted_ce": weighted_ce,
}
SIGMOID_LOSSES = {"dice_bce", "jaccard"}


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in LOSSES:
        raise ValueError(f"training.loss must be one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[name]
