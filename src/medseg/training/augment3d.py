"""3-D patch augmentation: rotation, scaling, elastic warp, flips, intensity; all drawn from one rng.

The defaults follow nnU-Net's default 3-D training transforms (``nnUNetTrainer.
get_training_transforms``: rotation up to 30 degrees around each axis and scaling 0.7-1.4, each
with probability 0.2; elastic deformation off; mirroring of every axis; multiplicative brightness
and contrast 0.75-1.25 with probability 0.15; gamma 0.7-1.5 with probability 0.3; Gaussian noise
of variance up to 0.1 with probability 0.1). Left out: Gaussian blur and simulated low resolution.

One sample at a time: the image is ``(C, Z, Y, X)`` float32 and the target either regions
``(K, Z, Y, X)`` or labels ``(Z, Y, X)``. The geometric warp samples the image trilinearly and the
target with nearest neighbour on the same coordinates (``torch.nn.functional.grid_sample`` on the
CPU, about 2x faster than ``scipy.ndimage.affine_transform`` for a 4-channel 64^3 patch; the
target by direct indexing), so image and target stay aligned; outside the input both read 0 (the
padding value of :mod:`medseg.training.batches3d`). Cost on one thread of 2 cores shared with other jobs (load
7-10): 11-33 ms per 2 x 4 x 64^3 batch with the defaults, 85-240 ms with rotation and zoom on
every sample (``python benchmarks/bench_train3d_data.py --augment-only``).
The warp may read a larger input than it writes (``out_shape``): the patch sampler crops the
region :func:`input_extent` asks for, so a rotated or zoomed-out patch sees real neighbouring
tissue instead of zeros, as nnU-Net's enlarged initial patch does.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from medseg.training.config import Augment3DConfig


@dataclass(frozen=True)
class SpatialDraw:
    """One drawn geometric transform.

    Attributes:
        matrix: ``(3, 3)`` map from an output voxel offset (from the output centre, Z/Y/X) to the
            input voxel offset from the input centre.
        elastic: ``(3, g, g, g)`` control-point displacements (voxels, Z/Y/X), or ``None``.
    """

    matrix: np.ndarray
    elastic: np.ndarray | None


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation about the Z, then Y, then X axis (radians), in (Z, Y, X) coordinates."""
    mats = []
    for axis, a in enumerate(angles):
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        mats.append(m)
    return mats[2] @ mats[1] @ mats[0]


def draw_spatial(rng: np.random.Generator, cfg: Augment3DConfig) -> SpatialDraw | None:
    """Draw rotation/zoom/elastic for one sample; ``None`` when none applies (the common case).

    Always consumes the same number of random draws, so later draws do not depend on the outcome.
    """
    u = rng.random(3)
    angles = np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(cfg.rotate_deg))
    zoom = rng.uniform(*cfg.scale)
    field_seed = int(rng.integers(2**31))
    rotate, scale, elastic = u[0] < cfg.p_rotate, u[1] < cfg.p_scale, u[2] < cfg.p_elastic
    if not (rotate or scale or elastic):
        return None
    matrix = (_rotation(angles) if rotate else np.eye(3)) / (zoom if scale else 1.0)
    field = None
    if elastic and cfg.elastic_voxels > 0:
        g = cfg.elastic_grid
        field = np.random.default_rng(field_seed).normal(0, cfg.elastic_voxels, (3, g, g, g))
    return SpatialDraw(matrix, field)


