"""Overlap-weighted accumulation of window predictions into one map, in memory or on disk.

The face is TorchIO's ``GridAggregator``: :meth:`StitchAccumulator.add_batch` with a batch of
window predictions ``(B, K, *patch)`` and their start locations ``(B, ndim)``, then
:meth:`StitchAccumulator.finalize`. Only ``weight * logits`` is accumulated; the summed weights
are recomputed from the recorded window locations at the end (they depend on geometry only), so
the out-of-core backend reads and writes each window once.
"""
from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import numpy as np
import torch
import zarr

from medseg.config import with_options
from medseg.stitch.geometry import check_patch_size, window_slices
from medseg.stitch.settings import StitchSettings
from medseg.stitch.weights import separable_profiles, trimmed_weights

log = logging.getLogger(__name__)

CHUNK_ELEMENTS = 2**20  # spatial voxels per zarr chunk (4 MB of float32)


def _margins(margin: int | tuple[int, ...], patch_size: tuple[int, ...]) -> tuple[int, ...]:
    """Per-axis window margins in voxels (0 on axes of patch size 1), checked against ``patch_size``."""
    margins = (margin,) * len(patch_size) if isinstance(margin, int) else tuple(margin)
    if len(margins) != len(patch_size) or any(m < 0 for m in margins):
        raise ValueError(f"margin must be >= 0, one value or one per axis, got {margin}")
    if any(p > 1 and 2 * m >= p for m, p in zip(margins, patch_size)):
        raise ValueError(f"margin must be < half the patch size {patch_size}, got {margin}")
    return tuple(m if p > 1 else 0 for m, p in zip(margins, patch_size))


