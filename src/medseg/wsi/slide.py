"""Reading whole-slide images (SVS, pyramidal TIFF, ...) region by region at a chosen resolution.

Coordinates are ``(y, x)`` in pixels of the chosen level unless stated otherwise; arrays are
``(H, W, 3)`` uint8 RGB. The slide is never read whole.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiffslide

from medseg.io import InputError

log = logging.getLogger(__name__)

MPP_TOLERANCE = 0.1  # relative mismatch between requested and available mpp that only warns


@dataclass(frozen=True)
class SlideLevel:
    """One pyramid level of a slide.

    Attributes:
        level: index in the slide's pyramid (0 = full resolution).
        height, width: level size in pixels.
        downsample: level-0 pixels per level pixel.
        mpp: microns per pixel at this level, None when the slide does not say.
    """

    level: int
    height: int
    width: int
    downsample: float
    mpp: float | None


def open_slide(path: str | Path) -> tiffslide.TiffSlide:
    """Open a slide, raising :class:`InputError` naming the file if it is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"slide {path} does not exist")
    try:
        return tiffslide.TiffSlide(path)
    except Exception as e:  # tifffile raises a variety of errors on non-TIFF input
        raise InputError(f"slide {path} cannot be read as a whole-slide image: {e}") from e


def base_mpp(slide: tiffslide.TiffSlide) -> float | None:
    """Microns per pixel at level 0 (mean of x and y), or None when the slide has none."""
    mpp_x, mpp_y = slide.properties.get("tiffslide.mpp-x"), slide.properties.get("tiffslide.mpp-y")
    values = [float(v) for v in (mpp_x, mpp_y) if v]
    return sum(values) / len(values) if values else None


def slide_level(slide: tiffslide.TiffSlide, level: int, mpp0: float | None = None) -> SlideLevel:
    """Describe pyramid level ``level`` of ``slide`` (``mpp0`` overrides the slide's level-0 mpp)."""
    width, height = slide.level_dimensions[level]
    downsample = float(slide.level_downsamples[level])
    mpp0 = base_mpp(slide) if mpp0 is None else mpp0
    return SlideLevel(level, int(height), int(width), downsample, None if mpp0 is None else mpp0 * downsample)


def select_level(slide: tiffslide.TiffSlide, path: str | Path, level: int | None = None,
                 mpp: float | None = None, mpp0: float | None = None) -> SlideLevel:
    """Pick the pyramid level to process: by index, by microns per pixel (nearest level), or level 0.

    Args:
        slide: open slide.
        path: its file, for error messages.
        level: pyramid index; exclusive with ``mpp``.
        mpp: wanted microns per pixel; the nearest available level is used (a warning is logged
            when it differs by more than 10 %; no resampling is done).
        mpp0: level-0 microns per pixel overriding the slide's metadata (``datasets.<name>.mpp``).

    Raises:
        ValueError: both or invalid ``level``/``mpp``, or ``mpp`` requested for a slide without mpp.
    """
    if level is not None and mpp is not None:
        raise ValueError(f"give level or mpp, not both (got level={level}, mpp={mpp})")
    if level is not None:
        if not 0 <= level < slide.level_count:
            raise ValueError(f"level must be in [0, {slide.level_count - 1}] for slide {path}, got {level}")
        return slide_level(slide, level, mpp0)
    if mpp is None:
        return slide_level(slide, 0, mpp0)
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    if mpp0 is None and base_mpp(slide) is None:
        raise ValueError(f"mpp={mpp} was requested but slide {path} has no microns-per-pixel metadata; "
                         "use --level instead, or give the level-0 mpp (datasets.<name>.mpp, --slide-mpp)")
    levels = [slide_level(slide, i, mpp0) for i in range(slide.level_count)]
    best = min(levels, key=lambda lv: abs(np.log(lv.mpp / mpp)))
    if abs(best.mpp - mpp) > MPP_TOLERANCE * mpp:
        log.warning("slide %s: requested %.3f mpp, nearest level %d has %.3f mpp (used as is)",
                    path, mpp, best.level, best.mpp)
    return best


def read_region(slide: tiffslide.TiffSlide, level: SlideLevel, y: int, x: int, height: int,
                width: int) -> np.ndarray:
    """Read ``(height, width, 3)`` uint8 RGB at ``(y, x)`` of ``level``; outside the slide is white."""
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + height, level.height), min(x + width, level.width)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    if y1 <= y0 or x1 <= x0:
        return out
    location = (int(round(x0 * level.downsample)), int(round(y0 * level.downsample)))  # level-0 (x, y)
    region = slide.read_region(location, level.level, (x1 - x0, y1 - y0), as_array=True)
    out[y0 - y:y1 - y, x0 - x:x1 - x] = region[..., :3]
    return out
