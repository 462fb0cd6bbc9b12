"""The loop that runs a model over overlapping windows and stitches the predictions.

Geometry comes from :mod:`medseg.stitch.geometry`, blending from :mod:`medseg.stitch.weights`,
accumulation from :mod:`medseg.stitch.accumulator`; this module only batches windows, moves
them between the compute and output devices and applies mirroring test-time augmentation.
"""
from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from medseg.stitch.accumulator import DEFAULT_MEMORY_LIMIT, StitchAccumulator
from medseg.stitch.geometry import check_overlap, check_patch_size, compute_windows, padded_size, window_slices
from medseg.stitch.weights import check_mode

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]


def check_batch_size(batch_size: int) -> int:
    """Return ``batch_size`` if it is a positive int, else raise ValueError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def batched(items: Sequence, n: int) -> Iterator[Sequence]:
    """Consecutive slices of ``items`` of length ``n`` (the last may be shorter)."""
    for i in range(0, len(items), n):
        yield items[i:i + n]


def mirror_axes(patch_size: Sequence[int]) -> list[tuple[int, ...]]:
    """All flip combinations (as tensor dims of a ``(B, C, *spatial)`` batch) over non-singleton axes."""
    axes = [2 + i for i, p in enumerate(patch_size) if p > 1]
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def predict_batch(predictor: Predictor, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Run ``predictor`` on ``(B, C, *patch)``; with ``tta`` average over all mirrorings (flipped back)."""
    if not tta:
        return predictor(batch)
    flips = mirror_axes(batch.shape[2:])
    total = None
    for dims in flips:
        out = predictor(batch.flip(dims) if dims else batch)
        out = out.flip(dims) if dims else out
        total = out.to(torch.float32, copy=True) if total is None else total.add_(out)
    return total.div_(len(flips))


def sliding_window_inference(image: torch.Tensor, predictor: Predictor, patch_size: Sequence[int],
                             overlap: float = 0.5, mode: str = "gaussian", sigma_scale: float = 0.125,
                             batch_size: int = 4, tta: bool = False, device: str | torch.device | None = None,
                             out_device: str | torch.device = "cpu", backend: str = "auto", progress: bool = False,
                             memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT,
                             margin: int | tuple[int, ...] = 0) -> torch.Tensor:
    """Predict a whole image window by window and blend the overlaps.

    Args:
        image: ``(C, *spatial)`` tensor, any number of spatial axes (``(C, H, W)``,
            ``(C, D, H, W)``, ...). Axes shorter than the patch are zero-padded at the end and
            cropped back.
        predictor: maps ``(B, C, *patch_size)`` to ``(B, K, *patch_size)``; runs on ``device``.
        patch_size: window shape in voxels; entries may be 1 (e.g. ``(1, h, w)`` to run a 2-D
            net slice by slice, the predictor squeezing that axis).
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        mode: blending weights: ``gaussian``, ``constant``, ``pyramid`` or ``cosine``.
        sigma_scale: Gaussian sigma as a fraction of the patch size.
        batch_size: windows per predictor call.
        tta: average over mirrorings of all spatial axes (``2**ndim`` calls per batch).
        device: where the predictor runs (default: the image's device).
        out_device: where the output is accumulated and returned.
        backend: ``memory``, ``zarr`` (weighted sums on disk in a temporary directory) or ``auto``.
        progress: show a tqdm progress bar.
        memory_limit_bytes: output size above which ``backend="auto"`` accumulates on disk.
        margin: voxels dropped (weight 0) at window sides off the image border; the receptive
            field radius of a zero-padded net makes the result equal its untiled forward pass.

    Returns:
        ``(K, *spatial)`` float32 tensor on ``out_device``.
    """
    if not isinstance(image, torch.Tensor) or image.ndim < 2:
        raise ValueError(f"image must be a (C, *spatial) tensor, got {getattr(image, 'shape', type(image))}")
    if not callable(predictor):
        raise ValueError(f"predictor must be callable, got {type(predictor).__name__}")
    spatial = tuple(image.shape[1:])
    patch = check_patch_size(tuple(patch_size), len(spatial))
    overlap = check_overlap(overlap)
    check_mode(mode)
    check_batch_size(batch_size)
    device = image.device if device is None else torch.device(device)

    padded = padded_size(spatial, patch)
    if padded != spatial:
        pad = [v for s, p in zip(reversed(spatial), reversed(padded)) for v in (0, p - s)]
        image = F.pad(image, pad)
    windows = compute_windows(padded, patch, overlap)
    log.debug("%d windows of %s over %s (overlap %s, %s)", len(windows), patch, spatial, overlap, mode)

    with tempfile.TemporaryDirectory(prefix="medseg-stitch-") as tmp:
        acc = StitchAccumulator(padded, patch, mode=mode, sigma_scale=sigma_scale, backend=backend,
                                device=out_device, memory_limit_bytes=memory_limit_bytes, zarr_path=f"{tmp}/acc.zarr",
                                margin=margin)
        # no_grad, not inference_mode: callers may modify the returned tensor in place
        with torch.no_grad(), tqdm(total=len(windows), desc="windows", unit="win", disable=not progress) as bar:
            for locs in batched(windows, batch_size):
                batch = torch.stack([image[(slice(None), *window_slices(loc, patch))] for loc in locs])
                logits = predict_batch(predictor, batch.to(device, non_blocking=True), tta)
                acc.add_batch(logits, locs)
                bar.update(len(locs))
            out = acc.finalize()
            if acc.backend == "zarr":
                out = torch.from_numpy(out[...]).to(out_device)
    if padded != spatial:
        out = out[(slice(None), *(slice(0, s) for s in spatial))].contiguous()
    return out

