"""What the workflow knows about a slide dataset before any job runs: slide ids, files and splits.

Slide ids come from the folder listing (or the demo's count), splits from
:func:`medseg.cohort.splits.assign_splits` on those ids (the same call the slide sheet makes),
so the DAG is known at parse time; slides the sheet finds unusable are dropped once it exists.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.cohort.splits import assign_splits
from medseg.wsi.config import SLIDE_SPLIT, SLIDE_SUFFIXES, split_of





@dataclass(frozen=True)
class SlideListing:
    """One slide dataset (``datasets.<name>``).

    Attributes:
        name: dataset key.
        slide_dir, annotation_dir: where slides and ``<id>.geojson`` are (or will be, for the demo).
        slides: slide id -> slide file.
        splits: slide id -> ``train`` / ``val`` / ``test``, or ``predict`` for a slide without an
            annotation file (predicted, not scored, never trained on).
        classes: class names.
    """

    name: str
    slide_dir: str
    annotation_dir: str
    slides: Mapping[str, str]
    splits: Mapping[str, str]
    classes: tuple[str, ...]
    is_demo: bool = False
    problems: Mapping[str, str] = field(default_factory=dict)

    def ids(self, split: str) -> list[str]:
        return sorted(s for s, sp in self.splits.items() if sp == split and s not in self.problems)

    def annotation(self, slide: str) -> str:
        return str(Path(self.annotation_dir) / f"{slide}.geojson")

    def without(self, problems: Mapping[str, str]) -> SlideListing:
        return SlideListing(self.name, self.slide_dir, self.annotation_dir, self.slides, self.splits, self.classes,
                         self.is_demo, dict(problems))


def list_slides(name: str, cfg: Mapping[str, Any], results: str = "results") -> SlideListing:
    """Plan of ``datasets.<name>``; the demo lives in ``<results>/<name>/demo/``."""
    source = cfg.get("source", "demo")
    classes = tuple(cfg["classes"])
    split = dataclasses.replace(SLIDE_SPLIT, **(cfg.get("split") or {}))
    if source == "demo":
        root = Path(results) / name / "demo"
        n = int(cfg.get("demo", {}).get("n_slides", 10))
        slides = {f"slide_{i:02d}": str(root / "slides" / f"slide_{i:02d}.tif") for i in range(n)}
    else:
        root = Path(source)
        if not (root / "slides").is_dir():
            raise ValueError(f"datasets.{name}.source must be 'demo' or a folder with slides/ and "
                             f"annotations/, got {source!r}")
        slides = {p.stem: str(p) for p in sorted((root / "slides").iterdir()) if p.suffix.lower() in SLIDE_SUFFIXES}
        if not slides:
            raise ValueError(f"datasets.{name}: no slides ({', '.join(SLIDE_SUFFIXES)}) in {root / 'slides'}")
    annotated = list(slides) if source == "demo" else [s for s in slides if (root / "annotations" / f"{s}.geojson").exists()]
    splits = dict.fromkeys(sorted(set(slides) - set(annotated)), "predict")
    if annotated:
        assigned = assign_splits(annotated, split.test_fraction, 1, split.val_fraction, split.seed)
        splits.update({s: split_of(a) for s, a in assigned.items()})
    return SlideListing(name, str(root / "slides"), str(root / "annotations"), slides, splits, classes,
                     source == "demo")


def sheet_problems(sheet_tsv: str | Path) -> dict[str, str]:
    """Slide id -> problem for every unusable slide of a written sheet; {} while it does not exist."""
    try:
        st = os.stat(sheet_tsv)
    except FileNotFoundError:
        return {}
    return dict(_problems(str(sheet_tsv), st.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _problems(path: str, _mtime: int) -> tuple[tuple[str, str], ...]:
    from medseg.wsi.sheet import read_sheet

    return tuple((r["case_id"], r["problem"]) for r in read_sheet(path) if r["problem"])
