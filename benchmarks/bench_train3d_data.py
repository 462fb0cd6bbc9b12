"""Share of 3-D training step time spent waiting for data (target <= 10 %).

Trains a small 3-D U-Net on 64^3 patches drawn by :func:`medseg.training.batches3d.make_batch3d` from
memory-mapped float16 volumes (default augmentation on), once with medseg's background
prefetcher and once building each batch inline, and prints both wait shares.
``bench_train3d.py`` imports :func:`make_volumes` and :func:`data_wait_share` to report the same
number for the registry's 3-D models.

    python benchmarks/bench_train3d_data.py [--steps 20] [--batch 2] [--patch 64 64 64]
    python benchmarks/bench_train3d_data.py --augment-only   # ms per augmented batch, no training
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseg.training.config import Augment3DConfig
from medseg.training.augment3d import augment3d
from medseg.training.batches import Prefetcher
from medseg.training.config import Patch3DConfig
from medseg.training.batches3d import PoolPrefetcher, VolumeSet3D, make_batch3d

from _steps import time_steps  # benchmarks/_steps.py


def make_volumes(folder: Path, n: int = 4, shape=(96, 128, 112), channels: int = 4) -> VolumeSet3D:
    """``n`` cases of ``(channels, *shape)`` float16 images with WT/TC/ET-like nested regions."""
    rng = np.random.default_rng(0)
    images, targets = [], []
    for i in range(n):
        img = rng.normal(0, 1, (channels, *shape)).astype(np.float16)
        tgt = np.zeros((3, *shape), np.uint8)
        c = np.array(shape) // 2 + rng.integers(-10, 11, 3)
        for k, r in enumerate((18, 10, 5)):
            tgt[k, c[0] - r: c[0] + r, c[1] - r: c[1] + r, c[2] - r: c[2] + r] = 1
        np.save(folder / f"img{i}.npy", img)
        np.save(folder / f"tgt{i}.npy", tgt)
        images.append(folder / f"img{i}.npy")
        targets.append(folder / f"tgt{i}.npy")
    return VolumeSet3D(images, targets, "regions", 3)


class SmallUNet3D(nn.Module):
    """Two-level 3-D U-Net (16/32 channels, instance norm), a stand-in for the registry's models."""

    def __init__(self, in_channels: int = 4, n_classes: int = 3, width: int = 16) -> None:
        super().__init__()

        def block(a, b, stride=1):
            return nn.Sequential(nn.Conv3d(a, b, 3, stride, 1), nn.InstanceNorm3d(b, affine=True), nn.LeakyReLU(0.01),
                                 nn.Conv3d(b, b, 3, 1, 1), nn.InstanceNorm3d(b, affine=True), nn.LeakyReLU(0.01))

        self.enc, self.down = block(in_channels, width), block(width, 2 * width, 2)
        self.up = nn.ConvTranspose3d(2 * width, width, 2, 2)
        self.dec, self.head = block(2 * width, width), nn.Conv3d(width, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        return self.head(self.dec(torch.cat([e, self.up(self.down(e))], 1)))


def data_wait_share(model: nn.Module, vols: VolumeSet3D, steps: int, batch: int, patch: tuple[int, int, int],
                    aug: Augment3DConfig | None, prefetch: bool = True, loss_fn=None, workers: int = 1) -> tuple[float, float]:
    """Train ``steps`` steps; returns ``(share of time waiting for the next batch, seconds per step)``.

    ``prefetch`` builds batches ahead on one thread (:class:`medseg.training.batches.Prefetcher`), or on
    ``workers`` threads when ``workers > 1`` (:class:`medseg.training.batches3d.PoolPrefetcher`).
    """
    loss_fn = loss_fn or (lambda lg, y: F.binary_cross_entropy_with_logits(lg, y))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    cfg = Patch3DConfig(patch_size=patch)
    make = lambda s: make_batch3d(vols, s, 0, batch, cfg, aug)  # noqa: E731
    if not prefetch:
        it = ((s, make(s)) for s in range(steps))
    else:
        it = iter(PoolPrefetcher(make, 0, steps, workers, 2 * workers) if workers > 1 else Prefetcher(make, 0, steps))
    wait, compute = time_steps(model, opt, loss_fn, it, steps)
    return wait / (wait + compute), (wait + compute) / steps


def augment_ms(batch: int, patch: tuple[int, int, int], channels: int = 4, reps: int = 10) -> dict[str, float]:
    """Milliseconds of :func:`medseg.training.augment3d.augment3d` per ``(batch, channels, *patch)`` batch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, channels, *patch)).astype(np.float32)
    y = (rng.random((batch, 3, *patch)) < 0.1).astype(np.uint8)
    out = {}
    for name, cfg in (("defaults", Augment3DConfig()),
                      ("rotation+zoom every sample", Augment3DConfig(p_rotate=1, p_scale=1)),
                      ("rotation+zoom+elastic every sample", Augment3DConfig(p_rotate=1, p_scale=1, p_elastic=1))):
        t = time.perf_counter()
        for r in range(reps):
            g = np.random.default_rng(r)
            for b in range(batch):
                augment3d(x[b], y[b], g, cfg)
        out[name] = 1000 * (time.perf_counter() - t) / reps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--patch", type=int, nargs=3, default=(64, 64, 64))
    ap.add_argument("--width", type=int, default=16, help="channels of the small U-Net's first level")
    ap.add_argument("--workers", type=int, default=1, help="batch-building threads (> 1: PoolPrefetcher)")
    ap.add_argument("--augment-only", action="store_true", help="only time augment3d per batch")
    args = ap.parse_args()
    patch = tuple(args.patch)
    if args.augment_only:
        for name, ms in augment_ms(args.batch, patch).items():
            print(f"augment3d {name}: {ms:.1f} ms per {args.batch} x 4 x {patch} batch (torch threads={torch.get_num_threads()})")
        return
    with tempfile.TemporaryDirectory() as d:
        vols = make_volumes(Path(d))
        t = time.perf_counter()
        for s in range(5):
            make_batch3d(vols, s, 0, args.batch, Patch3DConfig(patch_size=patch), Augment3DConfig())
        build = (time.perf_counter() - t) / 5
        torch.manual_seed(0)
        model = SmallUNet3D(vols.n_channels, 3, args.width)
        data_wait_share(model, vols, 2, args.batch, patch, Augment3DConfig())  # warm-up
        f_pre, t_pre = data_wait_share(model, vols, args.steps, args.batch, patch, Augment3DConfig(), prefetch=True,
                                       workers=args.workers)
        f_inl, t_inl = data_wait_share(model, vols, args.steps, args.batch, patch, Augment3DConfig(), prefetch=False)
    print(f"steps={args.steps} batch={args.batch} patch={patch} model=SmallUNet3D(width={args.width}) "
          f"torch threads={torch.get_num_threads()}; memory-mapped float16 volumes, default Augment3DConfig")
    print(f"building one batch: {1000 * build:.0f} ms")
    print(f"medseg (prefetch, {args.workers} thread(s)): data wait {100 * f_pre:5.1f}% of step time, {t_pre:.3f} s/step  (target <= 10%)")
    print(f"inline batches                : data wait {100 * f_inl:5.1f}% of step time, {t_inl:.3f} s/step")


if __name__ == "__main__":
    main()
