"""Stitch a model's predictions over a whole-slide image, out of core, windows touching tissue only.

Windows come from :mod:`medseg.stitch.geometry`, blending and accumulation from
:class:`medseg.stitch.accumulator.StitchAccumulator` (zarr backend), so memory stays bounded by
a batch of windows and a zarr chunk whatever the slide size. Outputs, in ``out_dir``:

* ``probabilities.zarr``: group with arrays ``"0"``, ``"1"``, ... (each level 2x smaller), each
  ``(K, H, W)`` float32, with ``multiscales`` metadata and the level's microns per pixel;
* ``probabilities.ome.tif``: the same map as uint8 (probability x 255), tiled (256) pyramidal
  BigTIFF with SubIFD levels, one page per channel, openable in QuPath; the OME-XML names each
  channel (``background`` and the class names, :func:`medseg.wsi.outputs.channel_names`) and gives
  it its class colour;
* ``predictions.geojson`` (when class names are given): the predicted classes as QuPath
  polygons (see :mod:`medseg.wsi.outputs`).

With a stain target, each slide's colours are normalised (its own stain parameters estimated
once from its tissue) before the predictor sees them, as its training tiles were.
"""
from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr
from tqdm import tqdm

from medseg.inference.device import resolve_device
from medseg.io import atomic_path
from medseg.stitch.accumulator import StitchAccumulator
from medseg.stitch.geometry import compute_windows, windows_touching
from medseg.stitch.inference import Predictor, batched
from medseg.wsi.slide import SlideLevel, open_slide, read_region, select_level
from medseg.wsi.stain import StainTarget
from medseg.wsi.tiles import slide_normalizer
from medseg.wsi.tissue import tissue_mask
from medseg.wsi.config import SlideStitchConfig, TIFF_TILE
from medseg.wsi.outputs import GEOJSON_NAME, Classes, channel_colours, channel_names, write_prediction_geojson

log = logging.getLogger(__name__)


ZARR_NAME, TIFF_NAME = "probabilities.zarr", "probabilities.ome.tif"


