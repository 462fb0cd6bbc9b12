"""What pathologists open from a stitched slide prediction: labels and QuPath GeoJSON polygons.

The stitched class probabilities (``probabilities.zarr``, pyramid levels ``"0"``, ``"1"``, ...,
each ``(K, H, W)``; see :mod:`medseg.wsi.stitch_slide`) become a label map at a chosen zarr
level (bounded size: the level whose longer side first fits ``max_side``), read in row strips,
then polygons with class names in level-0 slide pixels (QuPath's coordinates), written as a
GeoJSON FeatureCollection that QuPath imports as annotations (File > Import objects).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from medseg.wsi.annotations import mask_to_polygons, polygons_to_geojson, write_geojson

log = logging.getLogger(__name__)

KINDS = ("labels", "regions")
OKABE_ITO = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
             (204, 121, 167), (0, 0, 0))
GEOJSON_NAME = "predictions.geojson"


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


def write_prediction_geojson(zarr_path: str | Path, out: str | Path, classes: Sequence[str], kind: str = "labels",
                             max_side: int = 4096, min_area_px: int = 16) -> dict:
    """Trace the predicted classes of a stitched slide and write QuPath GeoJSON; return a summary.

    Args:
        zarr_path: ``probabilities.zarr`` from :func:`medseg.wsi.stitch_slide.stitch_slide`.
        out: GeoJSON file to write.
        classes: class names (``labels``: channels 1..K-1; ``regions``: channels 0..K-1).
        kind: ``labels`` (softmax) or ``regions`` (sigmoid).
        max_side: trace at the finest pyramid level with sides <= this (memory bound).
        min_area_px: drop polygons smaller than this many pixels of that level.
    """
    labels, level, ds = read_labels(zarr_path, kind, max_side)
    n_classes = int(zarr.open_group(str(zarr_path), mode="r")["0"].shape[0]) - (kind == "labels")
    if len(classes) != n_classes:
        raise ValueError(f"classes must name the model's {n_classes} {kind} (channels), got {list(classes)}")
    polys = mask_to_polygons(labels, ds, values=range(1, n_classes + 1), min_area_px=min_area_px)
    colours = [OKABE_ITO[i % len(OKABE_ITO)] for i in range(n_classes)]
    areas = [{"area_px_level0": float(_ring_area(r[0]) - sum(_ring_area(h) for h in r[1:]))} for _, r in polys]
    write_geojson(polygons_to_geojson(polys, classes, colours, properties=areas), out)
    counts = {name: sum(1 for v, _ in polys if v == i + 1) for i, name in enumerate(classes)}
    log.info("%s: %d predicted polygons %s (zarr level %d)", out, len(polys), counts, level)
    return {"geojson": str(out), "polygons": counts, "zarr_level": level, "downsample": ds}


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
