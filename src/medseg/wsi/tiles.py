"""Training tiles of one slide at a chosen microns-per-pixel, class-aware, read lazily from the slide.

Candidate tiles lie on a grid over the pyramid level nearest the wanted mpp and must hold
``min_tissue`` tissue (scikit-image tissue mask). Class-aware sampling: each class (background
included) gets up to ``per_class`` tiles among those containing it, rarest class first, so a rare
class is not drowned by the common ones; the choice is a pure function of the seed and slide.
Only the chosen tiles are read from the slide, one at a time, stain-normalised, and written into
memory-mapped arrays, so memory stays at one tile whatever the slide size.

Outputs, in the common trainer's tile format (:func:`medseg.preprocess.tiling.tile_case`; tile index on the
``Z`` axis, so each tile is a "slice" of a 2-D task, ``training.context: 0``):
``<stem>.npy`` ``(3 + 1, N, T, T)`` float16: RGB in [0, 1] (stain-normalised), then the class
indices (0 background/unannotated, i the i-th class); ``<stem>.json`` the table the trainer
reads (``n_image_channels``, ``target_kind``, ``brain_slices`` = every tile, ``fg_slices`` = tiles
with a class) plus the slide, level, mpp, tile positions ``(y, x)`` in level pixels and class
pixels per tile.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from medseg.io import atomic_path, write_json
from medseg.wsi.annotations import rasterize, read_geojson
from medseg.wsi.slide import SlideLevel, open_slide, read_region, select_level
from medseg.wsi.stain import StainNormalizer, StainTarget
from medseg.wsi.tissue import require_tissue, tissue_mask
from medseg.wsi.config import TileConfig

log = logging.getLogger(__name__)


def grid(level: SlideLevel, tile: int, stride: int) -> np.ndarray:
    """``(N, 2)`` top-left ``(y, x)`` of tiles inside the level on a ``stride`` grid."""
    ys = np.arange(0, level.height - tile + 1, stride)
    xs = np.arange(0, level.width - tile + 1, stride)
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)


def window_fraction(mask: np.ndarray, starts: np.ndarray, tile: int, scale: float) -> np.ndarray:
    """Mean of a coarse boolean ``mask`` over each tile (``scale`` level pixels per mask pixel)."""
    out = np.empty(len(starts))
    for i, (y, x) in enumerate(starts):
        y0, x0 = int(y // scale), int(x // scale)
        y1, x1 = max(y0 + 1, int(np.ceil((y + tile) / scale))), max(x0 + 1, int(np.ceil((x + tile) / scale)))
        out[i] = mask[y0:y1, x0:x1].mean() if mask[y0:y1, x0:x1].size else 0.0
    return out


def class_aware_sample(presence: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of tiles: up to ``per_class`` per class among tiles containing it, rarest class first.

    Args:
        presence: ``(N, K)`` bool, tile n contains class k.
        per_class: tiles wanted per class.
        rng: random generator.

    Returns:
        Sorted unique tile indices.
    """
    chosen: list[int] = []
    order = np.argsort(presence.sum(axis=0), kind="stable")
    for k in order:
        have = sum(1 for i in chosen if presence[i, k])
        pool = np.setdiff1d(np.flatnonzero(presence[:, k]), chosen)
        need = max(0, min(per_class - have, len(pool)))
        chosen.extend(rng.choice(pool, size=need, replace=False).tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def _rng(seed: int, slide_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.sha256(slide_id.encode()).hexdigest()[:8], 16)])


def plan_tiles(slide, slide_path: Path, annotation: Path, classes: Sequence[str], config: TileConfig,
               mpp0: float | None = None) -> tuple[SlideLevel, np.ndarray, list[dict]]:
    """Choose the tiles of one slide: level, ``(N, 2)`` positions, and the annotation features."""
    level = select_level(slide, slide_path, mpp=config.mpp, mpp0=mpp0)
    mask, scale0 = tissue_mask(slide, config.tissue_method)
    require_tissue(mask, slide_path, config.tissue_method)
    scale = scale0 / level.downsample  # level pixels per mask pixel
    starts = grid(level, config.tile, config.stride or config.tile)
    if len(starts) == 0:
        raise ValueError(f"tiles.tile ({config.tile}) must fit in level {level.level} of {slide_path} "
                         f"({level.height} x {level.width})")
    starts = starts[window_fraction(mask, starts, config.tile, scale) >= config.min_tissue]
    if len(starts) == 0:
        raise ValueError(f"no tile of slide {slide_path} holds >= {config.min_tissue:.0%} tissue; lower "
                         "tiles.min_tissue")
    features = read_geojson(annotation)
    coarse = rasterize(features, classes, mask.shape, scale0, source=annotation,
                       slide_size=(slide.dimensions[1], slide.dimensions[0]))
    presence = np.stack([window_fraction(coarse == k, starts, config.tile, scale) > 0
                         for k in range(len(classes) + 1)], axis=1)
    picked = class_aware_sample(presence, config.per_class, _rng(config.seed, slide_path.stem))
    return level, starts[picked], features


