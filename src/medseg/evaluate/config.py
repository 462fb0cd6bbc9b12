"""Evaluation settings (config key ``evaluation``; the ``medseg evaluate`` options): typed, frozen, light."""
from __future__ import annotations

from dataclasses import dataclass

HD95_CHOICES = ("pooled", "max_directed", "surfel")  # medseg.evaluate.metrics.HD95_METHODS (a test keeps them equal)


@dataclass(frozen=True)
class EvalConfig:
    """Config key ``evaluation``.

    Attributes:
        hd_max_mm: HD95 / ASSD in mm when exactly one of prediction and reference is empty (BraTS:
            373.13, the diagonal of the 240x240x155 1 mm grid).
        nsd_tolerance_mm: tolerance of the normalised surface Dice, mm.
        hd95_method: ``pooled`` (the official BraTS definition), ``max_directed`` or ``surfel``.
        lesionwise: also the BraTS 2023 lesion-wise Dice and HD95 (BraTS tasks).
        edition: the lesion-wise parameters (:data:`medseg.evaluate.lesionwise.EDITIONS`).
    """

    hd_max_mm: float = 373.13
    nsd_tolerance_mm: float = 1.0
    hd95_method: str = "pooled"
    lesionwise: bool = False
    edition: str = "2023-glioma"

    def __post_init__(self) -> None:
        if self.hd95_method not in HD95_CHOICES:
            raise ValueError(f"evaluation.hd95_method must be one of {HD95_CHOICES}, got {self.hd95_method!r}")
        if self.hd_max_mm <= 0 or self.nsd_tolerance_mm < 0:
            raise ValueError(f"evaluation.hd_max_mm must be > 0 and nsd_tolerance_mm >= 0, got {self.hd_max_mm}, "
                             f"{self.nsd_tolerance_mm}")
