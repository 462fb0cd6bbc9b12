"""Fraction of training step time spent waiting for data (target <= 10%).

Runs the real training loop (timm U-Net, 2.5-D slices, augmentation on) on tiles of generated
cases, once with medseg's background prefetcher and once building each batch inline (what a
plain loop without a DataLoader does), and prints both wait fractions and the speed ratio.

    python benchmarks/bench_train_data.py [--steps 40] [--encoder resnet18]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from medseg.training.config import AugmentConfig
from medseg.training.batches import TileSet, make_batch
from medseg.io import write_json
from medseg.training.losses import get_loss
from medseg.models.unet import ModelConfig
from medseg.models import build_model

from _steps import time_steps  # benchmarks/_steps.py


def make_tiles(folder: Path, n: int = 6, shape=(80, 100, 82)) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    npys, jsons = [], []
    for i in range(n):
        arr = rng.normal(0, 1, (7, *shape)).astype(np.float16)
        arr[4:] = 0
        arr[4:, 30:50, 40:60, 30:50] = 1
        np.save(folder / f"c{i}.npy", arr)
        write_json({"n_image_channels": 4, "brain_slices": list(range(5, 75)), "fg_slices": list(range(30, 50))}, folder / f"c{i}.json")
        npys.append(str(folder / f"c{i}.npy"))
        jsons.append(str(folder / f"c{i}.json"))
    return npys, jsons


def run(tiles: TileSet, steps: int, encoder: str, prefetch: bool, batch: int,
        patch: tuple[int, int] | None = None) -> tuple[float, float]:
    from medseg.training.batches import Prefetcher

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder=encoder, in_channels=12))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = get_loss("dice_bce")
    make = lambda s: make_batch(tiles, s, 0, batch, 1, 0.6, patch, AugmentConfig())  # noqa: E731
    it = iter(Prefetcher(make, 0, steps)) if prefetch else ((s, make(s)) for s in range(steps))
    wait, compute = time_steps(model, opt, loss_fn, it, steps)
    return wait / (wait + compute), wait + compute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--patch", type=int, nargs=2, default=(64, 64), help="training crop (the demo default); 0 0 = whole slices")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tiles = TileSet(*make_tiles(Path(d)))
        patch = tuple(args.patch) if min(args.patch) > 0 else None
        run(tiles, 3, args.encoder, True, args.batch, patch)  # warm-up
        f_pre, t_pre = run(tiles, args.steps, args.encoder, True, args.batch, patch)
        f_inl, t_inl = run(tiles, args.steps, args.encoder, False, args.batch, patch)
    print(f"steps={args.steps} batch={args.batch} patch={patch} encoder={args.encoder} threads={torch.get_num_threads()}")
    print(f"medseg (prefetch thread): data wait {100 * f_pre:5.1f}% of step time, {t_pre / args.steps:.3f} s/step  (target <= 10%)")
    print(f"inline batches (peer)   : data wait {100 * f_inl:5.1f}% of step time, {t_inl / args.steps:.3f} s/step")
    print(f"speed ratio inline/medseg: {t_inl / t_pre:.2f}")


if __name__ == "__main__":
    main()
