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

from medseg.config import with_options
from medseg.stitch.accumulator import StitchAccumulator
from medseg.stitch.geometry import check_patch_size, compute_windows, padded_size, window_slices
from medseg.stitch.settings import StitchSettings

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]


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


def _check_inputs(image: torch.Tensor, predictor: Predictor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim < 2:
        raise ValueError(f"image must be a (C, *spatial) tensor, got {getattr(image, 'shape', type(image))}")
    if not callable(predictor):
        raise ValueError(f"predictor must be callable, got {type(predictor).__name__}")


def _pad_end(image: torch.Tensor, padded: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad the spatial axes of ``(C, *spatial)`` at their end up to ``padded``."""
    spatial = tuple(image.shape[1:])
    if padded == spatial:
        return image
    return F.pad(image, [v for s, p in zip(reversed(spatial), reversed(padded)) for v in (0, p - s)])


def _stitch(acc: StitchAccumulator, image: torch.Tensor, predictor: Predictor, windows: Sequence[tuple[int, ...]],
            settings: StitchSettings, device: torch.device, progress: bool) -> torch.Tensor:
    """Run ``predictor`` over ``windows`` of ``image`` in batches into ``acc``; the finalized
    ``(K, *spatial)`` map on the accumulator's device."""
    # no_grad, not inference_mode: callers may modify the returned tensor in place
    with torch.no_grad(), tqdm(total=len(windows), desc="windows", unit="win", disable=not progress) as bar:
        for locs in batched(windows, settings.batch_size):
            batch = torch.stack([image[(slice(None), *window_slices(loc, acc.patch_size))] for loc in locs])
            logits = predict_batch(predictor, batch.to(device, non_blocking=True), settings.tta)
            acc.add_batch(logits, locs)
            bar.update(len(locs))
        out = acc.finalize()
        if acc.backend == "zarr":
            out = torch.from_numpy(out[...]).to(acc.device)
    return out


def sliding_window_inference(image: torch.Tensor, predictor: Predictor, patch_size: Sequence[int],
                             settings: StitchSettings | None = None, *, device: str | torch.device | None = None,
                             out_device: str | torch.device = "cpu", progress: bool = False,
                             **options) -> torch.Tensor:
    """Predict a whole image window by window and blend the overlaps.

    Args:
        image: ``(C, *spatial)`` tensor, any number of spatial axes (``(C, H, W)``,
            ``(C, D, H, W)``, ...). Axes shorter than the patch are zero-padded at the end and
            cropped back.
        predictor: maps ``(B, C, *patch_size)`` to ``(B, K, *patch_size)``; runs on ``device``.
        patch_size: window shape in voxels; entries may be 1 (e.g. ``(1, h, w)`` to run a 2-D
            net slice by slice, the predictor squeezing that axis).
        settings: overlap, blending, batch size, mirroring test-time augmentation, accumulation
            backend and window margin (:class:`~medseg.stitch.settings.StitchSettings`; default:
            its defaults). ``backend="zarr"`` accumulates in a temporary directory on disk.
        device: where the predictor runs (default: the image's device).
        out_device: where the output is accumulated and returned.
        progress: show a tqdm progress bar.
        **options: fields of :class:`~medseg.stitch.settings.StitchSettings` overriding ``settings``
            (``overlap=0.5, mode="gaussian", sigma_scale=0.125, batch_size=4, tta=False,
            backend="auto", memory_limit_bytes=4 GiB, margin=0``, ...); an unknown name raises
            ``ValueError`` listing the valid ones.

    Returns:
        ``(K, *spatial)`` float32 tensor on ``out_device``.
    """
    _check_inputs(image, predictor)
    spatial = tuple(image.shape[1:])
    patch = check_patch_size(tuple(patch_size), len(spatial))
    settings = with_options(StitchSettings() if settings is None else settings, options, "sliding_window_inference")
    device = image.device if device is None else torch.device(device)

    padded = padded_size(spatial, patch)
    image = _pad_end(image, padded)
    windows = compute_windows(padded, patch, settings.overlap)
    log.debug("%d windows of %s over %s (overlap %s, %s)", len(windows), patch, spatial, settings.overlap,
              settings.mode)
    with tempfile.TemporaryDirectory(prefix="medseg-stitch-") as tmp:
        acc = StitchAccumulator(padded, patch, settings, device=out_device, zarr_path=f"{tmp}/acc.zarr")
        out = _stitch(acc, image, predictor, windows, settings, device, progress)
    if padded != spatial:
        out = out[(slice(None), *(slice(0, s) for s in spatial))].contiguous()
    return out
