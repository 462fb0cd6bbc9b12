"""The PROMISE12 layout (MICCAI 2012 prostate MR segmentation challenge): flat folders of MetaImage files.

Training cases are ``CaseNN.mhd`` (header; voxels in ``CaseNN.raw``) with ``CaseNN_segmentation.mhd``
(1 = prostate); test cases have no segmentation (unlabelled: predicted, not scored). The
challenge's archives unpack into several flat folders (``TrainingData_Part1`` .. ``Part3``,
``TestData``), so the folder and its direct sub-folders are read. The test cases reuse the
training ids (``Case00`` ..): an id found in two folders becomes ``<folder>_<id>`` in each.
Single-file ``.mha`` images are read too.

One modality, T2-weighted (``t2``); labels ``{prostate: 1}``. Discovery reads only folder
listings and each header's ``ElementDataFile`` line: an ``.mhd`` whose data file is missing is
a problem naming both files.
"""
from __future__ import annotations

import re
from pathlib import Path

from medseg.io import InputError
from medseg.tasks.layouts.base import CaseFiles, Discovery, check_case_id, hidden

MODALITIES = ("t2",)
LABELS = {"prostate": 1}
SEG_SUFFIX = "_segmentation"
EXTENSIONS = (".mhd", ".mha")
EXPECTED = "CaseNN.mhd + CaseNN.raw with CaseNN_segmentation.mhd + .raw (PROMISE12, MetaImage)"
_DATA_FILE = re.compile(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", re.M)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not hidden(p.name) and p.suffix.lower() in EXTENSIONS)


def _folders(root: Path) -> list[Path]:
    """The root and its direct sub-folders (the challenge's archives unpack one folder each)."""
    return [root, *sorted(p for p in root.iterdir() if p.is_dir() and not hidden(p.name))]


def looks_like(root: Path) -> bool:
    """A MetaImage label map ``*_segmentation.mhd`` or a ``CaseNN.mhd`` in the folder or a sub-folder."""
    return any(p.stem.endswith(SEG_SUFFIX) or re.fullmatch(r"Case\d+", p.stem)
               for folder in _folders(root) for p in _images(folder))


def data_file(header: Path) -> Path | None:
    """The voxel file a ``.mhd`` header names (None: voxels inside the header or a file list)."""
    if header.suffix.lower() != ".mhd":
        return None
    with open(header, errors="replace") as f:
        m = _DATA_FILE.search(f.read(8192))
    if m is None or m[1] in ("LOCAL", "LIST") or "%" in m[1] or " " in m[1]:
        return None
    return header.parent / m[1]


def _missing_data(path: Path) -> str | None:
    target = data_file(path)
    if target is not None and not target.exists():
        return f"{path.name} names its voxel file {target.name} (ElementDataFile), which is not in {path.parent}"
    return None


def _scan(folder: Path) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """(id -> image, id -> label map, files of no case) of one flat folder."""
    images, segs, used = {}, {}, set()
    for p in _images(folder):
        stem = p.stem
        if stem.endswith(SEG_SUFFIX):
            segs[stem[: -len(SEG_SUFFIX)]] = p
        else:
            images[stem] = p
        used.add(p.name)
        if (target := data_file(p)) is not None:
            used.add(target.name)
    other = [p.name for p in sorted(folder.iterdir()) if p.is_file() and not hidden(p.name) and p.name not in used]
    return images, segs, other


def discover(root: str | Path) -> Discovery:
    """Every PROMISE12 case in ``root`` and its direct sub-folders; unusable ones with their reason."""
    root = Path(root)
    found: list[tuple[Path, str, Path | None, Path | None]] = []  # folder, id, image, label map
    ignored: list[str] = []
    for folder in _folders(root):
        images, segs, other = _scan(folder)
        rel = "" if folder == root else f"{folder.name}/"
        ignored += [f"{rel}{name}" for name in other]
        found += [(folder, case, images.get(case), segs.get(case)) for case in sorted(set(images) | set(segs))]
    counts: dict[str, int] = {}
    for _, case, _, _ in found:
        counts[case] = counts.get(case, 0) + 1
    cases: dict[str, CaseFiles] = {}
    problems: dict[str, str] = {}
    for folder, case, image, seg in found:
        cid = f"{folder.name}_{case}" if counts[case] > 1 else case
        try:
            check_case_id(cid)
        except InputError as e:
            problems[cid] = str(e)
            continue
        if image is None:
            problems[cid] = (f"case {cid}: label map {seg.name} has no image {case}.mhd in {folder}: expected "
                             f"{EXPECTED}")
            continue
        why = _missing_data(image) or (_missing_data(seg) if seg is not None else None)
        if why:
            problems[cid] = f"case {cid}: {why}; copy the file again"
            continue
        cases[cid] = CaseFiles(images={"t2": str(image)}, seg=str(seg) if seg is not None else None)
    return Discovery("promise12", str(root), dict(sorted(cases.items())), problems, tuple(ignored), MODALITIES,
                     dict(LABELS), {})
