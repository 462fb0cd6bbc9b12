"""Training settings (config key ``training`` and its nested sections): typed, frozen, light to import.

Only dataclasses and their checks live here (no torch), so the plan (:mod:`medseg.plan`) can
resolve every model's run when the workflow loads without importing the training stack.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the keys of medseg.training.losses.LOSSES (a test keeps the two equal): checked without importing torch
LOSS_NAMES = ("ce", "dice_bce", "jaccard", "multiclass_iou", "weighted_ce")


def check_loss(name: str) -> str:
    """``name`` if it is a registered loss, else ``ValueError`` listing them."""
    if name not in LOSS_NAMES:
        raise ValueError(f"training.loss must be one of {sorted(LOSS_NAMES)}, got {name!r}")
    return name


@dataclass(frozen=True)
class AugmentConfig:
    """Config key ``training.augment`` (all off at validation).

    Attributes:
        flip: probability of a left-right flip.
        rotate_deg: max in-plane rotation (degrees); 0 disables.
        scale: max relative zoom (0.1 = 0.9 .. 1.1).
        intensity_shift: max additive shift per channel (in z-score units).
        intensity_scale: max relative multiplicative change per channel.
        noise_std: max std of added Gaussian noise.
        bias: max amplitude of a smooth multiplicative (linear-gradient) field.
    """

    flip: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    intensity_shift: float = 0.1
    intensity_scale: float = 0.1
    noise_std: float = 0.05
    bias: float = 0.1


@dataclass(frozen=True)
class Patch3DConfig:
    """Config key ``training.patch3d`` (the patch size comes from the model).

    Attributes:
        patch_size: patch ``(Z, Y, X)`` in voxels; ``None`` in the config: the trainer fills in
            ``training.patch_size`` (3 values) or the model's ``patch_size``.
        fg_fraction: probability that a sample is centred on a foreground voxel (nnU-Net: 0.33).
        jitter: max shift of the patch centre from that voxel, as a fraction of the patch size per
            axis, in ``[0, 0.5)`` (0 = nnU-Net, whose spatial augmentation moves it instead).
    """

    patch_size: tuple[int, int, int] | None = None
    fg_fraction: float = 1 / 3
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.patch_size is not None and (len(self.patch_size) != 3 or any(int(p) < 1 for p in self.patch_size)):
            raise ValueError(f"patch_size must be 3 positive voxel counts (Z, Y, X), got {self.patch_size}")
        if not 0 <= self.fg_fraction <= 1:
            raise ValueError(f"training.patch3d.fg_fraction must be in [0, 1], got {self.fg_fraction}")
        if not 0 <= self.jitter < 0.5:
            raise ValueError(f"training.patch3d.jitter must be in [0, 0.5), got {self.jitter}")


@dataclass(frozen=True)
class Augment3DConfig:
    """Config key ``training.augment3d`` (all off at validation: pass ``None``).

    Attributes:
        p_rotate: probability that a sample is rotated.
        rotate_deg: max absolute rotation angle (degrees) around the Z, Y and X axes.
        p_scale: probability that a sample is zoomed.
        scale: ``(min, max)`` zoom factor (> 1 magnifies: the patch covers less anatomy).
        p_elastic: probability of an elastic warp (nnU-Net default: off).
        elastic_voxels: std (voxels) of the displacement at each control point.
        elastic_grid: control points per axis; the displacement is trilinear in between.
        p_flip: probability of a mirror, drawn independently for each axis in ``flip_axes``.
        flip_axes: spatial axes that may be mirrored (0 = Z, 1 = Y, 2 = X).
        p_brightness: probability of a multiplicative brightness change (per channel).
        brightness: ``(min, max)`` multiplier.
        p_contrast: probability of a contrast change around the channel mean (per channel).
        contrast: ``(min, max)`` contrast factor.
        p_gamma: probability of a gamma transform on the channel rescaled to [0, 1].
        gamma: ``(min, max)`` exponent.
        p_noise: probability of additive Gaussian noise.
        noise_var: ``(min, max)`` noise variance (z-score units squared).
    """

    p_rotate: float = 0.2
    rotate_deg: tuple[float, float, float] = (30.0, 30.0, 30.0)
    p_scale: float = 0.2
    scale: tuple[float, float] = (0.7, 1.4)
    p_elastic: float = 0.0
    elastic_voxels: float = 3.0
    elastic_grid: int = 4
    p_flip: float = 0.5
    flip_axes: tuple[int, ...] = (0, 1, 2)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    p_noise: float = 0.1
    noise_var: tuple[float, float] = (0.0, 0.1)

    def __post_init__(self) -> None:
        for name in ("p_rotate", "p_scale", "p_elastic", "p_flip", "p_brightness", "p_contrast", "p_gamma", "p_noise"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"training.augment3d.{name} must be in [0, 1], got {p}")
        for name in ("scale", "brightness", "contrast", "gamma", "noise_var"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi or (name in ("scale", "gamma") and lo == 0):
                raise ValueError(f"training.augment3d.{name} must be (min, max) with 0 < min <= max, got {(lo, hi)}")
        if len(self.rotate_deg) != 3 or any(not 0 <= a <= 180 for a in self.rotate_deg):
            raise ValueError(f"training.augment3d.rotate_deg must be 3 angles in [0, 180], got {self.rotate_deg}")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ValueError(f"training.augment3d.flip_axes must be a subset of (0, 1, 2), got {self.flip_axes}")
        if self.elastic_grid < 2 or self.elastic_voxels < 0:
            raise ValueError(f"training.augment3d.elastic_grid must be >= 2 and elastic_voxels >= 0, got "
                             f"{self.elastic_grid}, {self.elastic_voxels}")


@dataclass(frozen=True)
class TrainConfig:
    """Config key ``training``.

    Attributes:
        steps: optimiser steps.
        batch_size: slices (2-D) or patches (3-D) per step: the global batch under DDP.
        lr, weight_decay: AdamW settings.
        schedule: ``poly`` (nnU-Net, exponent 0.9) or ``cosine``, after ``warmup`` linear steps.
        loss: loss registry key (:mod:`medseg.training.losses`); ``None`` = the model's ``default_loss``.
        context: 2.5-D context slices on each side (0 = 2-D); 3-D models always use 0.
        patch_size: 2 values: in-plane crop ``(h, w)`` of 2-D models (``None`` = whole slice);
            3 values: the 3-D patch ``(d, h, w)`` of 3-D models (else the model's ``patch_size``).
        fg_prob: probability that a 2-D sample is drawn from a slice holding tumour.
        patch3d: 3-D sampling (``fg_fraction`` 1/3 as nnU-Net, ``jitter``); its ``patch_size`` stays null.
        augment3d: 3-D augmentation (:class:`medseg.training.augment3d.Augment3DConfig`).
        data_workers: threads building 3-D batches ahead (:class:`medseg.training.batches3d.PoolPrefetcher`).
        grad_clip: max gradient norm (0 = off).
        checkpoint_every, val_every: in steps (validation also runs at the last step).
        seed: seeds weights init and every batch.
        device: ``auto``, ``cpu`` or ``cuda``; amp: mixed precision on CUDA.
        channels_last: 2-D networks train with weights and batches in channels-last memory layout (NHWC), which
            oneDNN and cuDNN convolve faster (a CPU step of the demo's U-Net: 3.5 -> 4.1 steps/s); 3-D networks
            stay as they are.
        threads: CPU threads for torch.
        deep_supervision_weights: loss weights of the auxiliary outputs.
    """

    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: str = "poly"
    warmup: int = 20
    loss: str | None = None
    context: int = 1
    patch_size: tuple[int, ...] | None = None
    fg_prob: float = 0.6
    grad_clip: float = 12.0
    checkpoint_every: int = 50
    val_every: int = 200
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    threads: int = 0
    deep_supervision_weights: tuple[float, ...] = (0.5, 0.25)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    patch3d: Patch3DConfig = field(default_factory=Patch3DConfig)
    augment3d: Augment3DConfig = field(default_factory=Augment3DConfig)
    data_workers: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"training.steps and training.batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.schedule not in ("poly", "cosine"):
            raise ValueError(f"training.schedule must be 'poly' or 'cosine', got {self.schedule!r}")
        if not 0 <= self.fg_prob <= 1:
            raise ValueError(f"training.fg_prob must be in [0, 1], got {self.fg_prob}")
        if self.loss is not None:
            check_loss(self.loss)
        if self.patch_size is not None and (len(self.patch_size) not in (2, 3) or any(int(p) < 1 for p in self.patch_size)):
            raise ValueError(f"training.patch_size must be 2 (h, w) or 3 (d, h, w) positive sizes, got {self.patch_size}")
        if self.patch3d.patch_size is not None:
            raise ValueError("training.patch3d.patch_size must stay null: set training.patch_size (3 values) "
                             f"or models.<key>.patch_size, got {self.patch3d.patch_size}")
        if self.data_workers < 1:
            raise ValueError(f"training.data_workers must be >= 1, got {self.data_workers}")





@dataclass(frozen=True)
class FoldJob:
    """What one fold's training reads and writes.

    Attributes:
        train_tiles, val_tiles: tile arrays (``.npy``) of the training and validation cases; each
            one's slice table is the ``.json`` beside it (:mod:`medseg.preprocess.tiling`).
        out_dir: the fold folder (``model.pt``, ``checkpoint.pt``, ``metrics.csv``, ``curves.png``).
        task: the dataset's task (input modalities, outputs and their activation).
        fold: which of the tiles' per-fold normalisations to train on.
    """

    train_tiles: tuple[str, ...]
    val_tiles: tuple[str, ...]
    out_dir: str
    task: Any
    fold: int = 0

    def tiles(self, which: str) -> tuple[list[str], list[str]]:
        """``(npy paths, slice-table paths)`` of ``train`` or ``val``."""
        npys = [str(p) for p in (self.train_tiles if which == "train" else self.val_tiles)]
        return npys, [str(Path(p).with_suffix(".json")) for p in npys]
