"""Preflight estimate of GPU training memory for (model, patch, batch), without a GPU.

The activations that autograd keeps for the backward pass are *measured*, not guessed: the
model is built on PyTorch's ``meta`` device (shapes only, no storage, instant even for a 128^3
patch) and one forward pass runs under ``torch.autograd.graph.saved_tensors_hooks``, which sees
every tensor saved for backward; their distinct storages are summed (parameters excluded).
Mixed precision (``amp``) is modelled by running that pass in bfloat16 (autocast keeps
convolution activations in 16 bits).

Peak training memory on the GPU is then estimated as::

    weights (fp32) + gradients (fp32) + optimiser state (AdamW: 2 x weights)
    + saved activations + backward workspace (2 x the largest saved tensor + the loss on fp32
      logits: 4 x logits)
    all x ``fragmentation`` (caching-allocator slack), + ``reserve_gb`` (CUDA context and cuDNN
    workspace, outside PyTorch's allocator)

Activation memory is linear in the batch size, so one pass at batch 1 serves every batch.
The test suite checks the counted activations against PyTorch's own CPU allocation profiler
(within 1 % on unet3d, tiramisu3d and factorized_unet), and the whole estimate (fp32, no CUDA
reserve) against the peak RSS growth of a real CPU training step (0.56-0.81 of it: oneDNN on CPU
pads narrow feature maps to 16-channel blocks and keeps reorder buffers, which a GPU does not).
Units: bytes unless a name ends in ``_gb`` (GiB, 2**30 bytes).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

log = logging.getLogger(__name__)
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak training memory, bytes per component (see the module docstring)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    workspace: int
    fragmentation: float
    reserve: int

    @property
    def total(self) -> int:
        parts = self.weights + self.gradients + self.optimizer + self.activations + self.workspace
        return int(parts * self.fragmentation) + self.reserve

    @property
    def total_gb(self) -> float:
        return self.total / GIB


@dataclass(frozen=True)
class ActivationCount:
    """Bytes autograd keeps for one forward pass: ``saved`` (distinct storages), ``largest`` (the
    biggest single saved storage) and ``output`` (the logits)."""

    saved: int
    largest: int
    output: int


def count_saved_activations(model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32,
                            device: str | torch.device = "meta") -> ActivationCount:
    """Run one forward pass of ``model`` on a zero input ``input_shape`` ``(B, C, *spatial)`` and count
    the bytes saved for backward (parameters excluded; the input counts when saved).

    ``model`` must live on ``device`` with parameters in ``dtype``; on ``meta`` nothing is allocated.
    """
    param_storages = {p.untyped_storage()._cdata for p in model.parameters()}
    sizes: dict[int, int] = {}
    keep = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st._cdata not in param_storages:
            sizes[st._cdata] = max(sizes.get(st._cdata, 0), st.nbytes())
            keep.append(t)  # storage stays alive: its address cannot be reused by a later tensor
        return t

    x = torch.zeros(tuple(input_shape), dtype=dtype, device=device)
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
    finally:
        model.train(was_training)
    outs = out if isinstance(out, (list, tuple)) else [out]
    out_bytes = sum(o.numel() * o.element_size() for o in outs)
    return ActivationCount(sum(sizes.values()), max(sizes.values(), default=0), out_bytes)


def _default_patch(cfg) -> tuple[int, ...]:
    """The paper's patch of ``cfg``'s architecture (networks are size-agnostic; ``()`` when it has none)."""
    from medseg.models import get_arch

    return tuple(get_arch(cfg.arch).default_patch or ())


def _meta_model(cfg) -> nn.Module:
    from medseg.models import build_model

    with torch.device("meta"):
        return build_model(cfg)


def estimate_training_memory(cfg, patch: Sequence[int] | None = None, batch: int = 2, *, amp: bool = True,
                             optimizer_slots: int = 2, fragmentation: float = 1.15,
                             reserve_gb: float = 1.0) -> MemoryEstimate:
    """Estimate the peak GPU memory of training ``cfg`` (a model config) on ``batch`` patches.

    Args:
        cfg: any config of ``medseg.models.REGISTRY`` (``in_channels`` as the trainer sets it).
        patch: spatial size, voxels ``(D, H, W)`` or pixels ``(H, W)``; default the registry entry's
            ``default_patch`` (:data:`medseg.models.REGISTRY`).
        batch: patches per step (per GPU).
        amp: mixed precision (16-bit activations) as ``training.amp`` on CUDA.
        optimizer_slots: fp32 state tensors per weight (AdamW 2, SGD with momentum 1).
        fragmentation: multiplier for the caching allocator's slack.
        reserve_gb: memory outside PyTorch's allocator (CUDA context, cuDNN workspace), GiB.

    Raises:
        ValueError: ``batch < 1``, or no patch size (``timm_unet`` needs ``patch``).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    patch = tuple(patch if patch is not None else _default_patch(cfg))
    if len(patch) != cfg.spatial_dims:
        raise ValueError(f"patch must have {cfg.spatial_dims} sizes for {cfg.arch}, got {patch or None}")
    return estimate_module_memory(_meta_model(cfg), (cfg.in_channels, *patch), batch, amp=amp,
                                  optimizer_slots=optimizer_slots, fragmentation=fragmentation, reserve_gb=reserve_gb)


