"""Inference settings (config key ``inference``): typed, frozen, light to import (no torch)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InferenceConfig:
    """Config key ``inference``.

    Attributes:
        patch_size: window in voxels: 2 values ``(h, w)``: in-plane window of 2-D/2.5-D models
            (``None`` = the whole slice, one window per slice); 3 values ``(d, h, w)``: the window
            of 3-D models (``None`` or 2 values: the model's ``patch_size``).
        overlap: window overlap fraction in [0, 1).
        mode: blending weights (``gaussian``, ``constant``, ``pyramid``, ``cosine``); ``None`` =
            the model's ``default_blending``.
        sigma_scale: Gaussian sigma as a fraction of the window.
        margin: voxels dropped at window sides inside the volume (the receptive-field radius of a
            zero-padded, stride-free net makes stitched equal untiled; 0 = off).
        batch_size: windows per forward pass.
        tta: mirror test-time augmentation.
        threshold: probability above which a region is predicted.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
    """

    patch_size: tuple[int, ...] | None = None
    overlap: float = 0.5
    mode: str | None = None
    sigma_scale: float = 0.125
    margin: int = 0
    batch_size: int = 16
    tta: bool = False
    threshold: float = 0.5
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.patch_size is not None and (len(self.patch_size) not in (2, 3) or any(int(p) < 1 for p in self.patch_size)):
            raise ValueError(f"inference.patch_size must be 2 (h, w) or 3 (d, h, w) positive sizes, got {self.patch_size}")
        if self.mode is not None:
            from medseg.stitch.weights import check_mode

            check_mode(self.mode)
        if self.margin < 0:
            raise ValueError(f"inference.margin must be >= 0, got {self.margin}")
