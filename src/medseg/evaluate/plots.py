"""Figures for an evaluation report: metric box plots and best/median/worst overlay montages.

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
REF_STYLE, PRED_STYLE = "solid", "dashed"
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


def _structures(ref: np.ndarray, pred: np.ndarray, structures: Mapping[str, Sequence[int]] | None,
                label_names: Mapping[int, str] | None) -> dict[str, np.ndarray]:
    """name -> label values: ``structures`` (e.g. BraTS regions), else each label value present."""
    if structures:
        return {name: np.asarray(values) for name, values in structures.items()}
    names = dict(label_names or {})
    values = sorted(int(v) for v in np.union1d(np.unique(ref), np.unique(pred)) if v != 0)
    return {names.get(v, f"label {v}"): np.asarray([v]) for v in values}


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


def _draw_outlines(ax, ref: np.ndarray, pred: np.ndarray, found: Mapping[str, np.ndarray],
                   legend: dict[str, str]) -> None:
    """Outline each structure of ``found`` on the slices ``ref``/``pred`` (reference solid, prediction
    dashed), adding its colour to ``legend`` (structure order, the same in every panel)."""
    for name in found:
        legend.setdefault(name, OKABE_ITO[len(legend) % len(OKABE_ITO)])
    # largest first, so that a small structure's outline is drawn over the edge it shares with a larger one
    for name, values in sorted(found.items(), key=lambda kv: -int(np.isin(ref, kv[1]).sum())):
        colour = legend[name]
        for labels, style in ((ref, REF_STYLE), (pred, PRED_STYLE)):
            mask = np.isin(labels, values)
            if mask.any() and not mask.all():
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linestyles=style, linewidths=1.3)


def _orientation_letters(ax, shape: tuple[int, int]) -> None:
    """Anterior, posterior, right and left at the edges of a radiological axial panel of ``shape``."""
    h, w = shape
    style = {"color": "yellow", "fontsize": 8, "ha": "center", "va": "center", "fontweight": "bold"}
    for letter, (x, y) in zip("APRL", ((w / 2, 0.05 * h), (w / 2, 0.95 * h), (0.05 * w, h / 2), (0.95 * w, h / 2))):
        ax.text(x - 0.5, y - 0.5, letter, **style)


def _montage_legend(fig, legend: Mapping[str, str]) -> None:
    """One line per structure colour, then the reference and prediction line styles, under the panels."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=2, label=n) for n, c in legend.items()]
    handles += [Line2D([], [], color="0.3", ls=REF_STYLE, label="reference"),
                Line2D([], [], color="0.3", ls=PRED_STYLE, label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)


def overlay_montage(cases: Sequence[tuple[str, str | Path | tuple, str | Path, str | Path, float]], out_png: str | Path,
                    structure: str = "foreground", *, modality: str | None = None,
                    structures: Mapping[str, Sequence[int]] | None = None,
                    label_names: Mapping[int, str] | None = None) -> None:
    """Axial slices with the outline of every structure, reference solid and prediction dashed.

    Every panel is in one display convention whatever the file's orientation (LSA, RAS, LPS ...):
    axial, radiological (anterior up, the patient's right on the panel's left; see
    :func:`axial_view`), with orientation letters, voxel anisotropy honoured. Each panel shows the
    axial slice with the largest reference foreground (any label > 0; the prediction's if the
    reference is empty). Colours are the Okabe-Ito colour-blind-safe palette, one per structure.

    Args:
        cases: ``(case_id, image_path, ref_path, pred_path, dice)`` tuples, e.g. best/median/worst;
            ``image_path`` may be ``(path, channel)`` for a 4-D source file.
        out_png: output PNG, written atomically.
        structure: what the Dice in the titles is of.
        modality: name of the displayed scan (default: from its file name, :func:`modality_name`).
        structures: structure name -> label values it unites (e.g. BraTS ``{"WT": [1, 2, 4], ...}``);
            default: each label value present, named by ``label_names`` (value -> name) or ``label N``.
    """
    if not cases:
        raise ValueError("cases is empty; nothing to draw")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(cases), figsize=(3.8 * len(cases), 4.8), squeeze=False)
    legend: dict[str, str] = {}
    for ax, (case_id, image_path, ref_path, pred_path, dsc) in zip(axes[0], cases):
        image, ref, pred = _read_case(case_id, image_path, ref_path, pred_path)
        area = ((ref if ref.any() else pred) > 0).sum(axis=(1, 2))
        z = int(np.argmax(area))
        view, aspect, _ = axial_view(image, z)
        lo, hi = np.percentile(view, [1, 99])
        ax.imshow(view, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect, interpolation="nearest")
        _draw_outlines(ax, ref[z], pred[z], _structures(ref, pred, structures, label_names), legend)
        _orientation_letters(ax, view.shape)
        scan = modality or modality_name(image_path)
        ax.set_title(f"{case_id}\n{scan}, axial slice {z}\n{structure} Dice {dsc:.3f}", fontsize=8)
        ax.axis("off")
    _montage_legend(fig, legend)
    fig.suptitle("axial, radiological convention (patient's right on the left, anterior up)", fontsize=9)
    _save(plt, fig, out_png, rect=(0, 0.07, 1, 0.94))
