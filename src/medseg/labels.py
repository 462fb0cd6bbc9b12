"""BraTS label conventions and the WT/TC/ET regions built from them.

2018-2021: 1 NCR (necrotic core), 2 ED (oedema), 4 ET (enhancing tumour).
2023+:     1 NETC, 2 SNFH, 3 ET.
Regions: WT = all tumour labels, TC = core (NCR + ET), ET = enhancing.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

CONVENTIONS: dict[str, dict[str, int]] = {
    "2021": {"NCR": 1, "ED": 2, "ET": 4},
    "2023": {"NCR": 1, "ED": 2, "ET": 3},
}
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")


class ConventionError(ValueError):
    """Label values do not fit the declared or detected BraTS convention."""


def check_convention(convention: str) -> dict[str, int]:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got {convention!r}")
    return CONVENTIONS[convention]


def detect_convention(values: Iterable[int]) -> str | None:
    """Return ``"2021"`` or ``"2023"`` from the label values present, ``None`` if undecidable.

    Raises:
        ConventionError: values that belong to neither convention (e.g. 3 and 4 together, or 5).
    """
    vals = {int(v) for v in values} - {0}
    if not vals <= {1, 2, 3, 4} or {3, 4} <= vals:
        raise ConventionError(f"label values {sorted(vals)} fit neither BraTS 2021 (1,2,4) nor 2023 (1,2,3)")
    if 4 in vals:
        return "2021"
    if 3 in vals:
        return "2023"
    return None


def validate_labels(labels: np.ndarray, convention: str, where: str = "") -> None:
    """Raise :class:`ConventionError` if ``labels`` holds values outside ``convention``."""
    allowed = {0, *check_convention(convention).values()}
    present = set(np.unique(labels).tolist())
    bad = present - allowed
    if bad:
        other = "2023" if convention == "2021" else "2021"
        hint = f" (they look like BraTS {other}; set the dataset's convention to {other})" if present - {0} <= {0, *CONVENTIONS[other].values()} else ""
        raise ConventionError(f"{where}label values {sorted(bad)} are not in BraTS {convention} {sorted(allowed)}{hint}")


def labels_to_regions(labels: np.ndarray, convention: str) -> np.ndarray:
    """Map a label map to stacked binary regions ``(3, *spatial)`` in order WT, TC, ET."""
    c = check_convention(convention)
    et = labels == c["ET"]
    tc = et | (labels == c["NCR"])
    wt = tc | (labels == c["ED"])
    return np.stack([wt, tc, et]).astype(np.uint8)


def regions_to_labels(regions: np.ndarray, convention: str) -> np.ndarray:
    """Inverse of :func:`labels_to_regions` for binary ``(3, *spatial)`` region masks.

    Nesting is enforced (ET inside TC inside WT): ET wins, then NCR for TC, then ED for WT.
    """
    c = check_convention(convention)
    wt, tc, et = (regions[i].astype(bool) for i in range(3))
    out = np.zeros(regions.shape[1:], dtype=np.uint8)
    out[wt] = c["ED"]
    out[tc] = c["NCR"]
    out[et] = c["ET"]
    return out
