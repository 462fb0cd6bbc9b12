"""3-D training patches from whole memory-mapped volumes, with nnU-Net's class-aware oversampling.

A case is two ``.npy`` files read with ``mmap_mode="r"`` (a cohort never sits in memory; a patch
reads only its own box): the image ``(C, Z, Y, X)`` float16/float32, normalised, and the target,
either regions ``(K, Z, Y, X)`` uint8 binary masks (sigmoid) or labels ``(Z, Y, X)`` uint8 class
indices in ``0..K-1`` (softmax, 0 = background).

Foreground oversampling follows nnU-Net (``nnUNetDataLoader.get_bbox``): a sample is forced to
contain foreground with probability ``fg_fraction`` (1/3 by default, nnU-Net's
``oversample_foreground_percent = 0.33`` drawn per sample as its ``probabilistic_oversampling``
does, so the share does not depend on the batch size); the class (label or region) is drawn
uniformly among the classes present in the case; one of that class's voxels, drawn uniformly,
becomes the patch centre, shifted by a uniform jitter of up to ``jitter`` of the patch size per
axis (the chosen voxel always stays inside the patch). Other samples are placed uniformly.
Volumes smaller than the patch are zero-padded (image 0, target background) with the volume
placed anywhere in the padded box, as nnU-Net's ``need_to_pad`` does.

The voxels of each class are found once per case and kept in a small sidecar beside the target
(``<target>.locations.npz``: at most 10,000 voxels per class but at least 1 % of them, seed 1234,
like nnU-Net's ``class_locations``), so sampling never scans a volume.

Sample ``i`` of batch ``step`` is a pure function of ``(seed, step, i)``: a resumed run sees the
same batches, :class:`medseg.training.batches.Prefetcher` (one thread) or :class:`PoolPrefetcher` (several)
can build them ahead, and a DDP rank builds just its own share of the global batch
(:func:`medseg.training.ddp.shard`).
"""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np

from medseg.training.config import Augment3DConfig
from medseg.training.augment3d import augment3d, draw_spatial, input_extent
from medseg.training.config import Patch3DConfig

log = logging.getLogger(__name__)

TARGET_KINDS = ("regions", "labels")
MAX_LOCATIONS = 10_000
MIN_COVERAGE = 0.01
LOCATIONS_SEED = 1234


def locations_path(target: str | Path) -> Path:
    """The class-locations sidecar of a target array: ``x.npy`` -> ``x.locations.npz``."""
    return Path(target).with_suffix(".locations.npz")


def class_masks(target: np.ndarray, target_kind: str, n_classes: int):
    """Yield ``(class, mask)`` per foreground class: region channel ``k`` or label index ``k >= 1``."""
    if target_kind == "regions":
        for k in range(n_classes):
            yield k, np.asarray(target[k]) > 0
    else:
        t = np.asarray(target)
        for k in range(1, n_classes):
            yield k, t == k


def compute_class_locations(target: np.ndarray, target_kind: str, n_classes: int,
                            seed: int = LOCATIONS_SEED) -> dict[str, np.ndarray]:
    """Sampled voxel coordinates per foreground class (nnU-Net's ``_sample_foreground_locations``).

    Returns:
        ``classes`` (n,) class ids, ``offsets`` (n + 1,) into ``coords`` ``(N, 3)`` int32 (Z, Y, X),
        and ``shape`` (3,) the target's spatial shape.
    """
    rng = np.random.RandomState(seed)
    classes, chunks, offsets = [], [], [0]
    for k, mask in class_masks(target, target_kind, n_classes):
        flat = np.flatnonzero(mask)
        if len(flat):
            n = max(min(MAX_LOCATIONS, len(flat)), int(np.ceil(len(flat) * MIN_COVERAGE)))
            flat = np.sort(flat[rng.choice(len(flat), n, replace=False)])
        classes.append(k)
        chunks.append(np.stack(np.unravel_index(flat, mask.shape), 1).astype(np.int32))
        offsets.append(offsets[-1] + len(flat))
    spatial = target.shape[1:] if target_kind == "regions" else target.shape
    return {"classes": np.asarray(classes, np.int64), "offsets": np.asarray(offsets, np.int64),
            "coords": np.concatenate(chunks) if chunks else np.zeros((0, 3), np.int32),
            "shape": np.asarray(spatial, np.int64)}