def default_chunks(spatial_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Roughly isotropic spatial chunk shape of about :data:`CHUNK_ELEMENTS` voxels."""
    side = int(round(CHUNK_ELEMENTS ** (1.0 / len(spatial_shape))))
    return tuple(min(int(s), side) for s in spatial_shape)


class StitchAccumulator:
    """Sum of weighted window predictions over a ``(K, *spatial)`` output, divided at the end.

    The number of output channels ``K`` is taken from the first batch.

    Args:
        spatial_shape: output spatial shape in voxels (array order).
        patch_size: window shape, same length.
        settings: blending and accumulation (:class:`~medseg.stitch.settings.StitchSettings`; read
            here: ``mode``, ``sigma_scale``, ``backend``, ``memory_limit_bytes``, ``margin``,
            ``chunks``, ``allow_uncovered``). ``backend="zarr"`` keeps a chunked array on disk
            under ``zarr_path``; ``"auto"`` does so when the output exceeds ``memory_limit_bytes``.
        device: output device of the memory backend.
        zarr_path: zarr group directory for the zarr backend; the map is array ``"0"`` in it.
        **options: fields of :class:`~medseg.stitch.settings.StitchSettings` overriding ``settings``
            (e.g. ``mode="constant"``); an unknown name raises ``ValueError`` listing the valid ones.
    """

    def __init__(self, spatial_shape: tuple[int, ...], patch_size: tuple[int, ...],
                 settings: StitchSettings | None = None, *, device: str | torch.device = "cpu",
                 zarr_path: str | Path | None = None, **options) -> None:
        settings = with_options(StitchSettings() if settings is None else settings, options, "StitchAccumulator")
        self.settings = settings
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.patch_size = check_patch_size(patch_size, len(self.spatial_shape))
        if any(p > s for p, s in zip(self.patch_size, self.spatial_shape)):
            raise ValueError(f"patch_size {self.patch_size} exceeds the output shape {self.spatial_shape}; pad first")
        self.margins = _margins(settings.margin, self.patch_size)
        self.mode, self.sigma_scale = settings.mode, settings.sigma_scale
        self._weight_cache: dict[tuple, torch.Tensor] = {}
        self.window_weights((0,) * len(self.patch_size), torch.device("cpu"))  # validates mode, sigma_scale
        self.requested_backend = settings.backend
        self.device = torch.device(device)
        self.memory_limit_bytes = settings.memory_limit_bytes
        self.zarr_path = None if zarr_path is None else Path(zarr_path)
        self.chunks = default_chunks(self.spatial_shape) if settings.chunks is None else tuple(settings.chunks)
        self.allow_uncovered = settings.allow_uncovered
        self.backend: str | None = None  # decided on the first batch, when K is known
        self.locations: list[tuple[int, ...]] = []
        self._out: torch.Tensor | zarr.Array | None = None
        self._axis_sums: list[np.ndarray] | None = None  # cache of _grid_axis_sums ([] = not a grid)

    def window_weights(self, start: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Weights ``(*patch_size)`` of the window at ``start`` (trimmed by ``margin`` off the border)."""
        trim = tuple((m if s > 0 else 0, m if s + p < n else 0)
                     for s, p, n, m in zip(start, self.patch_size, self.spatial_shape, self.margins))
        key = (trim, device)
        if key not in self._weight_cache:
            w = trimmed_weights(self.patch_size, self.mode, self.sigma_scale, trim)
            self._weight_cache[key] = torch.from_numpy(w.copy()).to(device)
        return self._weight_cache[key]

    def _allocate(self, channels: int) -> None:
        nbytes = 4 * channels * math.prod(self.spatial_shape)
        backend = self.requested_backend
        if backend == "auto":
            backend = "zarr" if nbytes > self.memory_limit_bytes else "memory"
        if backend == "zarr" and self.zarr_path is None:
            raise ValueError(f"zarr_path is required for the zarr backend (output {nbytes / 1e9:.2f} GB, "
                             f"memory_limit_bytes={self.memory_limit_bytes})")
        self.backend = backend
        log.debug("stitching %s x %s into %s (%.1f MB)", channels, self.spatial_shape, backend, nbytes / 1e6)
        if backend == "memory":
            self._out = torch.zeros((channels, *self.spatial_shape), dtype=torch.float32, device=self.device)
        else:
            group = zarr.open_group(str(self.zarr_path), mode="w")
            self._out = group.create_array(
                "0", shape=(channels, *self.spatial_shape), chunks=(1, *self.chunks), dtype="float32",
                fill_value=0.0, compressors=zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"))

    def add_batch(self, logits: torch.Tensor, locations) -> None:
        """Add a batch of window predictions.

        Args:
            logits: ``(B, K, *patch_size)`` predictions (any device, float).
            locations: ``(B, ndim)`` window start indices (tensor, array or sequence of tuples).

        Raises:
            ValueError: shapes do not match, or a window holds NaN/inf (the error names it).
        """
        if logits.ndim != 2 + len(self.patch_size) or tuple(logits.shape[2:]) != self.patch_size:
            raise ValueError(f"logits must have shape (B, K, *{self.patch_size}), got {tuple(logits.shape)}")
        locs = [tuple(int(v) for v in loc) for loc in np.asarray(locations).reshape(len(logits), -1)]
        for loc in locs:
            if len(loc) != len(self.patch_size) or min(loc) < 0 or any(
                    s + p > n for s, p, n in zip(loc, self.patch_size, self.spatial_shape)):
                raise ValueError(f"locations: window {loc} of size {self.patch_size} is outside {self.spatial_shape}")
        if not bool(torch.isfinite(logits.sum())):  # one cheap reduction; NaN/inf propagate (overflow re-checked)
            bad = [loc for loc, x in zip(locs, logits) if not bool(torch.isfinite(x).all())]
            if bad:
                raise ValueError(f"predictor returned NaN or infinite values for the window starting at {bad[0]} "
                                 f"(patch {self.patch_size}); check the model and the input intensities there")
        if self._out is None:
            self._allocate(int(logits.shape[1]))
        elif logits.shape[1] != self._out.shape[0]:
            raise ValueError(f"logits must have {self._out.shape[0]} channels like the first batch, got {logits.shape[1]}")
        target = self.device if self.backend == "memory" else torch.device("cpu")
        for loc, x in zip(locs, logits.to(target, torch.float32)):
            sl = (slice(None), *window_slices(loc, self.patch_size))
            if self.backend == "memory":
                self._out[sl].addcmul_(x, self.window_weights(loc, target))
            else:
                self._out[sl] = self._out[sl] + (x * self.window_weights(loc, target)).numpy()
        self.locations.extend(locs)
        self._axis_sums = None

    def _grid_axis_sums(self) -> list[np.ndarray] | None:
        """Per-axis 1-D weight sums when the windows form a full grid and the mode is separable.

        Then the summed weight map is their outer product: no per-window work at all.
        """
        profiles = separable_profiles(self.patch_size, self.mode, self.sigma_scale)
        axes = [sorted(set(v)) for v in zip(*self.locations)]
        if profiles is None or len(set(self.locations)) != len(self.locations) \
                or len(self.locations) != math.prod(len(a) for a in axes):
            return None
        sums = []
        for starts, prof, p, n, m in zip(axes, profiles, self.patch_size, self.spatial_shape, self.margins):
            total = np.zeros(n)
            for s in starts:
                w = prof.astype(np.float64)  # a copy
                w[:m if s > 0 else 0] = 0
                w[p - (m if s + p < n else 0):] = 0
                total[s:s + p] += w
            sums.append(total.astype(np.float32))
        return sums

    def weight_sum(self, lo: tuple[int, ...], hi: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Summed weights of all added windows over the region ``[lo, hi)``, shape ``hi - lo``."""
        if self._axis_sums is None:
            self._axis_sums = self._grid_axis_sums() or []
        if self._axis_sums:
            total = torch.ones((), device=device)
            for axis_sum, l, h in zip(self._axis_sums, lo, hi):
                total = total[..., None] * torch.from_numpy(axis_sum[l:h]).to(device)
            return total
        starts = np.asarray(self.locations, dtype=np.int64).reshape(-1, len(lo))
        patch = np.asarray(self.patch_size)
        hit = np.all((starts < np.asarray(hi)) & (starts + patch > np.asarray(lo)), axis=1)
        total = torch.zeros([h - l for l, h in zip(lo, hi)], dtype=torch.float32, device=device)
        for start in starts[hit]:
            a = np.maximum(start, lo)
            b = np.minimum(start + patch, hi)
            total[tuple(slice(i - l, j - l) for i, j, l in zip(a, b, lo))] += self.window_weights(
                tuple(int(v) for v in start), device)[tuple(slice(i - s, j - s) for i, j, s in zip(a, b, start))]
        return total

    def _normalise(self, values: torch.Tensor, lo: tuple[int, ...], hi: tuple[int, ...]) -> torch.Tensor:
        wsum = self.weight_sum(lo, hi, values.device)
        uncovered = wsum == 0
        if bool(uncovered.any()):
            if not self.allow_uncovered:
                idx = tuple(int(i) + l for i, l in zip(torch.nonzero(uncovered)[0], lo))
                raise ValueError(f"voxel {idx} is not covered by any window; add windows there or set allow_uncovered")
            wsum[uncovered] = 1.0
        return values.div_(wsum)

    def finalize(self) -> torch.Tensor | zarr.Array:
        """Divide the weighted sums by the summed weights.

        Returns:
            Memory backend: ``(K, *spatial)`` float32 tensor on ``device``. Zarr backend: the
            ``(K, *spatial)`` float32 ``zarr.Array`` (array ``"0"`` of the group at ``zarr_path``).
        """
        if self._out is None:
            raise ValueError("no windows were added; nothing to finalize")
        full = tuple(0 for _ in self.spatial_shape)
        if self.backend == "memory":
            return self._normalise(self._out, full, self.spatial_shape)
        grid = [range(0, s, c) for s, c in zip(self.spatial_shape, self.chunks)]
        for lo in itertools.product(*grid):
            hi = tuple(min(l + c, s) for l, c, s in zip(lo, self.chunks, self.spatial_shape))
            sl = (slice(None), *(slice(l, h) for l, h in zip(lo, hi)))
            self._out[sl] = self._normalise(torch.from_numpy(self._out[sl]), lo, hi).numpy()
        return self._out
