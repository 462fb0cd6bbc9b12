"""Time surface metrics on a synthetic BraTS-sized case (240 x 240 x 155 at 1 mm), against MONAI.

Run: ``PYTHONPATH=src python benchmarks/bench_metrics.py [--repeats 3] [--no-monai]``
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
from scipy import ndimage

from medseg.evaluate import metrics
from medseg.evaluate.lesionwise import lesionwise_region
from medseg.tasks.presets import BRATS_REGIONS

REGIONS = tuple(BRATS_REGIONS)

log = logging.getLogger("bench_metrics")
SHAPE = (155, 240, 240)  # (z, y, x)
SPACING = (1.0, 1.0, 1.0)


def tumour_regions(rng: np.random.Generator, centre=(80, 110, 130), radii=(28, 38, 34)) -> dict[str, np.ndarray]:
    """WT/TC/ET masks: a lumpy ellipsoid (WT), its eroded core (TC) and the core's 3-voxel rim (ET)."""
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    r = sum(((g - c) / rad) ** 2 for g, c, rad in zip((zz, yy, xx), centre, radii))
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE).astype(np.float32), 6) * 12
    wt = r + noise < 1.0
    tc = ndimage.binary_erosion(wt, iterations=8)
    et = tc & ~ndimage.binary_erosion(tc, iterations=3)
    return dict(zip(REGIONS, (wt, tc, et)))


def timed(fn, repeats: int) -> tuple[float, float]:
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def monai_hd95():
    """MONAI's HD95 (max of directed 95th percentiles) as ``f(ref, pred) -> mm``, on CPU."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    torch.set_num_threads(2)

    def hd(ref: np.ndarray, pred: np.ndarray) -> float:
        t = [torch.from_numpy(x[None, None]) for x in (pred, ref)]
        return float(compute_hausdorff_distance(*t, include_background=True, percentile=95, spacing=SPACING).item())

    return hd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-monai", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    ref, pred = tumour_regions(np.random.default_rng(0)), tumour_regions(np.random.default_rng(1), centre=(81, 112, 129))
    monai_hd = None if args.no_monai else monai_hd95()

    log.info("shape %s, spacing %s mm, best of %d", SHAPE, SPACING, args.repeats)
    log.info("%-4s %9s %10s %10s %10s %9s %10s %9s %6s", "reg", "vox", "hd95 s", "all s", "lesion s", "HD95 mm",
             "MONAI s", "MONAI mm", "ratio")
    for name in REGIONS:
        a, b = ref[name], pred[name]
        t_hd, hd = timed(lambda: metrics.hd95(a, b, SPACING, method="max_directed"), args.repeats)
        t_all, _ = timed(lambda: metrics.all_metrics(a, b, SPACING), args.repeats)
        t_les, _ = timed(lambda: lesionwise_region(a, b, SPACING), args.repeats)
        row = f"{name:<4} {int(a.sum()):9d} {t_hd:10.3f} {t_all:10.3f} {t_les:10.3f} {hd:9.3f}"
        if monai_hd is not None:
            t_m, hd_m = timed(lambda: monai_hd(a, b), args.repeats)
            row += f" {t_m:10.3f} {hd_m:9.3f} {t_m / t_hd:6.1f}"
        log.info("%s", row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
