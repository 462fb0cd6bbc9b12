"""The BraTS folder layouts: one folder per case, one file per modality and the label map.

2021 (2018-2021): ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``
2023+:            ``<root>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``

Modalities are named t1, t1ce, t2, flair inside medseg. Each case folder is read in its own
layout (a folder may mix them; their label conventions are then checked by the case sheet).
``.nii``, ``.mha`` and ``.nrrd`` files and upper-case extensions are read too. A case folder
without ``seg`` is an unlabelled case (BraTS validation data): predicted, not scored. A case with
two files that could be one scan (``X_seg.nii`` beside ``X_seg.nii.gz``, or two letter cases) is
a problem, never a choice (:func:`~medseg.tasks.layouts.base.twins`).
"""
from __future__ import annotations

from pathlib import Path

from medseg.io import InputError
from medseg.tasks.layouts.base import (IMAGE_EXTENSIONS, CaseFiles, Discovery, check_case_id, hidden, image_suffix,
                                      split_ext, twin_problem, twins)

SUFFIXES: dict[str, dict[str, str]] = {
    "brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
EDITION = {"brats2021": "2021", "brats2023": "2023"}


def expected_files(case: str) -> str:
    return " or ".join(f"{case}{s['t1ce']}.nii.gz" for s in SUFFIXES.values())


def looks_like(root: Path) -> bool:
    """Some sub-folder holds a file named like a BraTS scan of that folder."""
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not hidden(p.name))[:20]:
        if _match(d, d.name)[0]:
            return True
    return False


def _match(folder: Path, case: str) -> tuple[str | None, dict[str, Path], list[str]]:
    """(layout, key -> file, unused file names) of one case folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not hidden(p.name))
    best: tuple[str | None, dict[str, Path]] = (None, {})
    for layout, suffixes in SUFFIXES.items():
        found = {}
        for key, suf in suffixes.items():
            for p in files:
                stem, ext = split_ext(p.name)
                if ext and stem == f"{case}{suf}":
                    found[key] = p
        if len(found) > len(best[1]):
            best = (layout, found)
    used = set(best[1].values())
    return best[0], best[1], [p.name for p in files if p not in used]


def discover(root: str | Path, modalities: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")) -> Discovery:
    """Every case folder under ``root``; unusable folders with their reason."""
    root = Path(root)
    cases: dict[str, CaseFiles] = {}
    problems: dict[str, str] = {}
    ignored: list[str] = []
    layouts: list[str] = []
    for entry in sorted(root.iterdir()):
        if hidden(entry.name):
            continue
        if entry.is_file():
            ignored.append(entry.name)
            continue
        name = entry.name
        try:
            check_case_id(name)
        except InputError as e:
            problems[name] = str(e)
            continue
        if not any(entry.iterdir()):
            problems[name] = f"case folder {entry} is empty"
            continue
        layout, found, unused = _match(entry, name)
        same = twins(f.name for f in entry.iterdir() if not hidden(f.name))
        doubled = next((same[f.name] for f in found.values() if f.name in same), None)
        if doubled:
            problems[name] = twin_problem(name, entry, doubled)
            continue
        wrong_type = [u for u in unused if not split_ext(u)[1] and any(u.startswith(f"{name}{s}") for sx in SUFFIXES.values() for s in sx.values())]
        missing = [m for m in modalities if m not in found]
        if layout is None or missing:
            if wrong_type:
                problems[name] = (f"case {name}: {', '.join(wrong_type)}: unsupported file type "
                                  f"{sorted({image_suffix(u) for u in wrong_type})} (medseg reads {', '.join(IMAGE_EXTENSIONS)}); "
                                  "convert the files")
            elif layout is None:
                problems[name] = (f"case {name}: no BraTS scan in {entry}: expected {expected_files(name)} "
                                  f"(found {', '.join(unused[:5]) or 'no files'})")
            else:
                suf = SUFFIXES[layout]
                problems[name] = (f"case {name}: missing {', '.join(f'{m} ({name}{suf[m]}.nii.gz)' for m in missing)} "
                                  f"in {entry}")
            continue
        layouts.append(layout)
        ignored.extend(f"{name}/{u}" for u in unused)
        cases[name] = CaseFiles(images={m: str(found[m]) for m in modalities},
                                seg=str(found["seg"]) if "seg" in found else None)
    hint = max(set(layouts), key=layouts.count) if layouts else None
    return Discovery("brats", str(root), cases, problems, tuple(ignored), convention_hint=EDITION.get(hint))
