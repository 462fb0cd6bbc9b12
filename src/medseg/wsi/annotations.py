"""Slide annotations: QuPath GeoJSON polygons with class names <-> label masks.

GeoJSON coordinates are ``(x, y)`` in level-0 pixels (QuPath's export). A label mask is
``(H, W)`` uint8 at some pyramid level (``downsample`` level-0 pixels per mask pixel), value 0
for unannotated/background and ``i`` for the i-th class of ``classes`` (1-based). A mask pixel
``(r, c)`` covers level-0 ``[c*d, (c+1)*d) x [r*d, (r+1)*d)`` and belongs to a polygon when its
centre does, so polygon -> mask -> polygon is exact up to that rasterisation.

Features are painted in file order (a later overlapping polygon wins); holes are kept both ways.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import measure

from medseg.io import InputError, atomic_path

log = logging.getLogger(__name__)

OUTSIDE_TOLERANCE = 1.0  # level-0 pixels a vertex may lie beyond the slide edge (QuPath rounding)


def read_geojson(path: str | Path) -> list[dict]:
    """Features of a QuPath GeoJSON export (FeatureCollection, a list of features, or one feature)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise InputError(f"annotation file {path} does not exist") from e
    except json.JSONDecodeError as e:
        raise InputError(f"annotation file {path} is not valid JSON: {e}") from e
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise InputError(f"annotation file {path} must be a GeoJSON FeatureCollection, Feature or list of "
                         f"features, got {type(data).__name__} {str(data)[:80]!r}")
    return features


def feature_class(feature: dict) -> str | None:
    """QuPath class name of a feature (``properties.classification.name``), None when unclassified."""
    props = feature.get("properties") or {}
    cls = props.get("classification")
    if isinstance(cls, dict):
        return cls.get("name")
    return cls if isinstance(cls, str) else None


def classified_features(features: Sequence[dict], classes: Sequence[str], ignore: Sequence[str], source):
    """``(index, class name, feature)`` of every feature not in ``ignore``.

    Raises:
        InputError: a feature without a classification or with a class outside ``classes``, naming
            ``source`` (the annotation file) and the feature.
    """
    for k, feature in enumerate(features):
        name = feature_class(feature)
        if name in ignore:
            continue
        if name not in classes:
            what = "has no classification" if name is None else f"has class {name!r}"
            raise InputError(f"annotation file {source}: feature {k} {what}, which is not one of the dataset's "
                             f"classes {list(classes)} (add it to the class list or to ignore)")
        yield k, name, feature


def feature_polygons(feature: dict) -> list[list[np.ndarray]]:
    """Polygons of a Polygon/MultiPolygon feature: each a list of rings ``(N, 2)`` ``(x, y)``, exterior first."""
    geom = feature.get("geometry") or {}
    kind, coords = geom.get("type"), geom.get("coordinates")
    if kind == "Polygon":
        polys = [coords]
    elif kind == "MultiPolygon":
        polys = coords
    else:
        return []
    return [[np.asarray(ring, dtype=np.float64).reshape(-1, 2) for ring in poly] for poly in polys]


def _to_rc(ring: np.ndarray, downsample: float, offset: tuple[float, float]) -> np.ndarray:
    """Level-0 ``(x, y)`` vertices -> ``(row, col)`` in mask pixel-centre units of a window at ``offset``."""
    return np.stack([ring[:, 1] / downsample - 0.5 - offset[0], ring[:, 0] / downsample - 0.5 - offset[1]], axis=1)


