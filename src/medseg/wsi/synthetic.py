"""Synthetic pyramidal whole-slide TIFFs for tests and benchmarks, written tile by tile.

The image is a function of level-0 coordinates (white glass, a few pink textured ellipses of
"tissue"), so every pyramid level is rendered directly and the whole image is never in memory.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

log = logging.getLogger(__name__)

BACKGROUND = 245
ELLIPSES = ((0.30, 0.30, 0.20, 0.15), (0.65, 0.60, 0.22, 0.25), (0.20, 0.80, 0.08, 0.10))  # cy, cx, ry, rx


def render(y0: int, x0: int, height: int, width: int, size: int, step: float = 1.0) -> np.ndarray:
    """RGB uint8 ``(height, width, 3)`` of the synthetic slide of side ``size`` (level-0 pixels).

    Pixel ``(i, j)`` samples level-0 position ``((y0 + i) * step, (x0 + j) * step)``.
    """
    yy = ((np.arange(height) + y0 + 0.5) * step / size)[:, None]
    xx = ((np.arange(width) + x0 + 0.5) * step / size)[None, :]
    inside = np.zeros((height, width), dtype=bool)
    for cy, cx, ry, rx in ELLIPSES:
        inside |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    out = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    if inside.any():
        texture = 0.8 + 0.2 * np.sin(yy * size / 97.0) * np.cos(xx * size / 61.0)  # period ~ 400 px
        colour = np.array([200.0, 110.0, 170.0])
        tissue = (texture[..., None] * colour).astype(np.uint8)
        out[inside] = tissue[inside]
    return out


def write_synthetic_slide(path: str | Path, size: int, *, mpp: float | None = 0.5, tile: int = 256,
                          compression: str = "jpeg", min_level_side: int = 512) -> Path:
    """Write a square pyramidal BigTIFF slide of side ``size`` px, level by level, tile by tile.

    Args:
        path: output ``.tif``.
        size: level-0 side in pixels.
        mpp: microns per pixel at level 0 (stored as TIFF resolution); None writes none.
        tile: TIFF tile side.
        compression: ``jpeg``, ``zlib`` or ``none``.
        min_level_side: add 2x-downsampled levels (SubIFDs) while the side stays above this.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sides = [size]
    while sides[-1] // 2 >= min_level_side:
        sides.append(sides[-1] // 2)

    def tiles(side: int) -> Iterator[np.ndarray]:
        for y in range(0, side, tile):
            for x in range(0, side, tile):
                yield render(y, x, tile, tile, size, size / side)

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, side in enumerate(sides):
            extra = {"subifds": len(sides) - 1} if i == 0 else {"subfiletype": 1}
            if mpp is not None:
                res = 1e4 / (mpp * size / side)
                extra.update(resolution=(res, res), resolutionunit="CENTIMETER")
            tif.write(tiles(side), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                      compression=None if compression == "none" else compression, **extra)
    log.debug("wrote synthetic slide %s (%d px, %d levels)", path, size, len(sides))
    return path