def estimate_module_memory(model: nn.Module, sample_shape: Sequence[int], batch: int = 2, *, amp: bool = True,
                           optimizer_slots: int = 2, fragmentation: float = 1.15,
                           reserve_gb: float = 1.0) -> MemoryEstimate:
    """:func:`estimate_training_memory` for any ``nn.Module`` (e.g. a MONAI network) on inputs
    ``(batch, *sample_shape)``; ``model`` is best built under ``torch.device("meta")`` (it is
    converted to bfloat16 in place when ``amp``)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    device = next(model.parameters()).device
    n_weights = sum(p.numel() for p in model.parameters())
    dtype = torch.bfloat16 if amp else torch.float32
    per = count_saved_activations(model.to(dtype), (1, *sample_shape), dtype, device)
    logits_fp32 = per.output * (2 if amp else 1)  # the loss runs on float32 logits
    est = MemoryEstimate(
        weights=4 * n_weights, gradients=4 * n_weights, optimizer=4 * n_weights * optimizer_slots,
        activations=per.saved * batch, workspace=(2 * per.largest + 4 * logits_fp32) * batch,
        fragmentation=fragmentation, reserve=int(reserve_gb * GIB))
    log.debug("%s on %s x %d (amp %s): %.2f GiB (%s)", type(model).__name__, tuple(sample_shape), batch, amp,
              est.total_gb, est)
    return est


def max_batch(cfg, gpu_gb: float, patch: Sequence[int] | None = None, *, limit: int = 1024, **kw) -> int:
    """The largest batch of ``patch`` whose estimated peak fits in ``gpu_gb`` GiB (0: not even one).

    ``kw`` as in :func:`estimate_training_memory` (``amp``, ``reserve_gb`` ...).
    """
    if gpu_gb <= 0:
        raise ValueError(f"gpu_gb must be > 0, got {gpu_gb}")
    one = estimate_training_memory(cfg, patch, 1, **kw)
    fixed = one.weights + one.gradients + one.optimizer
    per_sample = one.activations + one.workspace
    room = (gpu_gb * GIB - one.reserve) / one.fragmentation - fixed
    return max(0, min(limit, math.floor(room / per_sample))) if per_sample else limit


def plan(cfg, gpu_gb: float, patches: Iterable[Sequence[int]] | None = None, **kw) -> list[dict]:
    """For each candidate patch (default: the model's patch and its halves/doubles per axis that
    stay multiples of 16), the largest batch that fits ``gpu_gb`` and the estimate at that batch.

    Returns:
        rows ``{"patch": tuple, "max_batch": int, "total_gb": float, "voxels": int}``, largest patch first.
    """
    if patches is None:
        base = _default_patch(cfg)
        if not base:
            raise ValueError(f"plan needs patches for {cfg.arch} (no default patch size)")
        patches = {tuple(max(16, int(s * f)) // 16 * 16 or 16 for s in base) for f in (0.5, 0.75, 1, 1.5, 2)}
    rows = []
    for p in patches:
        b = max_batch(cfg, gpu_gb, p, **kw)
        est = estimate_training_memory(cfg, p, max(b, 1), **kw)
        rows.append({"patch": tuple(p), "max_batch": b, "total_gb": round(est.total_gb, 2), "voxels": math.prod(p)})
    return sorted(rows, key=lambda r: -r["voxels"])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m medseg.training.memory unet3d --gpu-gb 24 [--in-channels 4] [--set features=[16,32,64,128]]``:
    print which patch and batch fit a GPU of that size."""
    import argparse

    import yaml

    from medseg.models import model_config_from_mapping

    ap = argparse.ArgumentParser(description="Which patch/batch fits a GPU (preflight estimate, no GPU needed).")
    ap.add_argument("arch")
    ap.add_argument("--gpu-gb", type=float, required=True, help="GPU memory, GiB")
    ap.add_argument("--in-channels", type=int, default=4)
    ap.add_argument("--out-channels", type=int, default=3)
    ap.add_argument("--patch", type=int, nargs="+", action="append", help="candidate patch (repeatable)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML", help="a model config value")
    ap.add_argument("--no-amp", action="store_true", help="float32 training")
    args = ap.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = model_config_from_mapping({"arch": args.arch, "in_channels": args.in_channels,
                                     "out_channels": args.out_channels, **overrides}, "--set ")
    print(f"{args.arch} on {args.gpu_gb:g} GiB, {'float32' if args.no_amp else 'AMP (16-bit activations)'}")
    print(f"{'patch':>18s} {'max batch':>9s} {'GiB at max':>10s}")
    for row in plan(cfg, args.gpu_gb, args.patch, amp=not args.no_amp):
        print(f"{'x'.join(map(str, row['patch'])):>18s} {row['max_batch']:9d} {row['total_gb']:10.2f}")


if __name__ == "__main__":
    main()
