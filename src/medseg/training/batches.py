"""Training batches from tile files: foreground-oversampled 2.5-D slices with augmentation.

A batch is a pure function of ``(seed, step)``, so a resumed run sees exactly the batches an
uninterrupted run would, and a background thread can prefetch without changing results.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from medseg.io import read_json
from medseg.preprocess.tiling import context_stack
from medseg.training.config import AugmentConfig


class TileSet:
    """The training (or validation) cases of one fold: memory-mapped tile arrays + slice tables.

    A tile array holds every fold's normalisation of the case (``n_folds * n_image`` channels,
    fold-major) then the target (K region masks or one class-index map; see
    :func:`medseg.preprocess.tiling.tile_case`); ``fold`` picks the fold's image channels.
    """

    def __init__(self, npys: Sequence[str], jsons: Sequence[str], fold: int = 0) -> None:
        if not npys:
            raise ValueError("no training tiles: the fold has no training cases")
        self.arrays = [np.load(p, mmap_mode="r") for p in npys]
        self.tables = [read_json(j) for j in jsons]
        self.n_image = self.tables[0]["n_image_channels"]
        self.n_folds = self.tables[0].get("n_folds", 1)
        self.target_kind = self.tables[0].get("target_kind", "regions")
        for path, table in zip(jsons, self.tables):
            if not 0 <= fold < table.get("n_folds", 1):
                raise ValueError(f"{path} holds {table.get('n_folds', 1)} fold(s); fold {fold} was asked for: re-run tile_case")
        self.fold = fold
        shapes = {a.shape[2:] for a in self.arrays}
        # one in-plane shape (atlas space) allows whole-slice batches; cases on their own grids
        # (no registration) need training.patch_size crops
        self.plane = shapes.pop() if len(shapes) == 1 else None
        self.planes = sorted(shapes | ({self.plane} if self.plane else set()))

    def image(self, i: int) -> np.ndarray:
        """Case ``i``'s image channels for this fold, ``(C, z, y, x)`` (a memory-mapped view)."""
        return self.arrays[i][self.fold * self.n_image: (self.fold + 1) * self.n_image]

    def target(self, i: int) -> np.ndarray:
        """Case ``i``'s target, ``(T, z, y, x)``: K region masks, or 1 map of class indices."""
        return self.arrays[i][self.n_folds * self.n_image:]


def _crop_starts(plane: tuple[int, ...], size: tuple[int, int], centre: tuple[int, int] | None,
                 rng: np.random.Generator) -> tuple[int, int]:
    """The crop's corner in a ``plane``-sized slice: random, or about ``centre`` (+- a quarter of the crop)."""
    starts = []
    for ax, (n, p) in enumerate(zip(plane, size)):
        if n <= p:
            starts.append(0)
            continue
        if centre is None:
            starts.append(int(rng.integers(0, n - p + 1)))
        else:
            starts.append(int(np.clip(centre[ax] - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, n - p)))
    return starts[0], starts[1]


def _crop_or_pad(x: np.ndarray, size: tuple[int, int], starts: tuple[int, int]) -> np.ndarray:
    """``x`` ``(C, h, w)`` cropped at ``starts`` to ``size`` (zero-padded where smaller), as float32."""
    out = np.zeros((x.shape[0], *size), np.float32)
    src = x[:, starts[0]: starts[0] + size[0], starts[1]: starts[1] + size[1]]
    out[:, : src.shape[1], : src.shape[2]] = src
    return out