def write_class_locations(target_path: str | Path, target_kind: str, n_classes: int,
                          target: np.ndarray | None = None) -> Path:
    """Scan a target once and write its sidecar (atomically: concurrent writers are harmless).

    ``target`` is the array if it is a view of the file (e.g. the masks of a tile array);
    by default the whole file is the target.
    """
    if target is None:
        target = np.load(target_path, mmap_mode="r")
    out = locations_path(target_path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **compute_class_locations(target, target_kind, n_classes))
    os.replace(tmp, out)
    return out


class ClassLocations:
    """One case's sidecar: draw a voxel of a class without touching the volume."""

    def __init__(self, data: dict[str, np.ndarray]) -> None:
        self.classes = [int(c) for c in data["classes"]]
        self.offsets = np.asarray(data["offsets"])
        self.coords = np.asarray(data["coords"])
        self.shape = tuple(int(n) for n in data["shape"])
        self.counts = np.diff(self.offsets)

    @property
    def present(self) -> list[int]:
        """Classes with at least one voxel in this case."""
        return [c for c, n in zip(self.classes, self.counts) if n > 0]

    def voxel(self, cls: int, rng: np.random.Generator) -> np.ndarray:
        """A uniformly drawn stored voxel ``(Z, Y, X)`` of class ``cls``."""
        j = self.classes.index(cls)
        return self.coords[self.offsets[j] + int(rng.integers(self.counts[j]))]


