"""Generated BraTS-like prediction/reference pairs for the lesion-wise and instance-wise reference tests.

Label maps use BraTS 2023 labels (NCR 1, ED 2, ET 3; also brats-evaluation's glioma groups
netc 1, snfh 2, et 3), several lobulated tumours per case, a tiny lesion, a missed lesion
every third seed, and false positives.
"""
from __future__ import annotations

import numpy as np

SHAPE = (48, 48, 48)
NCR, ED, ET = 1, 2, 3


def _ball(shape, center, radius):
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape)]
    return (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 <= radius ** 2


def _lobulated(rng, shape, center, radius):
    """A lesion: a ball plus 2-4 overlapping lobes (several components after region splits)."""
    mask = _ball(shape, center, radius)
    for _ in range(rng.integers(2, 5)):
        off = rng.normal(0, radius * 0.6, 3)
        mask |= _ball(shape, np.add(center, off), radius * rng.uniform(0.4, 0.8))
    return mask


def _tumour(rng, labels, center, radius):
    """Nested ED > NCR > ET lesion written into ``labels``."""
    wt = _lobulated(rng, labels.shape, center, radius)
    core = _lobulated(rng, labels.shape, np.add(center, rng.normal(0, 1, 3)), radius * 0.6) & wt
    et = core & ~_ball(labels.shape, np.add(center, rng.normal(0, 1, 3)), radius * 0.35)
    labels[wt & (labels == 0)] = ED
    labels[core] = NCR
    labels[et] = ET


def make_pair(seed: int, no_et: str = "") -> tuple[np.ndarray, np.ndarray]:
    """A reference with several lesions (one tiny, one split) and a prediction that misses, shifts, adds.

    ``no_et``: ``"ref"``, ``"pred"`` or ``"both"`` relabels ET as NCR there (empty-ET edge cases).
    """
    rng = np.random.default_rng(seed)
    ref = np.zeros(SHAPE, np.uint8)
    n = int(rng.integers(3, 6))
    centers = [rng.uniform(9, 39, 3) for _ in range(n)]
    for c in centers:
        _tumour(rng, ref, c, rng.uniform(2.5, 5.5))
    ref[_ball(SHAPE, rng.uniform(4, 44, 3), 1.5)] = ET  # a small lesion (under 50 mm³)
    pred = np.zeros_like(ref)
    for i, c in enumerate(centers):
        if i == 0 and seed % 3 == 0:
            continue  # missed lesion
        _tumour(rng, pred, np.add(c, rng.normal(0, 1.2, 3)), rng.uniform(2.5, 5.5))
    for _ in range(int(rng.integers(1, 3))):  # false positives, some tiny
        _tumour(rng, pred, rng.uniform(6, 42, 3), rng.uniform(1.0, 3.5))
    for side, arr in (("ref", ref), ("pred", pred)):
        if no_et in (side, "both"):
            arr[arr == ET] = NCR
    return ref, pred
