"""A tiny DDP training loop on 3-D patches: what train.py's 3-D loop does with :mod:`medseg.training.ddp`.

Run under torchrun by ``tests/test_ddp.py`` (2 CPU processes, gloo) and called in-process as the
one-process reference::

    torchrun --standalone --nproc_per_node 2 tests/ddp_loop.py --images a.npy --targets a_t.npy --out curve.json
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

from medseg.training.config import Augment3DConfig
from medseg.training.config import Patch3DConfig
from medseg.training.batches3d import VolumeSet3D, make_batch3d
from medseg.training.ddp import DistEnv, all_reduce_mean, detect_env, init_distributed, shard, shutdown, unwrap, wrap_model

PATCH = Patch3DConfig(patch_size=(12, 12, 12))


def tiny_net(in_channels: int, n_classes: int) -> nn.Module:
    """Conv-InstanceNorm-LeakyReLU then a 1x1x1 head: per-sample normalisation, as the 3-D U-Nets."""
    return nn.Sequential(nn.Conv3d(in_channels, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True),
                         nn.LeakyReLU(0.01), nn.Conv3d(4, n_classes, 1))


def run(images: list[str], targets: list[str], steps: int, batch: int, seed: int, env: DistEnv,
        samples: range | None = None) -> tuple[list[float], list[float]]:
    """Train ``steps`` SGD steps; returns the global-batch loss per step and the final weights.

    ``samples`` overrides this rank's share of the batch (for the negative control only).
    """
    device = init_distributed(env, backend="gloo")
    vols = VolumeSet3D(images, targets, "regions", 2, build_locations=False)
    torch.manual_seed(0)
    model = wrap_model(tiny_net(vols.n_channels, 2), env, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mine = samples if samples is not None else shard(batch, env)
    losses = []
    for step in range(steps):
        x, y = make_batch3d(vols, step, seed, batch, PATCH, Augment3DConfig(), samples=mine)
        loss = F.binary_cross_entropy_with_logits(model(torch.from_numpy(x).to(device)), torch.from_numpy(y).to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(all_reduce_mean({"loss": loss.item()}, env)["loss"])
    weights = torch.cat([p.detach().flatten() for p in unwrap(model).parameters()]).tolist()
    return losses, weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--targets", nargs="+", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    env = detect_env()
    losses, weights = run(args.images, args.targets, args.steps, args.batch, args.seed, env)
    if env.is_main:  # only rank 0 writes
        with open(args.out, "w") as f:
            json.dump({"world_size": env.world_size, "losses": losses, "weights": weights}, f)
    shutdown(env)


if __name__ == "__main__":
    main()
