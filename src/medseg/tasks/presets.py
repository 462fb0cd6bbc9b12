"""Task presets: BraTS 2018-2021 and 2023+ (one label convention each), and the convention guard.

2018-2021: 1 NCR (necrotic core), 2 ED (oedema), 4 ET (enhancing tumour).
2023+:     1 NETC, 2 SNFH, 3 ET (named NCR, ED, ET here, as in earlier editions).
Regions: WT = all tumour labels, TC = core (NCR + ET), ET = enhancing.

A BraTS dataset has one convention: configured, or detected from all its label maps together
(:func:`dataset_convention`); a case whose labels fit neither, or only the other one, is a
problem of that case. A case holding only labels 1 and 2 fits both and takes the dataset's.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from medseg.tasks.definition import LabelError, Task

CONVENTIONS: dict[str, dict[str, int]] = {
    "2021": {"NCR": 1, "ED": 2, "ET": 4},
    "2023": {"NCR": 1, "ED": 2, "ET": 3},
}
BRATS_REGIONS: dict[str, tuple[str, ...]] = {"WT": ("NCR", "ED", "ET"), "TC": ("NCR", "ET"), "ET": ("ET",)}
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
PRESETS = ("brats2021", "brats2023")


def brats_task(name: str, convention: str, modalities: Iterable[str] = BRATS_MODALITIES, recipe: str = "brain") -> Task:
    """The BraTS task in ``convention`` (``"2021"`` or ``"2023"``)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"datasets.{name}.convention must be one of {sorted(CONVENTIONS)} or auto, got {convention!r}")
    return Task(name, tuple(modalities), dict(CONVENTIONS[convention]), dict(BRATS_REGIONS), f"brats{convention}", recipe)


def detect_convention(values: Iterable[int], where: str = "") -> str | None:
    """``"2021"`` or ``"2023"`` from the label values present; ``None`` if they fit both (e.g. {1, 2}).

    Raises:
        LabelError: values that fit neither convention (3 and 4 together, or 5 ...).
    """
    vals = {int(v) for v in values} - {0}
    if not vals <= {1, 2, 3, 4} or {3, 4} <= vals:
        raise LabelError(f"{where}label values {sorted(vals)} fit neither BraTS 2021 (1, 2, 4) nor 2023 (1, 2, 3)")
    if 4 in vals:
        return "2021"
    if 3 in vals:
        return "2023"
    return None


def dataset_convention(detected: Mapping[str, str | None], configured: str = "auto", layout_hint: str | None = None) -> str:
    """The one convention of a dataset from each case's detected one (``None``: fits both).

    ``configured`` wins when not ``auto``; else the majority of the cases that decide, then the
    layout's own edition (``layout_hint``), then 2021.
    """
    if configured != "auto":
        if configured not in CONVENTIONS:
            raise ValueError(f"convention must be auto or one of {sorted(CONVENTIONS)}, got {configured!r}")
        return configured
    votes = {c: sum(v == c for v in detected.values()) for c in CONVENTIONS}
    if votes["2021"] != votes["2023"]:
        return max(votes, key=votes.get)
    return layout_hint if layout_hint in CONVENTIONS else "2021"


def convention_mismatch(values: Iterable[int], convention: str, where: str = "") -> str | None:
    """Why a case's label values do not fit the dataset's ``convention`` (``None`` if they do)."""
    try:
        detected = detect_convention(values, where)
    except LabelError as e:
        return str(e)
    if detected is not None and detected != convention:
        return (f"{where}label values {sorted({int(v) for v in values} - {0})} are BraTS {detected} labels but the "
                f"dataset is BraTS {convention}; convert the label map or put the case in a dataset of its own")
    return None