class VolumeSet3D:
    """The training cases of one fold as memory-mapped image/target arrays plus location sidecars.

    Args:
        images: ``.npy`` paths, each ``(C, Z, Y, X)`` float16/float32 (same C for all cases).
        targets: ``.npy`` paths, regions ``(K, Z, Y, X)`` or labels ``(Z, Y, X)``, uint8 (regions
            may also be float16/float32 binary masks).
        target_kind: ``"regions"`` (sigmoid) or ``"labels"`` (softmax), as ``task.target_kind``.
        n_classes: K, the model's output channels (labels: number of labels + 1).
        build_locations: write a missing or stale sidecar (older than its target) instead of
            raising; the writes are atomic and deterministic, so DDP ranks may race harmlessly.
    """

    def __init__(self, images: Sequence[str | Path], targets: Sequence[str | Path], target_kind: str,
                 n_classes: int, build_locations: bool = True) -> None:
        if not images or len(images) != len(targets):
            raise ValueError(f"need one target per image and at least one case, got {len(images)} images and {len(targets)} targets")
        self._attach([np.load(p, mmap_mode="r") for p in images], [np.load(p, mmap_mode="r") for p in targets],
                     [Path(p) for p in images], [Path(p) for p in targets], target_kind, n_classes, build_locations)

    @classmethod
    def from_tiles(cls, npys: Sequence[str | Path], fold: int = 0, build_locations: bool = True,
                   n_classes: int | None = None) -> VolumeSet3D:
        """The 2.5-D pipeline's tile arrays (:func:`medseg.preprocess.tiling.tile_case`) as 3-D training volumes.

        Each tile holds ``n_folds * C`` normalised image channels (fold-major) then the target:
        K region masks, or (``target_kind: labels`` in its table) one map of class indices
        (float16, exact for these small integers); its ``.json`` table gives
        ``n_image_channels``, ``n_folds`` and ``target_kind``. The sidecar sits beside the tile
        (``x.locations.npz``).

        Args:
            n_classes: K, the model's outputs; required for label tiles (labels + background),
                read off the masks for region tiles.
        """
        import json

        if not npys:
            raise ValueError("no training tiles: the fold has no training cases")
        images, targets, kinds = [], [], set()
        for p in npys:
            table = json.loads(Path(p).with_suffix(".json").read_text())
            kinds.add(table.get("target_kind", "regions"))
            c, n_folds = table["n_image_channels"], table.get("n_folds", 1)
            if not 0 <= fold < n_folds:
                raise ValueError(f"{p} holds {n_folds} fold(s); fold {fold} was asked for: re-run tile_case")
            arr = np.load(p, mmap_mode="r")
            images.append(arr[fold * c: (fold + 1) * c])
            targets.append(arr[n_folds * c:])
        if len(kinds) != 1:
            raise ValueError(f"tiles mix target kinds {sorted(kinds)}: re-run tile_case")
        kind = kinds.pop()
        if kind == "labels":
            if n_classes is None:
                raise ValueError("label tiles need n_classes (the number of labels + background)")
            targets = [t[0] for t in targets]
        self = cls.__new__(cls)
        paths = [Path(p) for p in npys]
        self._attach(images, targets, paths, paths, kind, n_classes or targets[0].shape[0], build_locations)
        return self

    def _attach(self, images: list[np.ndarray], targets: list[np.ndarray], image_paths: list[Path],
                target_paths: list[Path], target_kind: str, n_classes: int, build_locations: bool) -> None:
        if target_kind not in TARGET_KINDS:
            raise ValueError(f"target_kind must be one of {TARGET_KINDS}, got {target_kind!r}")
        self.target_kind, self.n_classes = target_kind, int(n_classes)
        self.images, self.targets, self.locations = images, targets, []
        n_channels = {im.shape[0] for im in images}
        if len(n_channels) != 1:
            raise ValueError(f"images have different channel counts {sorted(n_channels)}")
        self.n_channels = n_channels.pop()
        for im_path, t_path, im, t in zip(image_paths, target_paths, images, targets):
            self._check(im_path, t_path, im, t)
            side = locations_path(t_path)
            if not side.exists() or side.stat().st_mtime < t_path.stat().st_mtime:
                if not build_locations:
                    raise ValueError(f"{side} is missing or older than {t_path}: run medseg.training.batches3d.write_class_locations")
                log.info("scanning %s once for its class locations", t_path)
                write_class_locations(t_path, target_kind, n_classes, target=t)
            with np.load(side) as z:
                loc = ClassLocations(dict(z))
            if loc.shape != im.shape[1:] or len(loc.classes) != (n_classes if target_kind == "regions" else n_classes - 1):
                raise ValueError(f"{side} does not match {t_path} (shape or class count changed): delete it to rebuild")
            self.locations.append(loc)

    def _check(self, im_path, t_path, im: np.ndarray, t: np.ndarray) -> None:
        if im.ndim != 4 or im.dtype not in (np.float16, np.float32):
            raise ValueError(f"{im_path} must be (C, Z, Y, X) float16/float32, got {im.shape} {im.dtype}")
        want = (self.n_classes, *im.shape[1:]) if self.target_kind == "regions" else im.shape[1:]
        dtypes = (np.uint8, np.float16, np.float32)  # float: tile arrays (binary masks, integer class indices)
        if t.shape != want or t.dtype not in dtypes:
            raise ValueError(f"{t_path} must be {self.target_kind} {want} uint8 to match {im_path}, got {t.shape} {t.dtype}")

    def __len__(self) -> int:
        return len(self.images)


def crop_pad(arr: np.ndarray, start: Sequence[int], size: Sequence[int], dtype=None) -> np.ndarray:
    """Box ``[start, start + size)`` of the last three axes of ``arr``, zero outside the volume.

    Only the in-bounds part is read, so on a memory map this touches just the box.
    """
    lead = arr.shape[:-3]
    out = np.zeros((*lead, *size), dtype or arr.dtype)
    src, dst = [], []
    for s, p, n in zip(start, size, arr.shape[-3:]):
        a, b = max(s, 0), min(s + p, n)
        if a >= b:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[(..., *dst)] = arr[(..., *src)]
    return out