def stitch_slide(slide_path: str | Path, out_dir: str | Path, predictor: Predictor,
                 config: SlideStitchConfig = SlideStitchConfig(), progress: bool = False,
                 stain: StainTarget | None = None, classes: Classes | None = None,
                 kind: str = "labels") -> dict:
    """Predict every tissue window of a slide and write the stitched map to zarr and a pyramidal TIFF.

    Args:
        slide_path: SVS / pyramidal TIFF readable by tiffslide.
        out_dir: output folder (created); see the module docstring for its contents.
        predictor: maps ``(B, 3, tile, tile)`` RGB float in [0, 1] to ``(B, K, tile, tile)``
            probabilities; runs on ``config.device``.
        config: tiling parameters (``slide_mpp`` overrides the slide's level-0 mpp).
        progress: tqdm progress bar over windows.
        stain: stain normalisation target (from the training slides) applied to every window.
        classes: class names, or class name -> RGB colour (default: the Okabe-Ito palette in class
            order); they name the TIFF's channels and, when given, ``predictions.geojson`` is written.
        kind: ``labels`` (softmax output, channel 0 background) or ``regions`` (sigmoid).

    Returns:
        Summary: level index, its shape and mpp, number of windows run, pyramid levels, output paths.

    Raises:
        ValueError: no tissue, tile larger than the level, bad level/mpp, ``classes`` not naming
            every channel the predictor gives.
    """
    slide_path, out_dir = Path(slide_path), Path(out_dir)
    partial = out_dir / f".{ZARR_NAME}.partial"
    zarr_path = out_dir / ZARR_NAME
    try:
        with open_slide(slide_path) as slide:
            level, n_windows = _predict_tissue(slide, slide_path, partial, predictor, config, progress, stain)
        group = zarr.open_group(str(partial), mode="a")
        k = int(group["0"].shape[0])
        channels = channel_names(classes, kind, k), channel_colours(classes, kind, k)
        levels = build_pyramid(group, config.chunk)
        group.attrs.update(multiscales_metadata(levels, level), source=str(slide_path), config=asdict(config),
                           slide_downsample=level.downsample, stain=stain.method if stain else None,
                           channels=channels[0])
        shutil.rmtree(zarr_path, ignore_errors=True)
        partial.rename(zarr_path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # only left on failure
    tiff_path = out_dir / TIFF_NAME
    with atomic_path(tiff_path) as tmp:
        write_pyramid_tiff(zarr.open_group(str(zarr_path), mode="r"), tmp, levels, level.mpp, channels)
    summary = {"slide": str(slide_path), "level": level.level, "shape": [level.height, level.width], "mpp": level.mpp,
               "windows": n_windows, "zarr": str(zarr_path), "tiff": str(tiff_path), "levels": levels}
    if classes is not None:
        summary["geojson"] = write_prediction_geojson(zarr_path, out_dir / GEOJSON_NAME, classes, kind)
    return summary


def _predict_tissue(slide, slide_path: Path, partial: Path, predictor: Predictor, config: SlideStitchConfig,
                    progress: bool, stain: StainTarget | None = None) -> tuple[SlideLevel, int]:
    """Run the predictor over the tissue windows into a zarr group at ``partial``; return level and count."""
    level = select_level(slide, slide_path, config.level, config.mpp, config.slide_mpp)
    shape, patch = (level.height, level.width), (config.tile, config.tile)
    if config.tile > min(shape):
        raise ValueError(f"tile ({config.tile}) must fit in level {level.level} of {slide_path} ({shape}); "
                         "lower --tile or choose a finer level")
    mask, mask_scale = tissue_mask(slide, config.tissue_method)
    normalizer = slide_normalizer(slide, slide_path, level, stain, config.tissue_method) if stain else None
    windows = np.asarray(compute_windows(shape, patch, config.overlap))
    windows = windows[windows_touching(mask, windows, patch, mask_scale / level.downsample)]
    if len(windows) == 0:
        raise ValueError(f"no tissue found in slide {slide_path}; nothing to predict (check the slide or "
                         f"tissue_method={config.tissue_method!r})")
    log.info("%s: level %d %s, %d tissue windows of %d px", slide_path.name, level.level, shape, len(windows),
             config.tile)

    partial.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(partial, ignore_errors=True)
    acc = StitchAccumulator(shape, patch, mode=config.mode, sigma_scale=config.sigma_scale, backend="zarr",
                            zarr_path=partial, chunks=(config.chunk, config.chunk), allow_uncovered=True)
    device = resolve_device(config.device or "auto")
    with torch.inference_mode(), tqdm(total=len(windows), unit="win", disable=not progress) as bar:
        for locs in batched(windows, config.batch_size):
            tiles = np.stack([read_region(slide, level, int(y), int(x), config.tile, config.tile) for y, x in locs])
            if normalizer is not None:
                tiles = normalizer(tiles)
            batch = torch.from_numpy(tiles).permute(0, 3, 1, 2).to(device, torch.float32).div_(255.0)
            acc.add_batch(predictor(batch), locs)
            bar.update(len(locs))
    acc.finalize()
    return level, len(windows)


def build_pyramid(group: zarr.Group, chunk: int) -> int:
    """Add 2x mean-pooled levels ``"1"``, ``"2"``, ... of array ``"0"`` until it fits one TIFF tile.

    Works chunk by chunk. Returns the number of levels including ``"0"``.
    """
    n = 1
    src = group["0"]
    while max(src.shape[1:]) > TIFF_TILE:
        k, h, w = src.shape
        dst = group.create_array(str(n), shape=(k, math.ceil(h / 2), math.ceil(w / 2)), chunks=src.chunks,
                                 dtype="float32", fill_value=0.0, compressors=src.compressors)
        for y in range(0, dst.shape[1], chunk):
            for x in range(0, dst.shape[2], chunk):
                block = src[:, 2 * y:2 * (y + chunk), 2 * x:2 * (x + chunk)]
                bh, bw = block.shape[1], block.shape[2]
                block = np.pad(block, ((0, 0), (0, bh % 2), (0, bw % 2)), mode="edge")
                dst[:, y:y + (bh + 1) // 2, x:x + (bw + 1) // 2] = \
                    block.reshape(k, (bh + 1) // 2, 2, (bw + 1) // 2, 2).mean(axis=(2, 4))
        src, n = dst, n + 1
    return n


def multiscales_metadata(levels: int, level: SlideLevel) -> dict:
    """OME-NGFF-style ``multiscales`` attributes (scale in microns when known, else pixels)."""
    unit, base = ("micrometer", level.mpp) if level.mpp else (None, 1.0)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if unit:
        axes[1]["unit"] = axes[2]["unit"] = unit
    datasets = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1.0, base * 2**i,
                                                                                           base * 2**i]}]}
                for i in range(levels)]
    return {"multiscales": [{"version": "0.4", "axes": axes, "datasets": datasets}], "slide_level": level.level,
            "mpp": level.mpp}


