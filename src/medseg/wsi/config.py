"""Slide settings (``datasets.<name>`` of ``kind: slide``: ``tiles``, ``predict``, ``evaluation``,
``split``, ``class_colors``): typed, frozen, light to import."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from medseg.cohort.splits import SplitConfig
from medseg.stitch.geometry import check_batch_size, check_overlap
from medseg.stitch.weights import check_mode

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif")  # slide files a folder lists
TIFF_TILE = 256  # tile side of the written pyramidal TIFF; zarr chunks are multiples of it

#: ``datasets.<name>.split`` of slide datasets: a larger test share than MRI's (few slides, each one large)
SLIDE_SPLIT = SplitConfig(test_fraction=0.3)

#: QuPath display colours (RGB, 0-255) of the classes ``class_colors`` does not name, in class order:
#: Okabe & Ito's colour-blind-safe palette (orange, sky blue, bluish green, yellow, blue, vermillion,
#: reddish purple, black)
CLASS_PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
                 (204, 121, 167), (0, 0, 0))


def class_colours(classes: Sequence[str], given: Mapping[str, Sequence[int]] | None = None,
                  key: str = "class_colors") -> dict[str, tuple[int, int, int]]:
    """Every class's QuPath colour: ``given``'s (class name -> RGB), else :data:`CLASS_PALETTE`'s in class order.

    Raises:
        ValueError: ``given`` names a class not in ``classes``, or a colour is not three integers in
            [0, 255] (the message names ``key``).
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise ValueError(f"{key} names {unknown}, which are not classes {list(classes)}")
    out = {}
    for i, name in enumerate(classes):
        rgb = given.get(name, CLASS_PALETTE[i % len(CLASS_PALETTE)])
        if len(rgb) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in rgb):
            raise ValueError(f"{key}.{name} must be three integers in [0, 255] (RGB), got {list(rgb)}")
        out[name] = tuple(int(c) for c in rgb)
    return out


@dataclass(frozen=True)
class TileConfig:
    """Config key ``datasets.<name>.tiles`` (slide datasets).

    Attributes:
        mpp: microns per pixel to tile at (nearest pyramid level).
        tile: tile side in pixels of that level.
        stride: grid step in pixels (default ``tile``: no overlap).
        min_tissue: minimum tissue fraction of a candidate tile.
        per_class: tiles drawn per class (a tile counts for every class it contains).
        tissue_method: see :func:`medseg.wsi.tissue.tissue_mask_from_rgb`.
        seed: sampling seed (combined with the slide id).
    """

    mpp: float = 1.0
    tile: int = 256
    stride: int | None = None
    min_tissue: float = 0.25
    per_class: int = 16
    tissue_method: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.mpp > 0:
            raise ValueError(f"tiles.mpp must be > 0, got {self.mpp}")
        if self.tile < 16:
            raise ValueError(f"tiles.tile must be >= 16, got {self.tile}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"tiles.stride must be >= 1, got {self.stride}")
        if not 0 <= self.min_tissue <= 1:
            raise ValueError(f"tiles.min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.per_class < 1:
            raise ValueError(f"tiles.per_class must be >= 1, got {self.per_class}")


@dataclass(frozen=True)
class SlideStitchConfig:
    """How to tile a slide (sizes in pixels of the processed level)."""

    tile: int = 512
    overlap: float = 0.25
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 4
    level: int | None = None
    mpp: float | None = None
    tissue_method: str = "auto"
    chunk: int = 1024
    device: str | None = None
    slide_mpp: float | None = None

    def __post_init__(self) -> None:
        if self.tile < 16:
            raise ValueError(f"tile must be >= 16 pixels, got {self.tile}")
        if self.chunk < TIFF_TILE or self.chunk % TIFF_TILE:
            raise ValueError(f"chunk must be a positive multiple of {TIFF_TILE}, got {self.chunk}")
        check_overlap(self.overlap)
        check_mode(self.mode)
        check_batch_size(self.batch_size)



@dataclass(frozen=True)
class SlideEvalConfig:
    """Config key ``datasets.<name>.evaluation`` (slide datasets).

    Attributes:
        mpp: evaluation microns per pixel (nearest level of the stitched map).
        min_object_px: smallest object counted, in evaluation pixels.
        object_iou: IoU at which a predicted object detects a reference one.
    """

    mpp: float = 2.0
    min_object_px: int = 16
    object_iou: float = 0.5

    def __post_init__(self) -> None:
        if not self.mpp > 0 or self.min_object_px < 1 or not 0 <= self.object_iou <= 1:
            raise ValueError(f"evaluation: mpp must be > 0, min_object_px >= 1 and object_iou in [0, 1], got "
                             f"{self.mpp}, {self.min_object_px}, {self.object_iou}")


def split_of(row: dict) -> str:
    """``train``, ``val`` (fold 0's validation with one fold), ``test`` or ``predict`` (unannotated)."""
    if row["split"] in ("test", "predict"):
        return row["split"]
    return "val" if row.get("fold") not in (None, "") and int(row["fold"]) == 0 else "train"
