"""Figures for an evaluation report: metric box plots and best/median/worst error montages.

matplotlib is imported inside the functions with the non-interactive Agg backend, so
importing this module is cheap and works without a display.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.io import atomic_path, read_labels

log = logging.getLogger(__name__)

BOXPLOT_METRICS = ("dice", "hd95", "assd", "nsd")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out_png: str | Path, rect: tuple[float, float, float, float] | None = None) -> None:
    fig.tight_layout(rect=rect)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    log.info("wrote %s", out_png)


def plot_boxplots(case_results: Sequence[dict], out_png: str | Path, metrics: Sequence[str] = BOXPLOT_METRICS) -> None:
    """One panel per metric, one box per region (every case drawn as a point too).

    Args:
        case_results: per-case dicts from :func:`~medseg.evaluate.case.evaluate_case`.
        out_png: output PNG, written atomically.
        metrics: metric keys of the ``regions`` section to plot.
    """
    if not case_results:
        raise ValueError("case_results is empty; nothing to plot")
    plt = _pyplot()
    section = scored_section(case_results[0])
    regions = list(case_results[0][section])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        data = [[res[section][r][metric] for res in case_results] for r in regions]
        ax.boxplot(data, showfliers=False)
        for i, vals in enumerate(data, start=1):
            ax.scatter(np.full(len(vals), i) + np.linspace(-0.08, 0.08, len(vals)), vals, s=8, alpha=0.6, color="k")
        ax.set_xticks(range(1, len(regions) + 1), regions)
        unit = " (mm)" if metric in ("hd95", "assd") else ""
        ax.set_title(f"{metric}{unit}, n={len(case_results)}")
    _save(plt, fig, out_png)


def scored_section(result: dict) -> str:
    """``regions`` when the task has regions (BraTS: WT, TC, ET), else ``labels``."""
    return "regions" if result.get("regions") else "labels"


def select_montage_cases(case_results: Sequence[dict], region: str | None = None,
                         metric: str = "dice") -> list[tuple[str, str, float]]:
    """Pick the best, median and worst cases by ``region`` ``metric`` (higher is better; default:
    the first region, or the first label of a task without regions).

    Returns:
        ``[("best", case, value), ("median", case, value), ("worst", case, value)]``.
    """
    if not case_results:
        raise ValueError("case_results is empty; no case to show")
    section = scored_section(case_results[0])
    region = region or next(iter(case_results[0][section]))
    ranked = sorted(case_results, key=lambda r: (-r[section][region][metric], r["case"]))
    picks = [("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])]
    return [(tag, r["case"], float(r[section][region][metric])) for tag, r in picks]


# Okabe & Ito (2008) colour-blind-safe palette (black left out: it is the background)
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
#: the montage's error overlay: voxel class -> (colour, opacity). Missed and extra are Okabe-Ito blue and
#: vermillion (told apart with every colour-vision deficiency); agreement is a yellow veil the scan shows through
ERROR_STYLE = {"agreed": ("#F0E442", 0.45), "missed": ("#0072B2", 0.95), "extra": ("#D55E00", 0.95)}
ERROR_LABELS = {"agreed": "agreed", "missed": "missed (reference only)", "extra": "extra (prediction only)"}
_MODALITY_SUFFIX = ("t1ce", "t1c", "t1gd", "t1n", "t1", "t2f", "t2w", "t2", "flair", "ct", "pd", "dwi", "adc")


def modality_name(image_path: str | Path | tuple) -> str:
    """A short name for the displayed scan: the BraTS/nnU-Net suffix of its file name (``_t1ce``,
    ``-t2f``, ``_0000``) or, for a 4-D file, ``channel N``."""
    if isinstance(image_path, tuple):
        path, channel = image_path
        if channel is not None:
            return f"{Path(path).name.split('.')[0]} channel {channel}"
        image_path = path
    stem = Path(image_path).name.split(".")[0]
    tail = stem.replace("-", "_").rsplit("_", 1)[-1].lower()
    return tail if tail in _MODALITY_SUFFIX or tail.isdigit() or stem == tail else stem


def axial_view(image: sitk.Image, z: int | None = None) -> tuple[np.ndarray, float, int]:
    """The axial slice ``z`` of ``image`` as displayed: reoriented to LPS axes, so that in
    ``imshow`` (row 0 at the top) anterior is up and the patient's right is on the left of the
    panel (radiological convention), whatever the file's orientation.

    Returns:
        ``(slice (ny, nx), imshow aspect (row mm / column mm), z)``; ``z`` defaults to the middle.
    """
    from medseg.preprocess.qc import to_canonical

    canon = to_canonical(image)
    arr = sitk.GetArrayViewFromImage(canon)
    z = arr.shape[0] // 2 if z is None else z
    sx, sy, _ = canon.GetSpacing()
    return np.array(arr[z]), sy / sx, z


def montage_structures(labels: Sequence[np.ndarray], structures: Mapping[str, Sequence[int]] | None = None,
                       label_names: Mapping[int, str] | None = None) -> dict[str, np.ndarray]:
    """name -> label values, one montage row each: ``structures`` (e.g. BraTS regions WT, TC, ET, nested:
    each in its own row, so none hides another), else each label value present in any of ``labels``,
    named by ``label_names`` (value -> name) or ``label N``."""
    if structures:
        return {name: np.asarray(values) for name, values in structures.items()}
    names = dict(label_names or {})
    present = np.unique(np.concatenate([np.unique(a) for a in labels])) if labels else np.array([], int)
    return {names.get(int(v), f"label {int(v)}"): np.asarray([int(v)]) for v in present if v != 0}


def error_masks(ref: np.ndarray, pred: np.ndarray, values: Sequence[int]) -> dict[str, np.ndarray]:
    """Where a structure's prediction and reference agree and differ, voxel by voxel.

    Args:
        ref, pred: label maps of one shape (any dimension).
        values: the label values the structure unites (e.g. BraTS TC: NCR and ET).

    Returns:
        ``{"agreed": R & P, "missed": R & ~P, "extra": P & ~R}`` boolean masks (R, P: the structure in
        the reference and the prediction); disjoint, and their union is R | P.
    """
    r, p = np.isin(ref, values), np.isin(pred, values)
    return {"agreed": r & p, "missed": r & ~p, "extra": p & ~r}


def error_rgba(masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """The error overlay of :func:`error_masks`: ``(..., 4)`` float RGBA in [0, 1], each voxel class in its
    :data:`ERROR_STYLE` colour and opacity, transparent elsewhere."""
    from matplotlib.colors import to_rgb

    shape = next(iter(masks.values())).shape
    rgba = np.zeros((*shape, 4), np.float32)
    for kind, mask in masks.items():
        colour, alpha = ERROR_STYLE[kind]
        rgba[mask] = (*to_rgb(colour), alpha)
    return rgba


def _read_case(case_id: str, image_path: str | Path | tuple, ref_path: str | Path,
               pred_path: str | Path) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """The case's scan, and its reference and predicted label maps ``(z, y, x)`` in the canonical orientation.

    Raises:
        ValueError: the three files differ in size.
    """
    from medseg.cohort.sources import read_source
    from medseg.preprocess.qc import to_canonical

    path, channel = image_path if isinstance(image_path, tuple) else (image_path, None)
    image = read_source(path, case_id, channel)
    ref_img, pred_img = read_labels(ref_path, case=case_id), read_labels(pred_path, case=case_id)
    if not (image.GetSize() == ref_img.GetSize() == pred_img.GetSize()):
        raise ValueError(f"case {case_id!r}: image {image.GetSize()}, reference {ref_img.GetSize()} and prediction "
                         f"{pred_img.GetSize()} differ in size")
    return image, sitk.GetArrayFromImage(to_canonical(ref_img)), sitk.GetArrayFromImage(to_canonical(pred_img))


def _orientation_letters(ax, shape: tuple[int, int]) -> None:
    """Anterior, posterior, right and left at the edges of a radiological axial panel of ``shape``."""
    h, w = shape
    style = {"color": "yellow", "fontsize": 8, "ha": "center", "va": "center", "fontweight": "bold"}
    for letter, (x, y) in zip("APRL", ((w / 2, 0.05 * h), (w / 2, 0.95 * h), (0.05 * w, h / 2), (0.95 * w, h / 2))):
        ax.text(x - 0.5, y - 0.5, letter, **style)


def _montage_legend(fig, ncol: int) -> None:
    """The three voxel classes of the error overlay, under the panels, in ``ncol`` columns."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=ERROR_STYLE[k][0], alpha=ERROR_STYLE[k][1], edgecolor="0.4", label=ERROR_LABELS[k])
               for k in ERROR_STYLE]
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)


