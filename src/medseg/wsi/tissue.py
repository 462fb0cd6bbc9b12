"""Where the tissue is: a coarse boolean mask from a low-resolution view of the slide.

Otsu's threshold on saturation (stained tissue is coloured, glass is white/grey) or, for
unstained/greyscale slides, on darkness; then morphological clean-up. The mask is small
(at most ``max_side`` pixels per side) and maps to level 0 by a scale factor.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import tiffslide
from scipy import ndimage

from medseg.wsi.slide import SlideLevel, read_region, slide_level

log = logging.getLogger(__name__)

METHODS = ("auto", "saturation", "grey")
MIN_SATURATION = 0.05  # floors on the Otsu threshold so blank glass + noise is not "tissue"
MIN_DARKNESS = 0.08
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[1:][np.argmax(between)])


def grey_levels(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601) of ``(..., 3)`` uint8 RGB, in [0, 1] float32."""
    return (rgb[..., :3].astype(np.float32) @ np.array(LUMA, dtype=np.float32)) / 255.0


def tissue_mask_from_rgb(rgb: np.ndarray, method: str = "auto", min_object_px: int = 16) -> np.ndarray:
    """Boolean tissue mask of a low-resolution ``(h, w, 3)`` uint8 RGB image.

    Args:
        rgb: thumbnail of the slide.
        method: ``saturation``, ``grey`` or ``auto`` (saturation when the image has colour).
        min_object_px: connected components smaller than this (in thumbnail pixels) are dropped.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    rgb = rgb[..., :3].astype(np.float32) / 255.0
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    if method == "auto":
        p1, p99 = np.percentile(saturation, [1, 99])
        method = "saturation" if p99 - p1 > 2 * MIN_SATURATION else "grey"
    if method == "saturation":
        values, floor = saturation, MIN_SATURATION
    else:
        values, floor = 1.0 - grey_levels(rgb * 255.0), MIN_DARKNESS
    threshold = max(otsu_threshold(values), floor)
    mask = values > threshold
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3)), iterations=2, border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3)))
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = np.isin(labels, 1 + np.flatnonzero(sizes >= min_object_px))
    log.debug("tissue: %s threshold %.3f, %.1f %% of %s", method, threshold, 100 * mask.mean(), mask.shape)
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