def fill_polygon(rings_rc: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Boolean ``shape`` mask of pixel centres inside a polygon with holes (even-odd rule, scanline).

    Pixel ``(r, c)`` has its centre at ``(r, c)``. Each edge crossing row ``r`` (half-open in the
    row direction, so vertices count once) toggles the parity from the first pixel right of the
    crossing; a cumulative sum per row gives the inside. Cost: ``O(H * W + crossings)``, against
    ``O(H * W * vertices)`` for a point-in-polygon test per pixel.
    """
    h, w = shape
    toggles = np.zeros((h, w + 1), dtype=np.int32)
    for ring in rings_rc:
        r1, c1 = ring[:, 0], ring[:, 1]
        r2, c2 = np.roll(r1, -1), np.roll(c1, -1)
        lo, hi = np.minimum(r1, r2), np.maximum(r1, r2)
        first = np.maximum(np.ceil(lo), 0).astype(np.int64)  # rows r with lo <= r < hi
        last = np.minimum(np.ceil(hi) - 1, h - 1).astype(np.int64)
        keep = last >= first
        if not keep.any():
            continue
        r1, c1, r2, c2, first, last = (a[keep] for a in (r1, c1, r2, c2, first, last))
        counts = last - first + 1
        edge = np.repeat(np.arange(len(first)), counts)
        rows = first[edge] + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        x = c1[edge] + (rows - r1[edge]) * (c2[edge] - c1[edge]) / (r2[edge] - r1[edge])
        cols = np.clip(np.floor(x).astype(np.int64) + 1, 0, w)
        np.add.at(toggles, (rows, cols), 1)
    return (np.cumsum(toggles[:, :w], axis=1) % 2).astype(bool)


def rasterize(features: Sequence[dict], classes: Sequence[str], shape: tuple[int, int], downsample: float = 1.0,
              offset: tuple[int, int] = (0, 0), *, source: str | Path = "<annotations>",
              slide_size: tuple[int, int] | None = None, ignore: Sequence[str] = ()) -> np.ndarray:
    """Label mask ``(H, W)`` uint8 of GeoJSON features at a pyramid level, optionally a window of it.

    Args:
        features: GeoJSON features (see :func:`read_geojson`).
        classes: class names in label order (value ``i + 1`` for ``classes[i]``); at most 255.
        shape: ``(H, W)`` of the mask (the whole level, or a window).
        downsample: level-0 pixels per mask pixel.
        offset: ``(row, col)`` of the window's top-left corner in mask pixels of the level.
        source: the annotation file, named in errors.
        slide_size: level-0 ``(height, width)``: a polygon wholly outside it is an error, one crossing
            its edge is clipped to it with a warning.
        ignore: class names to skip (e.g. QuPath's "Region*"); unclassified features are an error.

    Raises:
        InputError: an unknown or missing class name, or an annotation outside the slide.
    """
    if len(classes) > 255:
        raise ValueError(f"classes must have at most 255 names, got {len(classes)}")
    index = {name: i + 1 for i, name in enumerate(classes)}
    mask = np.zeros(shape, dtype=np.uint8)
    for k, name, feature in classified_features(features, classes, ignore, source):
        for rings in feature_polygons(feature):
            if slide_size is not None:
                _check_inside(rings, slide_size, source, k, name)
            rc = [_to_rc(r, downsample, offset) for r in rings]
            if not _bbox_hits(rc[0], shape):
                continue
            mask[fill_polygon(rc, shape)] = index[name]
    return mask


def _bbox_hits(ring_rc: np.ndarray, shape: tuple[int, int]) -> bool:
    lo, hi = ring_rc.min(axis=0), ring_rc.max(axis=0)
    return bool(hi[0] >= 0 and hi[1] >= 0 and lo[0] <= shape[0] - 1 and lo[1] <= shape[1] - 1)


def _check_inside(rings: list[np.ndarray], slide_size: tuple[int, int], source, k: int, name: str) -> None:
    """A polygon wholly outside the slide is an error (exported from another slide or at another
    resolution?); one crossing the slide's edge is clipped to it (only pixels inside are painted)
    with a warning naming the file and the feature."""
    height, width = slide_size
    pts = rings[0]
    lo, hi = pts.min(axis=0), pts.max(axis=0)  # (x, y)
    t = OUTSIDE_TOLERANCE
    if not (lo[0] < -t or lo[1] < -t or hi[0] > width + t or hi[1] > height + t):
        return
    span = f"spans x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f}"
    if hi[0] <= 0 or hi[1] <= 0 or lo[0] >= width or lo[1] >= height:
        raise InputError(f"annotation file {source}: feature {k} ({name!r}) {span}, outside the slide (level 0: "
                         f"{width} x {height} px); was it exported from another slide or at another resolution?")
    log.warning("annotation file %s: feature %d (%r) %s, across the slide's edge (level 0: %d x %d px): clipped to "
                "the slide", source, k, name, span, width, height)


def check_annotations(path: str | Path, classes: Sequence[str], slide_size: tuple[int, int],
                      ignore: Sequence[str] = ()) -> dict[str, int]:
    """Validate a GeoJSON file against the class list and the slide's level-0 ``(height, width)``.

    Returns:
        Number of polygons per class name.

    Raises:
        InputError: unreadable file, unknown/missing class name, a polygon wholly outside the slide (one
            crossing its edge is clipped, with a warning), no polygon at all (``features: []``).
    """
    counts = {name: 0 for name in classes}
    features = read_geojson(path)
    for k, name, feature in classified_features(features, classes, ignore, path):
        for rings in feature_polygons(feature):
            _check_inside(rings, slide_size, path, k, name)
            counts[name] += 1
    if not any(counts.values()):
        what = "no features" if not features else f"no polygons of the classes {list(classes)}"
        raise InputError(f"annotation file {path} has {what}: the slide would train as all background; annotate "
                         "it, or remove the file to predict the slide without scoring it")
    return counts


def read_mask(path: str | Path, classes: Sequence[str], shape: tuple[int, int], downsample: float = 1.0, *,
              slide_size: tuple[int, int] | None = None, ignore: Sequence[str] = ()) -> np.ndarray:
    """:func:`rasterize` the GeoJSON file ``path`` over a whole level of ``shape``."""
    return rasterize(read_geojson(path), classes, shape, downsample, source=path, slide_size=slide_size,
                     ignore=ignore)


def mask_to_polygons(mask: np.ndarray, downsample: float = 1.0, values: Sequence[int] | None = None,
                     min_area_px: int = 0) -> list[tuple[int, list[np.ndarray]]]:
    """Polygons of each label of a mask, holes kept, in level-0 ``(x, y)`` coordinates.

    A label's pixels form 8-connected components; each gives one polygon whose exterior ring is
    the component's marching-squares outline (between pixel centres) and whose holes are the
    outlines of the 4-connected background pockets inside it, so :func:`rasterize` gives the
    mask back exactly.

    Args:
        mask: ``(H, W)`` integer labels.
        downsample: level-0 pixels per mask pixel.
        values: labels to trace (default: every nonzero value present).
        min_area_px: drop components smaller than this many mask pixels.

    Returns:
        ``(label, rings)`` per component, rings ``(N, 2)`` closed (first == last), exterior first.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    values = sorted(int(v) for v in np.unique(mask) if v) if values is None else list(values)
    out = []
    for value in values:
        comps, n = ndimage.label(mask == value, structure=np.ones((3, 3)))
        for i, sl in enumerate(ndimage.find_objects(comps), start=1):
            if sl is None:
                continue
            comp = np.pad(comps[sl] == i, 1)
            if comp.sum() < min_area_px:
                continue
            filled = ndimage.binary_fill_holes(comp)
            rings = [_outline(filled)]
            holes, n_holes = ndimage.label(filled & ~comp)
            for j in range(1, n_holes + 1):
                rings.append(_outline(holes == j, hole=True))
            shift = np.array([sl[1].start - 1, sl[0].start - 1], dtype=np.float64)  # (x, y) of padded origin
            out.append((value, [(r + shift + 0.5) * downsample for r in rings]))
    return out


def _outline(region: np.ndarray, hole: bool = False) -> np.ndarray:
    """Closed outline ``(N, 2)`` ``(x, y)`` of one connected region of a zero-padded boolean array."""
    contours = measure.find_contours(region.astype(np.uint8), 0.5, fully_connected="low" if hole else "high")
    ring = max(contours, key=len)[:, ::-1]  # (row, col) -> (x, y)
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    return ring


def polygons_to_geojson(polygons: list[tuple[int, list[np.ndarray]]], classes: Sequence[str],
                        colours: Sequence[tuple[int, int, int]] | None = None, decimals: int = 2,
                        object_type: str = "annotation", properties: Sequence[dict] | None = None) -> dict:
    """A QuPath-importable FeatureCollection: one Polygon feature per ``(label, rings)``.

    Args:
        polygons: from :func:`mask_to_polygons`.
        classes: names in label order (label ``i`` -> ``classes[i - 1]``).
        colours: optional RGB per class, shown by QuPath.
        decimals: coordinate rounding (level-0 pixels).
        object_type: QuPath ``objectType`` (``annotation`` or ``detection``).
        properties: optional extra properties per polygon (e.g. mean probability).
    """
    features = []
    for k, (label, rings) in enumerate(polygons):
        cls = {"name": classes[label - 1]}
        if colours is not None:
            cls["color"] = [int(c) for c in colours[label - 1]]
        props = {"objectType": object_type, "classification": cls, **(properties[k] if properties else {})}
        coords = [np.round(r, decimals).tolist() for r in rings]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": coords},
                         "properties": props})
    return {"type": "FeatureCollection", "features": features}


def write_geojson(collection: dict, path: str | Path) -> None:
    """Write a FeatureCollection atomically (compact: large polygons)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(collection, separators=(",", ":")) + "\n")


def mask_to_geojson(mask: np.ndarray, classes: Sequence[str], path: str | Path, downsample: float = 1.0,
                    colours: Sequence[tuple[int, int, int]] | None = None, min_area_px: int = 0) -> int:
    """Trace ``mask`` and write it as QuPath GeoJSON to ``path``; return the number of polygons."""
    polys = mask_to_polygons(mask, downsample, min_area_px=min_area_px)
    write_geojson(polygons_to_geojson(polys, classes, colours), path)
    log.info("wrote %d polygons to %s", len(polys), path)
    return len(polys)
