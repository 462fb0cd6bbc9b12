"""What every layout finds on disk: the case files, and every folder or file it could not use.

Discovery only lists folders and reads ``dataset.json``; it never opens an image, so building
the DAG of a 1,000-case dataset stays cheap. Nothing is dropped silently: a folder or file that
does not make a usable case is returned in ``problems`` (case id -> reason; these cases reach
the results JSON's ``excluded_cases``) or ``ignored`` (files that belong to no case: logged).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg.io import InputError

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".nrrd")  # matched case-insensitively
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: the :attr:`CaseFiles.meta` key whose cases are split together (one subject, several cases)
GROUP_KEY = "patient"


def check_case_id(case: str) -> str:
    """Reject ids that could escape a folder or break wildcards (``/``, ``..``, spaces)."""
    if not CASE_ID.match(case) or ".." in case:
        raise InputError(f"case id {case!r} is not allowed: use letters, digits, '_', '-', '.' (no '/', '..' or "
                         "spaces); rename the case folder or files")
    return case


def split_ext(name: str) -> tuple[str, str]:
    """``("stem", ".nii.gz")`` for a supported image file name (any case), else ``(name, "")``."""
    low = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def twins(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Image file name -> every name of ``names`` (one folder's) that could be the same image.

    Two names could be the same image when they are equal up to letter case and file type
    (``X_seg.nii`` beside ``X_seg.nii.gz``: an old uncompressed export; ``X.NII.GZ`` beside
    ``X.nii.gz``: one disk is case-insensitive). Which one is meant is never guessed: the case is
    a problem (:func:`twin_problem`). Names without a twin are left out.
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        stem, ext = split_ext(name)
        if ext:
            groups.setdefault(stem.lower(), []).append(name)
    return {n: tuple(sorted(g)) for g in groups.values() if len(g) > 1 for n in g}


def twin_problem(case: str, folder: str | Path, group: Sequence[str]) -> str:
    """The problem of a case one of whose files has twins (:func:`twins`)."""
    return (f"case {case}: {' and '.join(group)} in {folder} could be the same image (names equal up to letter case "
            "and file type): keep one, delete or rename the other")


def image_suffix(name: str) -> str:
    """The file-type suffix of ``name`` for messages (``.mgz``, ``.dcm``, ``.nii.gz``...)."""
    p = Path(name)
    return "".join(p.suffixes[-2:]) if p.suffix.lower() == ".gz" else p.suffix


def hidden(name: str) -> bool:
    """macOS resource forks (``._x``) and dot files, found in many downloaded datasets."""
    return name.startswith(".")


@dataclass(frozen=True)
class CaseFiles:
    """Source files of one case.

    Attributes:
        images: modality -> file.
        channels: modality -> channel index inside a 4-D file (MSD); absent: a 3-D file.
        seg: label map, or ``None`` for an unlabelled case (predicted, not scored).
        meta: what the layout says about the case beyond its files (ACDC: patient, phase,
            group ...), written as case-sheet columns; cases sharing a :data:`GROUP_KEY` value
            share a split and a fold (the ED and ES frames of one patient).
        series: the 4-D files' fourth axis is time (an ACDC cine), not modalities: ``channels``
            picks one frame, and the frame count is not checked against the modalities.
    """

    images: Mapping[str, str]
    channels: Mapping[str, int] = field(default_factory=dict)
    seg: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    series: bool = False

    def files(self) -> list[str]:
        """Every distinct file of the case (a 4-D file once)."""
        return list(dict.fromkeys([*self.images.values(), *([self.seg] if self.seg else [])]))


@dataclass(frozen=True)
class Discovery:
    """A dataset folder as a layout read it.

    Attributes:
        layout: registry key of the layout.
        root: the folder.
        cases: case id -> files, sorted by id.
        problems: case (or folder) name -> why it is not a usable case.
        ignored: files found that belong to no case.
        modalities, labels, regions: what the folder says it holds (``dataset.json``), or None.
        convention_hint: BraTS edition of the layout (``"2021"``/``"2023"``), for an undecided convention.
    """

    layout: str
    root: str
    cases: Mapping[str, CaseFiles]
    problems: Mapping[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    modalities: tuple[str, ...] | None = None
    labels: Mapping[str, int] | None = None
    regions: Mapping[str, tuple[str, ...]] | None = None
    convention_hint: str | None = None


def modality_key(name: str) -> str:
    """A channel name as medseg uses it in file names and wildcards (``"T2 weighted"`` -> ``t2_weighted``)."""
    key = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    if not key:
        raise InputError(f"channel name {name!r} has no letters or digits")
    return key
