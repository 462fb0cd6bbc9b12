"""Find BraTS cases on disk (2021 and 2023+ layouts) by listing folders only: no image reads.

2021: ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``
2023: ``<root>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``
Modalities are always named t1, t1ce, t2, flair inside medseg.
"""
from __future__ import annotations

import re
from pathlib import Path

from medseg.io import InputError

LAYOUTS: dict[str, dict[str, str]] = {
    "brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_case_id(case: str) -> str:
    """Reject ids that could escape a folder or break wildcards (``/``, ``..``, spaces)."""
    if not CASE_ID.match(case) or ".." in case:
        raise InputError(f"case id {case!r} is not allowed: use letters, digits, '_', '-', '.' (no '/', '..' or spaces); "
                         "rename the case folder")
    return case


def case_file(root: str | Path, case: str, key: str, layout: str) -> Path:
    """Path of modality or ``seg`` ``key`` of ``case`` under ``root`` in ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    return Path(root) / case / f"{case}{LAYOUTS[layout][key]}.nii.gz"


def detect_layout(root: str | Path) -> str:
    """Return the layout of the first case folder under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist; set datasets.<name>.source to a BraTS folder or 'demo'")
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for layout in LAYOUTS:
            if case_file(root, d.name, "t1ce", layout).exists():
                return layout
    raise InputError(f"no BraTS case folders under {root}: expected <case>/<case>_t1ce.nii.gz (2021) "
                     "or <case>/<case>-t1c.nii.gz (2023+)")


def list_cases(root: str | Path, layout: str | None = None) -> list[str]:
    """Sorted case ids: every sub-folder holding the layout's reference image (t1ce)."""
    root = Path(root)
    layout = layout or detect_layout(root)
    cases = [d.name for d in sorted(root.iterdir()) if d.is_dir() and case_file(root, d.name, "t1ce", layout).exists()]
    for c in cases:
        check_case_id(c)
    return cases