def make_batch(tiles: TileSet, step: int, seed: int, batch_size: int, context: int, fg_prob: float,
               patch: tuple[int, int] | None, aug: AugmentConfig | None) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step``: ``(B, C*(2*context+1), H, W)`` float32 inputs and ``(B, T, H, W)`` float32 targets
    (T region masks, or T = 1 map of class indices: see :func:`as_loss_target`)."""
    rng = np.random.default_rng([seed, step])
    size = patch or tiles.plane
    if size is None:
        raise ValueError(f"training cases have different in-plane shapes {tiles.planes} (no common grid, e.g. "
                         "steps.register off): set training.patch_size to crop them to one size")
    xs, ys = [], []
    for _ in range(batch_size):
        i = int(rng.integers(len(tiles.arrays)))
        table = tiles.tables[i]
        fg = table["fg_slices"]
        use_fg = bool(fg) and rng.random() < fg_prob
        z = int(rng.choice(fg if use_fg else table["brain_slices"]))
        img = context_stack(tiles.image(i), z, context)
        tgt = np.asarray(tiles.target(i)[:, z])
        centre = None
        if use_fg and patch is not None:
            pts = np.argwhere(tgt.any(axis=0))
            centre = tuple(pts[rng.integers(len(pts))])
        starts = _crop_starts(img.shape[1:], size, centre, rng)  # crop first: the slices' float32 copies are small
        xs.append(_crop_or_pad(img, size, starts))
        ys.append(_crop_or_pad(tgt, size, starts))
    x, y = np.stack(xs), np.stack(ys)
    if aug is not None:
        x, y = augment(x, y, rng, aug)
    return x, y


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, aug: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Flips, rotation/zoom about the patch centre (bilinear with border values for images, nearest for targets),
    intensity shift/scale, a linear bias gradient, noise: drawn per sample from ``rng``, applied to the whole batch
    at once (torch ``affine_grid`` + ``grid_sample``; about 10x cheaper than resampling each channel with scipy,
    which matters because batches are built beside the training step, on the same cores)."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = x.shape
    flip = rng.random(b) < aug.flip
    ang = np.deg2rad(rng.uniform(-aug.rotate_deg, aug.rotate_deg, b))
    zoom = 1 + rng.uniform(-aug.scale, aug.scale, b)
    scale = 1 + rng.uniform(-aug.intensity_scale, aug.intensity_scale, (b, c, 1, 1))
    shift = rng.uniform(-aug.intensity_shift, aug.intensity_shift, (b, c, 1, 1))
    tilt = rng.uniform(-1, 1, (b, 2, 1, 1))
    noise_std = rng.uniform(0, aug.noise_std, (b, 1, 1, 1))
    noise = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(int(rng.integers(2 ** 62))))
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.ascontiguousarray(y, np.float32))
    flipped = torch.from_numpy(flip)
    xt[flipped], yt[flipped] = xt[flipped].flip(-1), yt[flipped].flip(-1)
    if aug.rotate_deg > 0 or aug.scale > 0:
        # output (row, col) -> input: R(ang) / zoom about the centre, in grid_sample's normalised (x, y) = (col, row)
        cos, sin = np.cos(ang) / zoom, np.sin(ang) / zoom
        theta = np.zeros((b, 2, 3), np.float32)
        theta[:, 0, 0], theta[:, 0, 1] = cos, sin * h / w
        theta[:, 1, 0], theta[:, 1, 1] = -sin * w / h, cos
        grid = F.affine_grid(torch.from_numpy(theta), [b, c, h, w], align_corners=False)
        xt = F.grid_sample(xt, grid, mode="bilinear", padding_mode="border", align_corners=False)
        yt = F.grid_sample(yt, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    gy, gx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    gain = scale * (1 + aug.bias * (tilt[:, :1] * gy + tilt[:, 1:] * gx) / 2)
    xt = xt * torch.from_numpy(gain.astype(np.float32)) + torch.from_numpy(shift.astype(np.float32)) \
        + noise * torch.from_numpy(noise_std.astype(np.float32))
    return np.ascontiguousarray(xt.numpy(), dtype=np.float32), np.ascontiguousarray(yt.numpy(), dtype=np.float32)


def as_loss_target(y: np.ndarray, target_kind: str) -> np.ndarray:
    """A batch's targets as :mod:`medseg.training.losses` takes them: regions ``(B, K, H, W)`` float32, labels
    ``(B, H, W)`` int64 class indices (from the single target channel)."""
    if target_kind == "labels":
        return np.rint(y[:, 0]).astype(np.int64)
    return y


def batch_stream(make, start: int, stop: int, device_type: str) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """``(step, make(step))`` for steps ``start .. stop-1``: built ahead by a :class:`Prefetcher` thread when the
    network runs on a GPU (the CPU is free meanwhile), built between steps on the CPU. There the step's own
    OpenMP threads already hold every core the job has: a builder thread beside them stalls the team at each
    parallel region (``python benchmarks/bench_train_step.py``: 2.7-3.3 steps/s with the thread against
    3.6-3.8 between steps, for a 7 % wait). Both give the same batches."""
    if device_type == "cuda":
        return iter(Prefetcher(make, start, stop))
    return ((step, make(step)) for step in range(start, stop))


class Prefetcher:
    """Build batches ``start .. stop-1`` in a background thread (results identical to inline)."""

    def __init__(self, fn, start: int, stop: int, depth: int = 3) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._fn, self._range = fn, range(start, stop)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for step in self._range:
            try:
                self._q.put((step, self._fn(step), None))
            except Exception as e:  # noqa: BLE001 - re-raised in the consumer
                self._q.put((step, None, e))
                return

    def __iter__(self) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
        for _ in self._range:
            step, batch, err = self._q.get()
            if err is not None:
                raise err
            yield step, batch
