"""Where sliding windows go: pure, cached functions of shapes only (no tensors, no model).

Shapes are spatial only, in array order (``(D, H, W)``, ``(H, W)`` or any N-D), in voxels.
Window locations are tuples of start indices in that order; a window covers
``start[i] : start[i] + patch_size[i]`` along each axis.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

Shape = tuple[int, ...]


def check_patch_size(patch_size: Shape, ndim: int) -> Shape:
    """Return ``patch_size`` as a tuple of ints, raising ValueError if it does not fit ``ndim``."""
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) != ndim:
        raise ValueError(f"patch_size must have one entry per spatial axis ({ndim}), got {patch_size}")
    if any(p < 1 for p in patch_size):
        raise ValueError(f"patch_size entries must be >= 1, got {patch_size}")
    return patch_size


def check_overlap(overlap: float) -> float:
    """Return ``overlap`` as a float, raising ValueError unless it is in [0, 1)."""
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return float(overlap)


@lru_cache(maxsize=256)
def compute_steps(image_size: int, patch_size: int, overlap: float) -> tuple[int, ...]:
    """Start positions of windows along one axis (nnU-Net's ``compute_steps_for_sliding_window``).

    The target step is ``patch_size * (1 - overlap)``; the number of windows is the fewest with
    at most that step that reach the border, and the starts are spread evenly (rounded) so the
    first window is flush with 0 and the last with ``image_size``.

    Args:
        image_size: axis length in voxels, ``>= patch_size`` (pad smaller inputs first).
        patch_size: window length in voxels.
        overlap: fraction of the window shared with its neighbour, in [0, 1).

    Returns:
        Sorted start indices.
    """
    if image_size < patch_size:
        raise ValueError(f"image_size must be >= patch_size, got {image_size} < {patch_size}; pad first")
    check_overlap(overlap)
    target_step = max(1.0, patch_size * (1.0 - overlap))
    num_steps = math.ceil(round((image_size - patch_size) / target_step, 6)) + 1
    if num_steps == 1:
        return (0,)
    actual_step = (image_size - patch_size) / (num_steps - 1)
    return tuple(int(round(actual_step * i)) for i in range(num_steps))


@lru_cache(maxsize=64)
def compute_windows(image_size: Shape, patch_size: Shape, overlap: float) -> tuple[Shape, ...]:
    """Start tuples of all windows tiling an N-D image (row-major order, last axis fastest).

    Args:
        image_size: spatial shape, every entry ``>= patch_size`` (see :func:`padded_size`).
        patch_size: window shape, same length.
        overlap: in [0, 1), the same for every axis (axes with patch size 1 simply step by 1).

    Returns:
        One start tuple per window.
    """
    patch_size = check_patch_size(patch_size, len(image_size))
    per_axis = [compute_steps(int(s), p, overlap) for s, p in zip(image_size, patch_size)]
    return tuple(itertools.product(*per_axis))


@lru_cache(maxsize=64)
def padded_size(image_size: Shape, patch_size: Shape) -> Shape:
    """Shape after padding each axis (at its end) up to at least the patch size."""
    return tuple(max(int(s), int(p)) for s, p in zip(image_size, patch_size))


def window_slices(start: Shape, patch_size: Shape) -> tuple[slice, ...]:
    """Slices selecting the window at ``start`` of shape ``patch_size``."""
    return tuple(slice(s, s + p) for s, p in zip(start, patch_size))


def windows_touching(mask: np.ndarray, windows: np.ndarray, patch_size: Shape, scale: float) -> np.ndarray:
    """Which windows overlap a coarse boolean mask (e.g. tissue), vectorised via a summed-area table.

    Args:
        mask: ``(h, w)`` (or N-D) boolean mask at ``1/scale`` of the window grid's resolution.
        windows: ``(n, ndim)`` integer array of window starts at full resolution.
        patch_size: window shape at full resolution.
        scale: full-resolution voxels per mask voxel (``>= 1``).

    Returns:
        ``(n,)`` boolean array, True where the window contains at least one mask voxel.
    """
    windows = np.asarray(windows, dtype=np.int64).reshape(-1, mask.ndim)
    sat = np.asarray(mask, dtype=np.int64)
    for axis in range(mask.ndim):
        sat = sat.cumsum(axis=axis)
    sat = np.pad(sat, [(1, 0)] * mask.ndim)
    lo = np.clip(np.floor(windows / scale).astype(np.int64), 0, np.array(mask.shape))
    hi = np.clip(np.ceil((windows + np.array(patch_size)) / scale).astype(np.int64), 0, np.array(mask.shape))
    total = np.zeros(len(windows), dtype=np.int64)
    for corner in itertools.product((0, 1), repeat=mask.ndim):  # inclusion-exclusion
        idx = tuple(np.where(c, hi[:, i], lo[:, i]) for i, c in enumerate(corner))
        total += (-1) ** (mask.ndim - sum(corner)) * sat[idx]
    return total > 0


def check_batch_size(batch_size: int) -> int:
    """Return ``batch_size`` if it is a positive int, else raise ValueError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size
