"""N4 bias-field correction (SimpleITK), returning the corrected image and the full-resolution field."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class N4Config:
    """Parameters of :func:`n4_correct` (config key ``preprocessing.n4``).

    Attributes:
        shrink_factor: fit on an image shrunk by this factor (speed); the field is evaluated
            at full resolution afterwards.
        iterations: maximum iterations per fitting level (one entry per level).
        convergence: convergence threshold.
        spline_distance_mm: B-spline control point spacing of the field in mm.
        bins: histogram bins used for sharpening.
    """

    shrink_factor: int = 4
    iterations: tuple[int, ...] = (20, 20)
    convergence: float = 5e-3
    spline_distance_mm: float = 80.0
    bins: int = 200

    def __post_init__(self) -> None:
        if self.shrink_factor < 1:
            raise ValueError(f"n4.shrink_factor must be >= 1, got {self.shrink_factor}")
        if not self.iterations or min(self.iterations) < 1:
            raise ValueError(f"n4.iterations must be a non-empty list of positive ints, got {self.iterations}")
        if self.spline_distance_mm <= 0:
            raise ValueError(f"n4.spline_distance_mm must be > 0, got {self.spline_distance_mm}")


def otsu_mask(image: sitk.Image) -> sitk.Image:
    """Foreground (head) mask: Otsu threshold, hole filling, largest component."""
    mask = sitk.OtsuThreshold(image, 0, 1, 200)
    mask = sitk.BinaryMorphologicalClosing(mask, [2, 2, 2])
    mask = sitk.BinaryFillhole(mask)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(cc == 1, sitk.sitkUInt8)


def n4_correct(image: sitk.Image, mask: sitk.Image | None = None, cfg: N4Config = N4Config()) -> tuple[sitk.Image, sitk.Image]:
    """Correct ``image`` for a smooth multiplicative bias field.

    Args:
        image: 3-D float image.
        mask: voxels used for fitting (default: :func:`otsu_mask`).
        cfg: fitting parameters.

    Returns:
        ``(corrected, bias_field)`` on ``image``'s grid, with ``image = corrected * bias_field``.
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    mask = otsu_mask(image) if mask is None else sitk.Cast(mask > 0, sitk.sitkUInt8)
    small, small_mask = image, mask
    if cfg.shrink_factor > 1:
        small = sitk.Shrink(image, [cfg.shrink_factor] * 3)
        small_mask = sitk.Shrink(mask, [cfg.shrink_factor] * 3)
    # N4 needs strictly positive intensities inside the mask
    shift = float(max(0.0, -sitk.GetArrayViewFromImage(small).min())) + 1.0
    filt = sitk.N4BiasFieldCorrectionImageFilter()
    filt.SetMaximumNumberOfIterations(list(cfg.iterations))
    filt.SetConvergenceThreshold(cfg.convergence)
    filt.SetNumberOfHistogramBins(cfg.bins)
    extent = np.array(small.GetSize()) * np.array(small.GetSpacing())
    filt.SetNumberOfControlPoints([max(4, int(np.ceil(e / cfg.spline_distance_mm)) + 3) for e in extent])
    filt.Execute(small + shift, small_mask)
    log_field = filt.GetLogBiasFieldAsImage(image)
    field = sitk.Cast(sitk.Exp(log_field), sitk.sitkFloat32)
    corrected = sitk.Cast(image / field, sitk.sitkFloat32)  # "/" is DivideReal (float64)
    log.info("N4: %d levels, field range [%.3f, %.3f]", len(cfg.iterations),
             *np.percentile(sitk.GetArrayViewFromImage(field)[sitk.GetArrayViewFromImage(mask) > 0], [1, 99]))
    return corrected, field


def coefficient_of_variation(image: sitk.Image, mask: sitk.Image) -> float:
    """Std / mean of ``image`` inside ``mask`` (lower after a good bias correction)."""
    a = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0]
    return float(a.std() / max(abs(a.mean()), 1e-12))