def input_extent(draw: SpatialDraw | None, out_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Input box ``(Z, Y, X)`` voxels that covers everything the warp reads for ``out_shape``."""
    if draw is None:
        return tuple(int(n) for n in out_shape)
    half = (np.asarray(out_shape, float) - 1) / 2
    corners = np.array(list(itertools.product(*[(-h, h) for h in half])))
    reach = np.abs(corners @ draw.matrix.T).max(0)
    if draw.elastic is not None:
        reach = reach + np.abs(draw.elastic).max()
    return tuple(int(n) for n in 2 * np.ceil(reach) + 3)


def warp(x: np.ndarray, y: np.ndarray, draw: SpatialDraw, out_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resample image ``(C, *in)`` trilinearly and target (``(K, *in)`` or ``(*in)``) by nearest.

    Output voxel ``o`` reads input ``c_in + matrix @ (o - c_out) + elastic(o)`` where ``c_*`` are
    the box centres; zeros outside the input.
    """
    in_shape = np.asarray(x.shape[1:], float)
    out = np.asarray(out_shape, float)
    axes = [np.arange(n) - (n - 1) / 2 for n in out_shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).astype(np.float32)  # (Z, Y, X, 3)
    coords = grid @ draw.matrix.T.astype(np.float32) + ((in_shape - 1) / 2).astype(np.float32)
    if draw.elastic is not None:
        field = F.interpolate(torch.from_numpy(draw.elastic[None]).float(), size=tuple(int(n) for n in out),
                              mode="trilinear", align_corners=True)[0]
        coords += field.permute(1, 2, 3, 0).numpy()
    norm = 2 * coords / np.maximum(in_shape - 1, 1).astype(np.float32) - 1
    g = torch.from_numpy(np.ascontiguousarray(norm[..., ::-1]))[None]  # grid_sample wants (x, y, z)
    xo = F.grid_sample(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None], g, mode="bilinear",
                       padding_mode="zeros", align_corners=True)[0].numpy()
    # nearest neighbour for the target by direct indexing: ~10x cheaper than grid_sample's kernel
    idx = np.rint(coords).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < in_shape.astype(np.int64)), -1)
    flat = np.ravel_multi_index(tuple(np.moveaxis(idx, -1, 0)), x.shape[1:], mode="clip")
    lead = y.shape[:-3]
    yo = np.ascontiguousarray(y).reshape(*lead, -1)[..., flat] * inside.astype(y.dtype)
    return xo, yo.reshape(*lead, *out_shape)


def _intensity(x: np.ndarray, rng: np.random.Generator, cfg: Augment3DConfig) -> np.ndarray:
    c = x.shape[0]
    u = rng.random((4, c))
    mult = rng.uniform(*cfg.brightness, c)
    contrast = rng.uniform(*cfg.contrast, c)
    gamma = rng.uniform(*cfg.gamma, c)
    noise_std = np.sqrt(rng.uniform(*cfg.noise_var))
    noise_seed = int(rng.integers(2**31))
    for ch in range(c):
        v = x[ch]
        if u[0, ch] < cfg.p_brightness:
            v *= mult[ch]
        if u[1, ch] < cfg.p_contrast:
            m = v.mean()
            v -= m
            v *= contrast[ch]
            v += m
        if u[2, ch] < cfg.p_gamma:
            lo, hi = float(v.min()), float(v.max())
            if hi > lo:
                v[...] = ((v - lo) / (hi - lo)) ** gamma[ch] * (hi - lo) + lo
    if u[3, 0] < cfg.p_noise and noise_std > 0:
        x += np.random.default_rng(noise_seed).standard_normal(x.shape, dtype=np.float32) * np.float32(noise_std)
    return x


_DRAW = object()


def augment3d(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, cfg: Augment3DConfig,
              spatial: SpatialDraw | None | object = _DRAW,
              out_shape: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Augment one sample: warp (rotation/zoom/elastic), mirror, then intensity.

    Args:
        x: image ``(C, Z, Y, X)`` float32 (z-scored).
        y: regions ``(K, Z, Y, X)`` or labels ``(Z, Y, X)``, any integer/float dtype (kept).
        rng: the sample's generator; the result is a pure function of its state.
        cfg: the augmentation settings.
        spatial: a transform already drawn with :func:`draw_spatial` (the patch sampler draws it
            first to crop the input box it needs); drawn here from ``rng`` when not given.
        out_shape: output ``(Z, Y, X)``; defaults to the input's.

    Returns:
        ``(x, y)`` of spatial shape ``out_shape``: float32 image, target in its input dtype.
    """
    if spatial is _DRAW:
        spatial = draw_spatial(rng, cfg)
    out_shape = tuple(out_shape or x.shape[1:])
    if spatial is not None:
        x, y = warp(x, y, spatial, out_shape)
    elif tuple(x.shape[1:]) != out_shape:
        raise ValueError(f"without a spatial transform the input {x.shape[1:]} must already be out_shape {out_shape}")
    flips = rng.random(3) < cfg.p_flip
    axes = tuple(a for a in cfg.flip_axes if flips[a])
    if axes:
        x = np.flip(x, tuple(a + 1 for a in axes))
        y = np.flip(y, tuple(a + y.ndim - 3 for a in axes))
    x = np.array(x, dtype=np.float32)  # a writable contiguous copy
    return _intensity(x, rng, cfg), np.ascontiguousarray(y)
