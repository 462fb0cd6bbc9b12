"""QC gates: checks that stop a preprocessing result from failing silently.

Each check returns ``None`` (passed) or a one-line reason naming the check and the numbers;
:func:`enforce` turns reasons into an :class:`~medseg.io.InputError` naming the case
(``qc_action: error``) or into warnings returned for the case's QC JSON under ``qc_warnings``
(``qc_action: warn``).

Checks (what went wrong on a real head whose atlas registration slid towards the face):

- ``registration_not_converged``: the optimiser used every iteration at the finest level and the
  normalised mutual information it reached is poor.
- ``brain_volume``: the brain mask's volume in native space (mL) is outside a plausible range.
- ``mask_at_fov_edge``: the brain mask reaches a face of the field of view where the image shows
  no head there (a mask in the air; a brain cut by the FOV keeps head under its cut face).
"""
from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from medseg.io import InputError

log = logging.getLogger(__name__)

ACTIONS = ("error", "warn")
_FACES = {"first": 0, "last": -1}


def registration_not_converged(what: str, iterations: int | None, hit_limit: bool | None, nmi: float,
                               min_nmi_at_limit: float) -> str | None:
    """Reason if a registration stopped at its iteration limit with NMI below ``min_nmi_at_limit``.

    Args:
        what: which registration (e.g. ``t1ce -> atlas``).
        iterations: iterations used at the finest level (``None``: unknown, e.g. elastix).
        hit_limit: whether that is the limit (``None``: unknown; the check passes).
        nmi: normalised mutual information (Studholme, 1..2) of the result.
        min_nmi_at_limit: the bar a registration that did not converge must still clear.
    """
    if not hit_limit or nmi >= min_nmi_at_limit:
        return None
    return (f"registration_not_converged: registration {what} stopped at its iteration limit ({iterations}) with "
            f"normalised mutual information {nmi:.3f} < min_nmi_at_limit={min_nmi_at_limit}")


def mask_volume_ml(mask: sitk.Image) -> float:
    """Volume of the nonzero voxels of ``mask`` in mL (native voxel size)."""
    return float((sitk.GetArrayViewFromImage(mask) > 0).sum() * np.prod(mask.GetSpacing()) / 1000.0)


def brain_volume(mask: sitk.Image, min_ml: float, max_ml: float, volume_ml: float | None = None) -> str | None:
    """Reason if the brain's native volume (mL) is outside ``[min_ml, max_ml]``: ``volume_ml`` when
    given (a mask on the atlas grid, its volume mapped to native space), else ``mask``'s own."""
    ml = mask_volume_ml(mask) if volume_ml is None else volume_ml
    if min_ml <= ml <= max_ml:
        return None
    return f"brain_volume: brain mask volume {ml:.0f} mL is outside the plausible range [{min_ml:g}, {max_ml:g}] mL"


def head_foreground(arr: np.ndarray) -> np.ndarray:
    """Voxels of the head (not air): above an Otsu threshold of the intensities (z, y, x)."""
    hist, edges = np.histogram(arr, bins=256)
    w0 = np.cumsum(hist).astype(float)
    mids = (edges[:-1] + edges[1:]) / 2
    m0 = np.cumsum(hist * mids)
    w1, total = w0[-1] - w0, m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (total - m0) / w1) ** 2
    return arr > edges[int(np.nanargmax(between[:-1])) + 1]


def _span(head2d: np.ndarray) -> np.ndarray:
    """Pixels with head on both sides along a row or along a column: the head's section with its dark
    interior (bone, CSF, a brain cut open by the FOV) included, the air around it not."""
    def both_sides(a: np.ndarray, axis: int) -> np.ndarray:
        fwd = np.maximum.accumulate(a, axis=axis)
        back = np.flip(np.maximum.accumulate(np.flip(a, axis), axis=axis), axis)
        return fwd & back

    return both_sides(head2d, 0) | both_sides(head2d, 1)


def mask_at_fov_edge(image: sitk.Image, mask: sitk.Image, max_mm2: float) -> str | None:
    """Reason if, on some face of the field of view, more than ``max_mm2`` of the mask lies where the
    image shows no head (outside the head's section on that face: :func:`_span` of its foreground).

    Args:
        image: the head image the mask was made from.
        mask: brain mask on ``image``'s grid.
        max_mm2: tolerated area (mm^2) of mask outside the head, per face.
    """
    arr = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    inside = sitk.GetArrayFromImage(mask) > 0
    head = head_foreground(arr)
    spacing = np.asarray(image.GetSpacing())[::-1]  # (z, y, x) mm
    worst = (0.0, "")
    for axis in range(3):
        area = float(np.prod(np.delete(spacing, axis)))
        for side, at in _FACES.items():
            m2 = np.take(inside, at, axis=axis)
            if not m2.any():
                continue
            h2 = _span(ndi.binary_dilation(ndi.binary_opening(np.take(head, at, axis=axis)), iterations=2))
            out = float((m2 & ~h2).sum()) * area
            if out > worst[0]:
                worst = (out, f"{side} face of array axis {'zyx'[axis]}")
    if worst[0] <= max_mm2:
        return None
    return (f"mask_at_fov_edge: the brain mask covers {worst[0]:.0f} mm^2 of the field of view's {worst[1]} where "
            f"the image shows no head (> {max_mm2:g} mm^2)")


def enforce(case: str, reasons: list[str | None], action: str, key: str) -> list[str]:
    """Apply ``action`` to the failed checks of ``case``.

    Args:
        case: case id (named in the error).
        reasons: results of the checks (``None`` = passed).
        action: ``error`` (raise) or ``warn`` (log and return them).
        key: the config key of the action, named in the message (e.g. ``preprocessing.skullstrip.qc_action``).

    Returns:
        The failed checks' reasons (only with ``warn``): what goes under ``qc_warnings``.

    Raises:
        InputError: some check failed and ``action == "error"``; the message names the case and the checks.
    """
    failed = [r for r in reasons if r]
    if not failed:
        return []
    if action == "error":
        raise InputError(f"case {case}: preprocessing QC failed: " + "; ".join(failed)
                         + f" (inspect the QC image; or set {key}: warn to record it and go on)")
    for r in failed:
        log.warning("case %s: QC warning: %s", case, r)
    return failed
