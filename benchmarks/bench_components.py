"""Largest connected component and Otsu threshold: scipy/numpy (before) vs scikit-image (now).

    PYTHONPATH=src python benchmarks/bench_components.py
Prints the time per call of each on a BraTS-sized (155 x 240 x 240) mask / image and checks that
both give the same voxels.
"""
from __future__ import annotations

import time

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from medseg.preprocess.skullstrip import largest_component


def scipy_largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndi.sum(mask, lab, range(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def numpy_otsu(arr: np.ndarray) -> float:
    hist, edges = np.histogram(arr, bins=256)
    w0 = np.cumsum(hist)
    mids = (edges[:-1] + edges[1:]) / 2
    m0 = np.cumsum(hist * mids)
    w1, total = w0[-1] - w0, m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (total - m0) / w1) ** 2
    return float(edges[int(np.nanargmax(between[:-1])) + 1])


def timed(fn, *args, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    image = ndi.gaussian_filter(rng.standard_normal((155, 240, 240)).astype(np.float32), 3)
    mask = image > 0.02
    assert np.array_equal(scipy_largest(mask), largest_component(mask))
    print(f"largest component: scipy {timed(scipy_largest, mask) * 1e3:.0f} ms, "
          f"medseg (scikit-image) {timed(largest_component, mask) * 1e3:.0f} ms")
    print(f"otsu: numpy {timed(numpy_otsu, image) * 1e3:.0f} ms ({numpy_otsu(image):.4f}), "
          f"scikit-image {timed(threshold_otsu, image) * 1e3:.0f} ms ({threshold_otsu(image, nbins=256):.4f})")


if __name__ == "__main__":
    main()
