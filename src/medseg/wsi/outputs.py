"""What pathologists open from a stitched slide prediction: labels and QuPath GeoJSON polygons.

The stitched class probabilities (``probabilities.zarr``, pyramid levels ``"0"``, ``"1"``, ...,
each ``(K, H, W)``; see :mod:`medseg.wsi.stitch_slide`) become a label map at a chosen zarr
level (bounded size: the level whose longer side first fits ``max_side``), read in row strips,
then polygons with class names in level-0 slide pixels (QuPath's coordinates), written as a
GeoJSON FeatureCollection that QuPath imports as annotations (File > Import objects): each feature's
``properties`` hold ``classification`` (``{"name", "color": [r, g, b]}``, the recipe's
``class_colors``) and ``measurements`` (its area in level-0 pixels and, when the slide has a
microns-per-pixel, in square microns), where QuPath reads them.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import zarr

from medseg.wsi.annotations import mask_to_polygons, polygons_to_geojson, write_geojson
from medseg.wsi.config import CLASS_PALETTE, class_colours

log = logging.getLogger(__name__)

KINDS = ("labels", "regions")
OKABE_ITO = CLASS_PALETTE  # the thumbnails' class colours (medseg.wsi.evaluate)
GEOJSON_NAME = "predictions.geojson"
BACKGROUND_RGB = (128, 128, 128)  # the background channel's colour in the OME-TIFF
#: QuPath measurement names of a predicted polygon (level-0 pixels; square microns when the slide has an mpp)
AREA_PX, AREA_UM2 = "Area px^2 (level 0)", "Area µm^2"

Classes = Sequence[str] | Mapping[str, Sequence[int]]  # class names, or class name -> RGB colour


def channel_names(classes: Classes | None, kind: str, n_channels: int) -> list[str]:
    """The names of the ``n_channels`` probability channels: ``background`` then the classes
    (``labels``), the classes (``regions``), or ``channel i`` when the classes are unknown.

    Raises:
        ValueError: ``classes`` does not name every channel of that kind.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if classes is None:
        return [f"channel {i}" for i in range(n_channels)]
    names = ["background", *classes] if kind == "labels" else list(classes)
    if len(names) != n_channels:
        raise ValueError(f"classes must name the model's {n_channels - (kind == 'labels')} {kind} (channels), "
                         f"got {list(classes)}")
    return names


def channel_colours(classes: Classes | None, kind: str, n_channels: int) -> list[tuple[int, int, int]]:
    """RGB per channel, as :func:`channel_names`: grey background, then each class's colour
    (``classes`` a mapping: its colours; names only: the palette in class order)."""
    channel_names(classes, kind, n_channels)  # every channel named
    if classes is None:
        return [CLASS_PALETTE[i % len(CLASS_PALETTE)] for i in range(n_channels)]
    colours = class_colours(list(classes), classes if isinstance(classes, Mapping) else None)
    return [BACKGROUND_RGB] * (kind == "labels") + [colours[c] for c in classes]


def polygon_measurements(polys: Sequence[tuple[int, list[np.ndarray]]], mpp0: float | None) -> list[dict]:
    """QuPath ``measurements`` of each polygon (rings in level-0 pixels): its area (outer ring minus
    holes) in level-0 pixels and, when ``mpp0`` (level-0 microns per pixel) is known, in square microns."""
    out = []
    for _, rings in polys:
        area = float(_ring_area(rings[0]) - sum(_ring_area(h) for h in rings[1:]))
        out.append({AREA_PX: area, **({AREA_UM2: area * mpp0**2} if mpp0 else {})})
    return out


def probabilities_to_labels(prob: np.ndarray, kind: str = "labels", threshold: float = 0.5) -> np.ndarray:
    """Class indices ``(H, W)`` uint8 from probabilities ``(K, H, W)``.

    ``labels`` (softmax): argmax, channel 0 is background. ``regions`` (sigmoid, one channel per
    class): the most probable channel above ``threshold`` plus one, else 0. Pixels never
    predicted (all channels 0, e.g. no tissue) are 0 either way.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if kind == "labels":
        return np.argmax(prob, axis=0).astype(np.uint8)
    best = np.argmax(prob, axis=0)
    return np.where(np.take_along_axis(prob, best[None], 0)[0] > threshold, best + 1, 0).astype(np.uint8)


def pick_level(group: zarr.Group, max_side: int) -> int:
    """Finest zarr pyramid level whose longer side is ``<= max_side`` (the coarsest if none is)."""
    n = 0
    while str(n + 1) in group and max(group[str(n)].shape[1:]) > max_side:
        n += 1
    return n


def read_labels(zarr_path: str | Path, kind: str = "labels", max_side: int = 4096, level: int | None = None,
                rows: int = 1024) -> tuple[np.ndarray, int, float]:
    """Label map of a stitched prediction; returns ``(labels, zarr level, level-0 slide px per label px)``."""
    group = zarr.open_group(str(zarr_path), mode="r")
    level = pick_level(group, max_side) if level is None else level
    array = group[str(level)]
    _, h, w = array.shape
    labels = np.empty((h, w), np.uint8)
    for y in range(0, h, rows):
        labels[y:y + rows] = probabilities_to_labels(array[:, y:y + rows, :], kind)
    downsample0 = float(group.attrs.get("slide_downsample", 1.0)) * 2**level
    return labels, level, downsample0


def write_prediction_geojson(zarr_path: str | Path, out: str | Path, classes: Classes, kind: str = "labels",
                             max_side: int = 4096, min_area_px: int = 16) -> dict:
    """Trace the predicted classes of a stitched slide and write QuPath GeoJSON; return a summary.

    Args:
        zarr_path: ``probabilities.zarr`` from :func:`medseg.wsi.stitch_slide.stitch_slide`.
        out: GeoJSON file to write.
        classes: class names (``labels``: channels 1..K-1; ``regions``: channels 0..K-1), or class name ->
            RGB colour (the recipe's ``class_colors``; names only: the Okabe-Ito palette in class order).
        kind: ``labels`` (softmax) or ``regions`` (sigmoid).
        max_side: trace at the finest pyramid level with sides <= this (memory bound).
        min_area_px: drop polygons smaller than this many pixels of that level.
    """
    group = zarr.open_group(str(zarr_path), mode="r")
    channels = channel_colours(classes, kind, int(group["0"].shape[0]))
    colours = channels[1:] if kind == "labels" else channels
    labels, level, ds = read_labels(zarr_path, kind, max_side)
    polys = mask_to_polygons(labels, ds, values=range(1, len(colours) + 1), min_area_px=min_area_px)
    mpp, downsample = group.attrs.get("mpp"), float(group.attrs.get("slide_downsample", 1.0))
    props = [{"measurements": m} for m in polygon_measurements(polys, mpp / downsample if mpp else None)]
    write_geojson(polygons_to_geojson(polys, list(classes), colours, properties=props), out)
    counts = {name: sum(1 for v, _ in polys if v == i + 1) for i, name in enumerate(classes)}
    log.info("%s: %d predicted polygons %s (zarr level %d)", out, len(polys), counts, level)
    return {"geojson": str(out), "polygons": counts, "zarr_level": level, "downsample": ds}


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
