"""Blending weight maps for overlapping windows, chosen by name from a registry.

Every map has the patch's spatial shape, is float32, has maximum 1 and is strictly positive, so
the summed weights never vanish where a window was predicted. Axes of patch size 1 (a 2-D net
run slice by slice over a volume) get constant weight 1 along them in every mode.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache, reduce

import numpy as np

Shape = tuple[int, ...]


def _centred(p: int) -> np.ndarray:
    """Voxel-centre distances from the patch centre along an axis of length ``p``."""
    return np.arange(p, dtype=np.float64) - (p - 1) / 2.0


def gaussian_profile(p: int, sigma_scale: float) -> np.ndarray:
    """Gaussian with ``sigma = sigma_scale * p`` at voxel centres (symmetric for even ``p``).

    Like nnU-Net's ``compute_gaussian``, but evaluated analytically rather than by filtering a delta.
    """
    return np.exp(-0.5 * (_centred(p) / (sigma_scale * p)) ** 2)


def constant_profile(p: int, sigma_scale: float) -> np.ndarray:
    """All ones: plain averaging of overlapping windows."""
    return np.ones(p)


def cosine_profile(p: int, sigma_scale: float) -> np.ndarray:
    """Raised cosine (Hann) ``sin^2(pi (i + 0.5) / p)``: sums to ~1 at 50 % overlap."""
    return np.sin(math.pi * (np.arange(p) + 0.5) / p) ** 2


# separable modes: the N-D map is the outer product of one 1-D profile per axis
PROFILES: dict[str, Callable[[int, float], np.ndarray]] = {
    "gaussian": gaussian_profile,
    "constant": constant_profile,
    "cosine": cosine_profile,
}


def _profiles(patch_size: Shape, mode: str, sigma_scale: float) -> list[np.ndarray]:
    """Per-axis profiles of a separable mode, each scaled to maximum 1 (size-1 axes: ``[1.0]``)."""
    out = []
    for p in patch_size:
        prof = np.ones(1) if p == 1 else PROFILES[mode](p, sigma_scale)
        out.append(prof / prof.max())
    return out


def _separable(mode: str) -> Callable[[Shape, float], np.ndarray]:
    def weights(patch_size: Shape, sigma_scale: float) -> np.ndarray:
        return reduce(np.multiply.outer, _profiles(patch_size, mode, sigma_scale), np.ones(()))
    weights.__doc__ = f"Outer product of per-axis {mode} profiles ({PROFILES[mode].__doc__.splitlines()[0]})"
    return weights


def pyramid_weights(patch_size: Shape, sigma_scale: float) -> np.ndarray:
    """Distance to the nearest patch border in voxels (1 at the border voxel), de Bel et al. style.

    Falls off linearly from the centre; axes of size 1 are ignored.
    """
    dist = np.full(patch_size, np.inf)
    for axis, p in enumerate(patch_size):
        if p == 1:
            continue
        d = np.minimum(np.arange(p) + 1, p - np.arange(p)).astype(np.float64)
        dist = np.minimum(dist, d.reshape([-1 if i == axis else 1 for i in range(len(patch_size))]))
    return np.where(np.isinf(dist), 1.0, dist)


WEIGHT_MODES: dict[str, Callable[[Shape, float], np.ndarray]] = {
    "gaussian": _separable("gaussian"),
    "constant": _separable("constant"),
    "pyramid": pyramid_weights,
    "cosine": _separable("cosine"),
}


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a registered weight mode, else raise ValueError listing them."""
    if mode not in WEIGHT_MODES:
        raise ValueError(f"mode must be one of {sorted(WEIGHT_MODES)}, got {mode!r}")
    return mode


@lru_cache(maxsize=32)
def compute_weights(patch_size: Shape, mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """Weight map for one window, normalised to maximum 1 with zeros replaced by the smallest nonzero.

    Args:
        patch_size: window shape in voxels (array order, e.g. ``(D, H, W)``).
        mode: key of :data:`WEIGHT_MODES`.
        sigma_scale: Gaussian sigma as a fraction of the patch size (``gaussian`` only), > 0.

    Returns:
        Read-only float32 array of shape ``patch_size`` (cached; copy before modifying).
    """
    check_mode(mode)
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    patch_size = tuple(int(p) for p in patch_size)
    if any(p < 1 for p in patch_size):
        raise ValueError(f"patch_size entries must be >= 1, got {patch_size}")
    w = WEIGHT_MODES[mode](patch_size, float(sigma_scale)).reshape(patch_size)
    w = (w / w.max()).astype(np.float32)
    if (w == 0).any():  # float32 underflow far from the centre (small sigma_scale)
        w[w == 0] = w[w > 0].min()
    w.setflags(write=False)
    return w


@lru_cache(maxsize=128)
def trimmed_weights(patch_size: Shape, mode: str, sigma_scale: float,
                    trim: tuple[tuple[int, int], ...]) -> np.ndarray:
    """:func:`compute_weights` with weight 0 in the first ``trim[i][0]`` and last ``trim[i][1]`` voxels of axis ``i``.

    Used to drop a window's outer band, where a network with zero padding sees a truncated
    receptive field, on the sides that are not on the image border.
    """
    w = compute_weights(patch_size, mode, sigma_scale)
    if not any(lo or hi for lo, hi in trim):
        return w
    w = w.copy()
    for axis, (lo, hi) in enumerate(trim):
        index = [slice(None)] * w.ndim
        index[axis] = slice(0, lo)
        w[tuple(index)] = 0
        index[axis] = slice(w.shape[axis] - hi, None)
        w[tuple(index)] = 0
    w.setflags(write=False)
    return w


@lru_cache(maxsize=32)
def separable_profiles(patch_size: Shape, mode: str, sigma_scale: float) -> tuple[np.ndarray, ...] | None:
    """Per-axis float32 profiles whose outer product is :func:`compute_weights`, or None.

    None for non-separable modes (``pyramid``) and when float32 underflow made
    :func:`compute_weights` replace zeros (then only the full map is exact).
    """
    if mode not in PROFILES:
        return None
    profiles = tuple(p.astype(np.float32) for p in _profiles(patch_size, mode, sigma_scale))
    if np.prod([p.min() for p in profiles], dtype=np.float64) < np.finfo(np.float32).tiny:
        return None
    for p in profiles:
        p.setflags(write=False)
    return profiles