def _patch_start(shape, patch, rng, centre=None, jitter=0.0) -> list[int]:
    """nnU-Net's bbox bounds: pad to the patch where needed, then uniform or voxel-centred."""
    starts = []
    for ax, (n, p) in enumerate(zip(shape, patch)):
        pad = max(p - n, 0)
        lb, ub = -(pad // 2), n + pad - pad // 2 - p
        if centre is None:
            starts.append(int(rng.integers(lb, ub + 1)))
        else:
            j = int(p * jitter)
            starts.append(int(np.clip(centre[ax] - p // 2 + rng.integers(-j, j + 1), lb, ub)))
    return starts


def sample_patch(vols: VolumeSet3D, seed: int, step: int, index: int, cfg: Patch3DConfig,
                 aug: Augment3DConfig | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sample ``index`` of batch ``step``: image ``(C, *patch)`` float32, target, and what was drawn.

    The target is regions ``(K, *patch)`` float32 or labels ``(*patch)`` int64. The info dict
    holds ``case``, ``forced`` (foreground was forced), ``cls`` (the class drawn, or None) and
    ``start`` (the patch corner in the volume, before augmentation).
    """
    rng = np.random.default_rng([seed, step, index])
    case = int(rng.integers(len(vols)))
    loc = vols.locations[case]
    forced = bool(rng.random() < cfg.fg_fraction)
    present = loc.present
    cls = present[int(rng.integers(len(present)))] if forced and present else None
    centre = loc.voxel(cls, rng) if cls is not None else None
    patch = tuple(int(p) for p in cfg.patch_size)
    start = _patch_start(loc.shape, patch, rng, centre, cfg.jitter)
    spatial = draw_spatial(rng, aug) if aug is not None else None
    box = input_extent(spatial, patch)
    box_start = [s + p // 2 - b // 2 for s, p, b in zip(start, patch, box)]
    x = crop_pad(vols.images[case], box_start, box, np.float32)
    y = crop_pad(vols.targets[case], box_start, box)
    if aug is not None:
        x, y = augment3d(x, y, rng, aug, spatial=spatial, out_shape=patch)
    y = y.astype(np.float32 if vols.target_kind == "regions" else np.int64)
    return x, y, {"case": case, "forced": forced, "cls": cls, "start": start}


def make_batch3d(vols: VolumeSet3D, step: int, seed: int, batch_size: int, cfg: Patch3DConfig,
                 aug: Augment3DConfig | None, samples: range | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step``: ``(B, C, Z, Y, X)`` float32 images and targets.

    Targets are regions ``(B, K, Z, Y, X)`` float32 or labels ``(B, Z, Y, X)`` int64, as
    :mod:`medseg.training.losses` expects. ``samples`` picks a sub-range of the global batch (a DDP
    rank's shard); concatenating every shard gives exactly the whole batch.
    """
    if batch_size < 1:
        raise ValueError(f"training.batch_size must be >= 1, got {batch_size}")
    if cfg.patch_size is None:
        raise ValueError("Patch3DConfig.patch_size must be set (the trainer takes the model's patch_size)")
    samples = range(batch_size) if samples is None else samples
    if len(samples) == 0 or samples.start < 0 or samples.stop > batch_size:
        raise ValueError(f"samples must be a non-empty sub-range of range({batch_size}), got {samples}")
    xs, ys = zip(*(sample_patch(vols, seed, step, i, cfg, aug)[:2] for i in samples))
    return np.stack(xs), np.stack(ys)


class PoolPrefetcher:
    """Build batches ``start .. stop-1`` on ``workers`` threads, yielded in order (same as inline).

    :class:`medseg.training.batches.Prefetcher` with several builders: a 3-D batch with spatial augmentation
    costs tens of milliseconds of mostly GIL-free numpy/torch work, more than a GPU step may
    last, so several batches are built at once. At most ``depth`` batches are in flight.
    """

    def __init__(self, fn: Callable[[int], tuple[np.ndarray, np.ndarray]], start: int, stop: int,
                 workers: int = 2, depth: int = 4) -> None:
        if workers < 1 or depth < workers:
            raise ValueError(f"training.data_workers must be >= 1 and depth >= workers, got {workers}, {depth}")
        self._fn, self._range, self._workers, self._depth = fn, range(start, stop), workers, depth

    def __iter__(self) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
        steps = iter(self._range)
        with ThreadPoolExecutor(self._workers, thread_name_prefix="batch3d") as pool:
            pending = deque((s, pool.submit(self._fn, s)) for s in islice(steps, self._depth))
            while pending:
                step, fut = pending.popleft()
                batch = fut.result()
                nxt = next(steps, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(self._fn, nxt)))
                yield step, batch
