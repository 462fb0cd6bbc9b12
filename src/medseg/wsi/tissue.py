"""Where the tissue is: a coarse boolean mask from a low-resolution view of the slide.

Otsu's threshold (scikit-image) on saturation (stained tissue is coloured, glass is white/grey),
on optical density, or, for unstained/greyscale slides, on darkness; then scikit-image
morphology (closing, hole filling, opening, small-object removal). The mask is small (at most
``max_side`` pixels per side) and maps to level 0 by a scale factor.
"""
from __future__ import annotations

import logging
import math

from pathlib import Path

import numpy as np
import tiffslide
from scipy import ndimage
from skimage import filters, morphology

from medseg.wsi.slide import SlideLevel, read_region, slide_level

log = logging.getLogger(__name__)

METHODS = ("auto", "saturation", "od", "grey")
MIN_SATURATION = 0.05  # floors on the Otsu threshold so blank glass + noise is not "tissue"
MIN_DARKNESS = 0.08
MIN_OD = 0.15  # optical density (mean over RGB) of faint tissue; torchstain/Macenko's beta
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance; scikit-image)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else 0.0
    return float(filters.threshold_otsu(values, nbins=bins))


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Mean optical density ``-log10(I / 255)`` over R, G, B of ``(..., 3)`` uint8 RGB, float32 >= 0."""
    return -np.log10(np.maximum(rgb[..., :3].astype(np.float32), 1.0) / 255.0).mean(axis=-1)


def grey_levels(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601) of ``(..., 3)`` uint8 RGB, in [0, 1] float32."""
    return (rgb[..., :3].astype(np.float32) @ np.array(LUMA, dtype=np.float32)) / 255.0


def tissue_mask_from_rgb(rgb: np.ndarray, method: str = "auto", min_object_px: int = 16) -> np.ndarray:
    """Boolean tissue mask of a low-resolution ``(h, w, 3)`` uint8 RGB image.

    Args:
        rgb: thumbnail of the slide.
        method: ``saturation``, ``od`` (optical density), ``grey`` or ``auto`` (saturation when
            the image has colour, else grey).
        min_object_px: connected components smaller than this (in thumbnail pixels) are dropped.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    rgb = rgb[..., :3]
    hi = rgb.max(axis=-1).astype(np.float32) / 255.0
    lo = rgb.min(axis=-1).astype(np.float32) / 255.0
    saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    if method == "auto":
        p1, p99 = np.percentile(saturation, [1, 99])
        method = "saturation" if p99 - p1 > 2 * MIN_SATURATION else "grey"
    if method == "saturation":
        values, floor = saturation, MIN_SATURATION
    elif method == "od":
        values, floor = np.minimum(optical_density(rgb), 1.0), MIN_OD
    else:
        values, floor = 1.0 - grey_levels(rgb), MIN_DARKNESS
    threshold = max(otsu_threshold(values), floor)
    mask = values > threshold
    # closing by a 5x5 square (= two 3x3 steps) treating outside as background, then fill, open
    mask = np.pad(mask, 2)
    mask = morphology.closing(mask, morphology.footprint_rectangle((5, 5)))[2:-2, 2:-2]
    mask = ndimage.binary_fill_holes(mask)
    mask = morphology.opening(mask, morphology.footprint_rectangle((3, 3)))
    mask = morphology.remove_small_objects(mask, max_size=min_object_px - 1, connectivity=1) if min_object_px > 1 \
        else mask
    log.debug("tissue: %s threshold %.3f, %.1f %% of %s", method, threshold, 100 * mask.mean(), mask.shape)
    return mask


def require_tissue(mask: np.ndarray, slide_path: str | Path, method: str = "auto") -> np.ndarray:
    """Return ``mask``, or raise ``ValueError`` naming the slide when it holds no tissue."""
    if not mask.any():
        raise ValueError(f"no tissue found in slide {slide_path} (tissue_method={method!r}: nothing is coloured "
                         "or dark enough); check the slide, or try tissue_method 'od' or 'grey'")
    return mask


def read_thumbnail(slide: tiffslide.TiffSlide, max_side: int = 2048) -> tuple[np.ndarray, float]:
    """Low-resolution RGB view from the coarsest level, block-averaged in strips to ``<= max_side``.

    Returns:
        ``(h, w, 3)`` uint8 thumbnail and its scale in level-0 pixels per thumbnail pixel.
    """
    level: SlideLevel = slide_level(slide, slide.level_count - 1)
    factor = max(1, math.ceil(max(level.height, level.width) / max_side))
    h, w = math.ceil(level.height / factor), math.ceil(level.width / factor)
    thumb = np.empty((h, w, 3), dtype=np.uint8)
    rows = max(1, 2048 // factor)  # thumbnail rows per strip
    for r in range(0, h, rows):
        n = min(rows, h - r)
        strip = read_region(slide, level, r * factor, 0, n * factor, w * factor).astype(np.float32)
        thumb[r:r + n] = strip.reshape(n, factor, w, factor, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    return thumb, level.downsample * factor


def tissue_mask(slide: tiffslide.TiffSlide, method: str = "auto", max_side: int = 2048) -> tuple[np.ndarray, float]:
    """Tissue mask of a slide and its scale (level-0 pixels per mask pixel)."""
    thumb, scale = read_thumbnail(slide, max_side)
    return tissue_mask_from_rgb(thumb, method), scale