def _dice_text(name: str, ref: np.ndarray, pred: np.ndarray, values: np.ndarray, given: tuple[str, float]) -> str:
    """``WT Dice 0.912``: the case's (3-D) Dice of structure ``name``; ``given`` (structure, Dice) is the
    evaluation's value for that structure (the one the cases were ranked by)."""
    from medseg.evaluate.metrics import dice

    r, p = np.isin(ref, values), np.isin(pred, values)
    if not r.any() and not p.any():
        return f"{name}: absent in both"
    value = given[1] if name == given[0] else dice(r, p)
    return f"{name} Dice {value:.3f}"


def lesion_window(mask: np.ndarray, zoom: float = 2.0, pad: int = 6) -> tuple[slice, slice]:
    """The rows and columns a montage panel shows: a square around ``mask``'s bounding box, ``zoom``
    times its longer side plus ``pad`` voxels (clipped to the slice), so that errors one voxel wide
    stay visible; the whole slice when ``mask`` is empty."""
    if not mask.any():
        return slice(0, mask.shape[0]), slice(0, mask.shape[1])
    ys, xs = np.nonzero(mask)
    half = int(np.ceil(zoom * max(np.ptp(ys), np.ptp(xs)) / 2)) + pad
    window = []
    for centre, n in (((ys.min() + ys.max()) // 2, mask.shape[0]), ((xs.min() + xs.max()) // 2, mask.shape[1])):
        lo = int(np.clip(centre - half, 0, max(n - 2 * half - 1, 0)))
        window.append(slice(lo, min(n, lo + 2 * half + 1)))
    return window[0], window[1]


def _draw_panel(ax, view: np.ndarray, aspect: float, masks: Mapping[str, np.ndarray], title: str) -> None:
    """One panel: the scan (1-99 % window), the error overlay, orientation letters, the title."""
    lo, hi = np.percentile(view, [1, 99])
    ax.imshow(view, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect, interpolation="nearest")
    ax.imshow(error_rgba(masks), aspect=aspect, interpolation="nearest")
    _orientation_letters(ax, view.shape)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def overlay_montage(cases: Sequence[tuple[str, str | Path | tuple, str | Path, str | Path, float]], out_png: str | Path,
                    structure: str = "foreground", *, modality: str | None = None,
                    structures: Mapping[str, Sequence[int]] | None = None,
                    label_names: Mapping[int, str] | None = None) -> None:
    """Where prediction and reference differ: one column per case, one row per structure.

    Each panel shows the scan with the structure's error overlay (:func:`error_masks`, colours
    :data:`ERROR_STYLE`): voxels missed (reference, not predicted) in blue, extra (predicted, not
    reference) in vermillion, agreed under a yellow veil. Nested structures (BraTS WT > TC > ET) each
    get their own row, so none hides another. Every panel is in one display convention whatever the
    file's orientation (LSA, RAS, LPS ...): axial, radiological (anterior up, the patient's right on
    the panel's left; see :func:`axial_view`), with orientation letters, voxel anisotropy honoured.
    A column shows the axial slice with the largest reference foreground (any label > 0; the
    prediction's if the reference is empty), zoomed on the lesion (:func:`lesion_window`); its titles
    give the case's 3-D Dice per structure.

    Args:
        cases: ``(case_id, image_path, ref_path, pred_path, dice)`` tuples, e.g. best/median/worst;
            ``image_path`` may be ``(path, channel)`` for a 4-D source file.
        out_png: output PNG, written atomically.
        structure: what ``dice`` is of (the structure the cases were ranked by).
        modality: name of the displayed scan (default: from its file name, :func:`modality_name`).
        structures: structure name -> label values it unites (e.g. BraTS ``{"WT": [1, 2, 4], ...}``);
            default: each label value present, named by ``label_names`` (value -> name) or ``label N``.
    """
    if not cases:
        raise ValueError("cases is empty; nothing to draw")
    plt = _pyplot()
    read = [_read_case(c[0], c[1], c[2], c[3]) for c in cases]
    rows = montage_structures([a for _, ref, pred in read for a in (ref, pred)], structures, label_names)
    n_rows = max(len(rows), 1)
    ncol = min(len(ERROR_STYLE), len(cases))  # legend columns: one row under three panels or more
    bottom = 0.1 + 0.22 * -(-len(ERROR_STYLE) // ncol)  # inches for the legend
    height = 3.1 * n_rows + 0.5 + bottom
    fig, axes = plt.subplots(n_rows, len(cases), figsize=(3.4 * len(cases), height), squeeze=False)
    for col, ((case_id, image_path, _, _, dsc), (image, ref, pred)) in enumerate(zip(cases, read)):
        z = int(np.argmax(((ref if ref.any() else pred) > 0).sum(axis=(1, 2))))
        view, aspect, _ = axial_view(image, z)
        win = lesion_window((ref[z] > 0) | (pred[z] > 0))
        head = f"{case_id}\n{modality or modality_name(image_path)}, axial slice {z}"
        if structure not in rows:
            head += f"\n{structure} Dice {dsc:.3f}"
        for row, (name, values) in enumerate(rows.items() or [("none", np.array([]))]):
            text = _dice_text(name, ref, pred, values, (structure, dsc)) if len(values) else "no structure"
            _draw_panel(axes[row, col], view[win], aspect, error_masks(ref[z][win], pred[z][win], values),
                        f"{head}\n{text}" if row == 0 else text)
    _montage_legend(fig, ncol)
    fig.suptitle("axial, radiological convention" + ("\n" if len(cases) < 3 else " ")
                 + "(patient's right on the left, anterior up)", fontsize=9)
    _save(plt, fig, out_png, rect=(0, bottom / height, 1, 1 - 0.1 / height))
