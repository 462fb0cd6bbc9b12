"""Synthetic glioma: lobulated nested regions (oedema, enhancing rim, necrotic core) + mass effect.

Everything happens on the canonical head grid, with arrays in (z, y, x) order and a numpy
``Generator`` for all randomness, so a case is a pure function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from medseg.tasks.presets import CONVENTIONS

LABELS = CONVENTIONS["2021"]  # the demo is written in the BraTS 2021 convention


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
    return n / max(float(n.std()), 1e-6)


def _pick_centre(rng: np.random.Generator, wm: np.ndarray, depth_vox: np.ndarray, min_depth: float) -> np.ndarray:
    cand = np.argwhere((wm > 0.6) & (depth_vox > min_depth))
    if len(cand) == 0:
        cand = np.argwhere(depth_vox >= depth_vox.max() * 0.7)
    return cand[rng.integers(len(cand))].astype(float)


@dataclass(frozen=True)
class TumourSite:
    """The head a tumour grows in: tissue maps it displaces and the brain it stays inside.

    Arrays are on the canonical head grid in (z, y, x) order.

    Attributes:
        wm, gm, csf: tissue probability maps, modified in place by the mass effect.
        brain: brain mask; the tumour stays inside it.
        depth_vox: distance to the brain boundary in voxels.
        spacing: isotropic voxel size in mm.
    """

    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    depth_vox: np.ndarray
    spacing: float


def insert_tumour(rng: np.random.Generator, site: TumourSite, volume_ml: tuple[float, float] = (15.0, 100.0),
                  labels: np.ndarray | None = None) -> np.ndarray:
    """Insert one tumour, displacing the tissue maps of ``site`` in place (mass effect); return the label map.

    Args:
        rng: random generator (the case's seed).
        site: tissue maps (modified in place), brain mask, depth and voxel size of the head.
        volume_ml: range of whole-tumour volume in mL (sampled log-uniformly).
        labels: existing label map to add to (for multi-focal cases).

    Returns:
        uint8 labels in the BraTS 2021 convention (1 NCR, 2 ED, 4 ET).
    """
    wm, gm, csf, brain, spacing = site.wm, site.gm, site.csf, site.brain, site.spacing
    out = np.zeros(brain.shape, np.uint8) if labels is None else labels
    vol_mm3 = float(np.exp(rng.uniform(np.log(volume_ml[0]), np.log(volume_ml[1])))) * 1000.0
    radius = (3.0 * vol_mm3 / (4.0 * np.pi)) ** (1 / 3) / spacing  # voxels
    centre = _pick_centre(rng, wm, site.depth_vox, 0.6 * radius)
    half = int(np.ceil(radius * 1.8)) + 2
    lo = np.maximum(centre.astype(int) - half, 0)
    hi = np.minimum(centre.astype(int) + half + 1, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij"))
    rel = grid - centre[:, None, None, None].astype(np.float32)
    axes = rng.uniform(0.75, 1.25, size=3).astype(np.float32)
    r = np.sqrt(((rel / axes[:, None, None, None]) ** 2).sum(0)) / radius
    shape = rel.shape[1:]

    # mass effect: tissue at x comes from c + (x - c) * g(r), g < 1 near the tumour
    sigma = rng.uniform(0.45, 0.65)
    g = 1.0 - 0.45 * np.exp(-0.5 * (r / sigma) ** 2)
    src = centre[:, None, None, None] + rel * g[None]
    for tissue in (wm, gm, csf):
        tissue[box] = ndi.map_coordinates(tissue, src, order=1, mode="nearest")

    d_wt = r + 0.22 * _smooth_noise(rng, shape, max(radius / 3, 1.0))
    d_tc = r + 0.15 * _smooth_noise(rng, shape, max(radius / 4, 1.0))
    r_tc = rng.uniform(0.45, 0.7)
    in_brain = brain[box]
    wt = (d_wt < 1.0 - 0.25 * (csf[box] > 0.8)) & in_brain
    tc = (d_tc < r_tc) & wt
    ncr = (d_tc < r_tc * rng.uniform(0.35, 0.7)) & tc if rng.random() < 0.85 else np.zeros_like(tc)
    et = tc & ~ncr
    if not et.any():  # always an enhancing rim
        et = tc & ~ndi.binary_erosion(tc)
    sub = out[box]
    sub[wt & (sub == 0)] = LABELS["ED"]
    sub[tc] = LABELS["NCR"]
    sub[et] = LABELS["ET"]
    sub[ncr] = LABELS["NCR"]
    return out