def tile_slide(slide_path: str | Path, annotation: str | Path, classes: Sequence[str], out_prefix: str | Path,
               config: TileConfig = TileConfig(), stain: StainTarget | None = None, mpp0: float | None = None) -> dict:
    """Write the training tiles of one slide (see the module docstring); return the table.

    Args:
        slide_path: the slide.
        annotation: its QuPath GeoJSON.
        classes: class names in label order.
        out_prefix: ``<dir>/<stem>``; writes ``<stem>.npy`` and ``<stem>.json``.
        config: tiling parameters.
        stain: normalisation target fitted on the training slides (None: raw colours).
        mpp0: level-0 mpp overriding the slide's metadata.
    """
    slide_path, annotation, out_prefix = Path(slide_path), Path(annotation), Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    with open_slide(slide_path) as slide:
        level, starts, features = plan_tiles(slide, slide_path, annotation, classes, config, mpp0)
        normalizer = slide_normalizer(slide, slide_path, level, stain, config.tissue_method, config.seed) \
            if stain else None
        t, n = config.tile, len(starts)
        npy_path = Path(f"{out_prefix}.npy")
        counts = []
        with atomic_path(npy_path) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(4, n, t, t))
            for i, (y, x) in enumerate(starts):
                rgb = read_region(slide, level, int(y), int(x), t, t)
                if normalizer is not None:
                    rgb = normalizer(rgb)
                arr[:3, i] = rgb.transpose(2, 0, 1) / np.float32(255.0)
                labels = rasterize(features, classes, (t, t), level.downsample, (int(y), int(x)), source=annotation)
                arr[3, i] = labels
                counts.append(np.bincount(labels.ravel(), minlength=len(classes) + 1).tolist())
            arr.flush()
            del arr
    fg = [i for i, c in enumerate(counts) if sum(c[1:]) > 0]
    table = {"case": slide_path.stem, "shape": [4, n, t, t], "n_image_channels": 3, "n_folds": 1,
             "n_target_channels": 1, "target_kind": "labels", "brain_slices": list(range(n)), "fg_slices": fg,
             "slide": str(slide_path), "level": level.level, "mpp": level.mpp, "tile": t, "classes": list(classes),
             "positions": starts.tolist(), "class_pixels": counts, "stain": stain.method if stain else None,
             "config": asdict(config)}
    write_json(table, Path(f"{out_prefix}.json"))
    log.info("%s: %d tiles of %d px at level %d (%.2f mpp)", slide_path.name, n, t, level.level, level.mpp or -1)
    return table


def tissue_pixels(slide, level: SlideLevel, tissue_method: str = "auto", n_windows: int = 16, window: int = 256,
                  seed: int = 0) -> np.ndarray:
    """``(N, 3)`` uint8 pixels of up to ``n_windows`` random tissue windows of ``level`` (for stain fits)."""
    mask, scale0 = tissue_mask(slide, tissue_method)
    scale = scale0 / level.downsample
    w = min(window, level.height, level.width)
    starts = grid(level, w, max(1, w // 2))
    frac = window_fraction(mask, starts, w, scale)
    pool = starts[frac >= 0.5] if (frac >= 0.5).any() else starts[frac > 0]
    if len(pool) == 0:
        return np.zeros((0, 3), np.uint8)
    rng = np.random.default_rng(seed)
    pick = pool[rng.choice(len(pool), size=min(n_windows, len(pool)), replace=False)]
    return np.concatenate([read_region(slide, level, int(y), int(x), w, w).reshape(-1, 3) for y, x in pick])


def slide_normalizer(slide, slide_path: Path, level: SlideLevel, target: StainTarget, tissue_method: str = "auto",
                     seed: int = 0) -> StainNormalizer:
    """A normaliser for this slide: its source stain parameters estimated from its tissue at ``level``."""
    pixels = tissue_pixels(slide, level, tissue_method, seed=seed)
    try:
        return StainNormalizer.for_pixels(target, pixels)
    except ValueError as e:
        raise ValueError(f"slide {slide_path}: cannot estimate its stains ({e})") from e


def fit_stain_target(slide_paths: Sequence[str | Path], method: str, mpp: float, tissue_method: str = "auto",
                     seed: int = 0, mpp0: float | None = None) -> StainTarget:
    """Fit a stain target on tissue pixels pooled from (training) slides at ``mpp``."""
    from medseg.wsi.stain import fit_target

    sets, ids = [], []
    for p in map(Path, slide_paths):
        with open_slide(p) as slide:
            level = select_level(slide, p, mpp=mpp, mpp0=mpp0)
            sets.append(tissue_pixels(slide, level, tissue_method, seed=seed))
        ids.append(p.stem)
    if not ids:
        raise ValueError("fitting a stain target needs at least one training slide, got none")
    return fit_target(method, sets, ids)


def fit_stain(slides: Sequence[str], recipe, out_json: str) -> None:
    """The workflow's stain job: the recipe's stain target (``macenko``, ``reinhard`` or ``none``)
    fitted on the training ``slides`` at the tiles' mpp, written to ``out_json``."""
    if recipe.stain == "none":
        write_json({"method": "none"}, out_json)
        return
    fit_stain_target(slides, recipe.stain, recipe.tiles.mpp, mpp0=recipe.mpp).save(out_json)
