"""3-D training speed: medseg's ``unet3d`` (Kayalibay et al.) against MONAI's ``DynUNet`` of a
similar parameter count, same patch, batch, loss and optimiser, on this machine's CPU.

Prints one row per model: parameters, training steps per second (forward + Jaccard loss +
backward + AdamW step on random data, after warm-up), the ratio to DynUNet, and medseg's
preflight estimate of the GPU memory the same step needs under AMP (``medseg.training.memory``).
``unet3d`` is also timed in ``channels_last_3d`` layout. ``--all`` adds tiramisu3d and
factorized_unet in their paper configurations (slow on a CPU).

    python benchmarks/bench_train3d.py [--patch 64] [--batch 2] [--channels 4] [--steps 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch

from medseg.training.losses import get_loss
from medseg.models.factorized_unet import FactorizedUNetConfig
from medseg.models.tiramisu3d import Tiramisu3DConfig
from medseg.models.unet3d import UNet3DConfig
from medseg.models import build_model
from medseg.training.memory import estimate_module_memory


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dynunet(in_channels: int, out_channels: int, base: int, levels: int = 4) -> torch.nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(3, in_channels, out_channels, kernel_size=[3] * levels, strides=[1] + [2] * (levels - 1),
                   upsample_kernel_size=[2] * (levels - 1), filters=[base * 2**i for i in range(levels)],
                   norm_name="batch", act_name=("prelu", {"num_parameters": 1}))


def matching_dynunet(in_channels: int, out_channels: int, target: int) -> tuple[torch.nn.Module, int]:
    """The DynUNet (4 levels, filters ``b, 2b, 4b, 8b``) whose parameter count is closest to ``target``."""
    best = min(range(2, 33), key=lambda b: abs(n_params(dynunet(in_channels, out_channels, b)) - target))
    return dynunet(in_channels, out_channels, best), best


def steps_per_second(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int = 2,
                     channels_last: bool = False) -> float:
    loss_fn = get_loss("jaccard")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patch", type=int, default=64, help="cubic patch edge, voxels")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--channels", type=int, default=4, help="input channels (modalities)")
    ap.add_argument("--classes", type=int, default=3, help="output channels (regions)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--all", action="store_true", help="also tiramisu3d and factorized_unet (paper configs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    patch = (args.patch,) * 3
    x = torch.randn(args.batch, args.channels, *patch)
    y = (torch.rand(args.batch, args.classes, *patch) > 0.9).float()

    cfg = UNet3DConfig(in_channels=args.channels, out_channels=args.classes, patch_size=patch)
    ours = build_model(cfg)
    ref, base = matching_dynunet(args.channels, args.classes, n_params(ours))
    rows = [("MONAI DynUNet", f"filters {base}x(1,2,4,8), batch norm, PReLU", ref, None, False),
            ("unet3d", "features (8,16,32,64), summed maps", ours, cfg, False),
            ("unet3d channels_last_3d", "same weights layout NDHWC", build_model(cfg), cfg, True)]
    if args.all:
        for c in (Tiramisu3DConfig(in_channels=args.channels, out_channels=args.classes, patch_size=patch),
                  FactorizedUNetConfig(in_channels=args.channels, out_channels=args.classes, patch_size=patch)):
            rows.append((c.arch, "paper configuration", build_model(c), c, False))

    print(f"patch {patch} x batch {args.batch}, {args.channels} -> {args.classes} channels, Jaccard loss, AdamW, "
          f"CPU threads {torch.get_num_threads()}, {args.steps} timed steps after 2 warm-up")
    results = []
    for name, desc, model, mcfg, cl in rows:
        sps = steps_per_second(model, x, y, args.steps, channels_last=cl)
        with torch.device("meta"):  # shapes only: the preflight estimate of the same network
            meta = build_model(mcfg) if mcfg is not None else dynunet(args.channels, args.classes, base)
        gb = estimate_module_memory(meta, (args.channels, *patch), args.batch).total_gb
        results.append((name, desc, n_params(model), sps, gb))
    ref_sps = results[0][3]
    print(f"{'model':26s} {'params':>10s} {'steps/s':>8s} {'s/step':>7s} {'vs DynUNet':>10s} {'GPU GB (AMP est.)':>17s}  notes")
    for name, desc, n, sps, gb in results:
        print(f"{name:26s} {n:10,d} {sps:8.3f} {1 / sps:7.2f} {sps / ref_sps:9.2f}x {gb:17.2f}  {desc}")


if __name__ == "__main__":
    main()
