"""The slide case sheet (``slides.tsv``): one row per slide with its files, split, mpp and problem.

Splits are by slide (:func:`medseg.cohort.splits.assign_splits` on slide ids), never by tile, so
no slide contributes to two splits. As for MRI cases, a slide's problem (unreadable file, no
microns-per-pixel, no tissue on its thumbnail, invalid annotations) goes in its ``problem`` column instead of
stopping the sheet; the workflow leaves such slides out and lists them with the reason. An annotation
file without polygons, and two slide files of one id (``s1.svs`` beside ``s1.tif``), are problems
too; a polygon crossing the slide's edge is clipped to it with a warning.
"""
from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from medseg.cohort.splits import SplitConfig, assign_splits
from medseg.config import with_options
from medseg.io import InputError, atomic_path
from medseg.wsi.annotations import check_annotations
from medseg.wsi.config import SLIDE_SPLIT, SLIDE_SUFFIXES
from medseg.wsi.slide import base_mpp, open_slide
from medseg.wsi.tissue import require_tissue, tissue_mask

log = logging.getLogger(__name__)

COLUMNS = ("case_id", "split", "fold", "slide", "annotation", "mpp", "width", "height", "problem")
NO_MPP = ("has no microns-per-pixel metadata: set datasets.<name>.mpp (microns per level-0 pixel) in the "
          "config, or write it into the file (TIFF XResolution/YResolution in pixels per centimetre)")


def slide_mpp(slide_path: str | Path, mpp_override: float | None = None) -> float:
    """Level-0 microns per pixel: ``mpp_override`` if given, else the slide's metadata.

    Raises:
        ValueError: the slide has none and no override is given (the message says how to set it).
    """
    if mpp_override is not None:
        if not mpp_override > 0:
            raise ValueError(f"datasets.<name>.mpp must be > 0, got {mpp_override}")
        return float(mpp_override)
    with open_slide(slide_path) as slide:
        mpp = base_mpp(slide)
    if mpp is None:
        raise ValueError(f"slide {slide_path} {NO_MPP}")
    return mpp


def inspect_slide(slide_path: Path, annotation: Path | None, classes: Sequence[str],
                  mpp_override: float | None = None, ignore: Sequence[str] = ()) -> dict:
    """Sheet row of one slide (without split); problems are recorded, not raised. ``annotation`` None:
    an unannotated slide (split ``predict``), only the slide is checked."""
    row = {"case_id": slide_path.stem, "slide": str(slide_path), "annotation": str(annotation or ""),
           "mpp": "", "width": "", "height": "", "problem": ""}
    try:
        with open_slide(slide_path) as slide:
            width, height = slide.dimensions
            require_tissue(tissue_mask(slide, max_side=512)[0], slide_path)
        row.update(width=int(width), height=int(height))
        row["mpp"] = slide_mpp(slide_path, mpp_override)
        if annotation is not None:
            check_annotations(annotation, classes, (int(height), int(width)), ignore)
    except (InputError, ValueError) as e:
        row["problem"] = str(e)
        log.warning("slide %s: %s", slide_path.name, e)
    return row


def build_slide_sheet(slide_dir: str | Path, annotation_dir: str | Path, classes: Sequence[str], *,
                      split: SplitConfig | None = None, mpp_override: float | None = None, ignore: Sequence[str] = (),
                      **options) -> list[dict]:
    """One row per slide file in ``slide_dir`` (annotation ``<annotation_dir>/<id>.geojson``).

    Split columns follow the MRI case sheet: ``split`` is ``train`` or ``test``; within train,
    ``fold`` is the fold the slide validates (``None``: trains every fold). A slide without an
    annotation file is ``predict``: predicted, not scored (splits are drawn among the others).

    Args:
        slide_dir, annotation_dir: folders of the slides and of their GeoJSON annotations.
        classes: class names of the annotations, in channel order.
        split: test and validation shares, folds and seed (:class:`~medseg.cohort.splits.SplitConfig`;
            default: the slide datasets' :data:`~medseg.wsi.config.SLIDE_SPLIT`).
        mpp_override: level-0 microns per pixel of slides without the metadata.
        ignore: annotation class names that are skipped (neither checked nor an error).
        **options: fields of :class:`~medseg.cohort.splits.SplitConfig` overriding ``split``
            (``test_fraction``, ``val_fraction``, ``n_folds``, ``seed``); an unknown name raises
            ``ValueError`` listing the valid ones.

    Raises:
        InputError: no slide files in ``slide_dir``.
    """
    split = with_options(SLIDE_SPLIT if split is None else split, options, "build_slide_sheet")
    slide_dir, annotation_dir = Path(slide_dir), Path(annotation_dir)
    paths = sorted(p for p in slide_dir.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES) if slide_dir.is_dir() else []
    if not paths:
        raise InputError(f"no slides ({', '.join(SLIDE_SUFFIXES)}) in {slide_dir}")
    annotations = {p.stem: annotation_dir / f"{p.stem}.geojson" for p in paths}
    annotations = {s: a if a.exists() else None for s, a in annotations.items()}
    rows = [inspect_slide(p, annotations[p.stem], classes, mpp_override, ignore) for p in paths]
    for p, r in zip(paths, rows):  # one slide id, two files: a problem of both, never a choice
        same = [q.name for q in paths if q.stem.lower() == p.stem.lower()]
        if len(same) > 1:
            r["problem"] = (f"slide {p.name}: {' and '.join(same)} in {slide_dir} could be the same slide (names equal "
                            "up to letter case and file type): keep one, delete or rename the other")
    annotated = list(dict.fromkeys(r["case_id"] for r in rows if annotations[r["case_id"]] is not None))
    splits = assign_splits(annotated, split.test_fraction, split.n_folds, split.val_fraction,
                           split.seed) if annotated else {}
    for r in rows:
        r.update(splits.get(r["case_id"], {"split": "predict", "fold": None}))
    return rows


def write_sheet(rows: Sequence[dict], path: str | Path) -> None:
    """Write rows as TSV with :data:`COLUMNS`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, delimiter="\t", extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in COLUMNS})


def read_sheet(path: str | Path) -> list[dict]:
    """Rows of a sheet written by :func:`write_sheet` (``fold`` int or None, ``mpp`` float or None)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for r in rows:
        r["fold"] = int(r["fold"]) if r["fold"] else None
        r["mpp"] = float(r["mpp"]) if r["mpp"] else None
    return rows


def write_slide_sheet(listing, recipe, split: dict | None, task, out_sheet: str, out_task: str) -> list[dict]:
    """The workflow's slide-sheet job: every slide of ``listing`` inspected (``recipe``: classes,
    ignored classes, level-0 mpp), split by ``recipe.split`` (``split``: overrides of its fields, e.g.
    the config's ``datasets.<name>.split``, which the plan already resolved into it), written with the
    dataset's ``task``."""
    from medseg.io import write_json

    split = with_options(recipe.split, split or {}, "datasets.<name>.split")
    rows = build_slide_sheet(listing.slide_dir, listing.annotation_dir, recipe.classes, split=split,
                             mpp_override=recipe.mpp, ignore=recipe.ignore_classes)
    write_sheet(rows, out_sheet)
    write_json(task.to_dict(), out_task)
    return rows