def _uint8_tiles(array: zarr.Array) -> Iterator[np.ndarray]:
    """Tiles of a ``(K, H, W)`` float array in [0, 1] as uint8, channel by channel, row-major, padded."""
    k, h, w = array.shape
    for c in range(k):
        for y in range(0, h, TIFF_TILE):
            strip = np.clip(array[c, y:y + TIFF_TILE, :] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            strip = np.pad(strip, ((0, TIFF_TILE - strip.shape[0]), (0, -w % TIFF_TILE)))
            for x in range(0, w, TIFF_TILE):
                yield strip[:, x:x + TIFF_TILE]


def ome_colour(rgb: Sequence[int]) -> int:
    """An OME-XML ``Channel/@Color``: RGBA packed in a signed 32-bit integer (opaque)."""
    r, g, b = (int(c) for c in rgb)
    value = (r << 24) | (g << 16) | (b << 8) | 255
    return value - (1 << 32) if value >= 1 << 31 else value


def write_pyramid_tiff(group: zarr.Group, path: Path, levels: int, mpp: float | None,
                       channels: tuple[Sequence[str], Sequence[Sequence[int]]] | None = None) -> None:
    """Write levels ``"0"..levels-1`` of ``group`` as a tiled pyramidal OME BigTIFF (SubIFDs), uint8;
    ``channels``: the name and RGB colour of each channel, written in the OME-XML."""
    k = group["0"].shape[0]
    meta: dict = {"axes": "CYX"}
    if channels is not None:
        meta["Channel"] = {"Name": list(channels[0]), "Color": [ome_colour(c) for c in channels[1]]}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for i in range(levels):
            array = group[str(i)]
            options = {"subifds": levels - 1, "metadata": dict(meta)} if i == 0 else {"subfiletype": 1}
            if mpp:
                res = 1e4 / (mpp * 2**i)
                options.update(resolution=(res, res), resolutionunit="CENTIMETER")
                if i == 0:
                    options["metadata"].update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm",
                                               PhysicalSizeYUnit="µm")
            tif.write(_uint8_tiles(array), shape=(k, *array.shape[1:]), dtype=np.uint8,
                      tile=(TIFF_TILE, TIFF_TILE), photometric="minisblack", compression="zlib",
                      compressionargs={"level": 1}, **options)


def predict_slide(slide: str, model_pt: str, stain_json: str, recipe, out_tiff: str) -> dict:
    """The workflow's slide prediction job: the fold's checkpoint run over the slide with the
    recipe's stitching (``recipe.predict``) and the training slides' stain target; writes the
    OME-TIFF, zarr, GeoJSON (classes in ``recipe.class_colors``) and ``summary.json`` beside ``out_tiff``."""
    from medseg.io import write_json
    from medseg.wsi.predictors import load_checkpoint_predictor, task_kind
    from medseg.wsi.stain import load_stain

    predictor, meta = load_checkpoint_predictor(model_pt, resolve_device(recipe.predict.device or "auto"))
    out_dir = Path(out_tiff).parent
    summary = stitch_slide(slide, out_dir, predictor, recipe.predict, stain=load_stain(stain_json),
                           classes=recipe.class_colors, kind=task_kind(meta))
    write_json(summary, out_dir / "summary.json")
    return summary
